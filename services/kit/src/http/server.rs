//! The endpoints every service serves: `/healthz` (the process is alive), `/readyz` (database
//! and broker connected) and `/metrics` (Prometheus text).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use opentelemetry_semantic_conventions::attribute as semconv;
use serde::Serialize;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::runtime::{
    config::HEADER_BYTES_CEILING,
    db::{self, Db},
    metrics::Metrics,
    telemetry,
};

/// In-flight requests get this long to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) service: &'static str,
    /// The shop it belongs to (`SHOP_NAMESPACE`): with the service's name, who answers here.
    pub(crate) namespace: String,
    pub(crate) db: Db,
    pub(crate) broker_connected: Arc<AtomicBool>,
    /// The consumer holds a batch until the database answers (its circuit breaker is open).
    pub(crate) consumer_paused: Arc<AtomicBool>,
    pub(crate) metrics: Metrics,
    /// Its API guards customers' data but runs with `AUTH_DISABLED=true`: said in `/readyz`.
    pub(crate) unauthenticated: bool,
}

pub(crate) fn health_routes(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

#[derive(Serialize)]
struct Readiness {
    service: &'static str,
    namespace: String,
    ready: bool,
    database: bool,
    broker: bool,
    /// The consumer takes no deliveries until the database answers again.
    consumer_paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    Json(serde_json::json!({ "service": health.service, "alive": true }))
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let database = health.db.is_reachable().await;
    let broker = health.broker_connected.load(Ordering::SeqCst);
    let consumer_paused = health.consumer_paused.load(Ordering::SeqCst);
    let ready = database && broker && !consumer_paused;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        service: health.service,
        namespace: health.namespace.clone(),
        ready,
        database,
        broker,
        consumer_paused,
        warning: health.unauthenticated.then_some(
            "AUTH_DISABLED=true: callers are not authenticated and every one acts as an operator",
        ),
    };
    (status, Json(body))
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    // Sampled when scraped: the relay's lag is what an operator looks at /metrics for. A
    // database that does not answer in time leaves the last sample.
    let lag = health.db.bounded(health.db.outbox_lag()).await;
    if let Ok((unsent, oldest_seconds)) = lag {
        health
            .metrics
            .set("shop_outbox_unsent_rows", &[], unsent as f64);
        health
            .metrics
            .set("shop_outbox_oldest_unsent_age_seconds", &[], oldest_seconds);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        health.metrics.render(),
    )
}

/// What the HTTP server holds a client to (docs/architecture.md, "The HTTP edge").
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
}

/// Serves until `shutdown`, then gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
///
/// A slow client cannot pin a socket: it must send its headers within the header timeout
/// (which also closes a kept-alive connection left idle), and a whole request is bounded in
/// time. At most `max_connections` are served at once; one more is closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let router = router
        .layer(middleware::from_fn(move |request, next| {
            bound_request(limits.request_timeout, request, next)
        }))
        .layer(middleware::from_fn(move |request, next| {
            limit_headers(limits.max_header_bytes, request, next)
        }))
        .layer(middleware::from_fn(trace_request));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.inc("shop_http_connections_refused_total", &[]);
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_header_size(HEADER_BYTES_CEILING);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open after the grace period; closing them");
    }
}

/// Paths an orchestrator or Prometheus polls every few seconds: no trace for them.
const UNTRACED_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A SERVER span per request, continuing the caller's trace when it sends a `traceparent`:
/// the events a request announces (an order placed) start their trace here.
async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    if route
        .as_deref()
        .is_some_and(|route| UNTRACED_ROUTES.contains(&route))
    {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.clone(),
    };
    let span = tracing::info_span!(
        target: telemetry::TRACE_TARGET,
        "request",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        { semconv::HTTP_REQUEST_METHOD } = method.as_str(),
        { semconv::HTTP_ROUTE } = route.as_deref(),
        { semconv::URL_PATH } = request.uri().path(),
        { semconv::HTTP_RESPONSE_STATUS_CODE } = tracing::field::Empty,
        // Recorded by the handler once it knows the order (`requests::record_order`).
        order_id = tracing::field::Empty,
    );
    let _ = span.set_parent(telemetry::context_of_request(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record(semconv::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// `431` with a JSON error for request headers past `limit` bytes in total.
async fn limit_headers(limit: usize, request: Request, next: Next) -> Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > limit {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers must total at most {limit} bytes, got {bytes}"),
        )
        .into_response();
    }
    next.run(request).await
}

/// `408` with a JSON error for a request (receiving its body and handling it) past `limit`.
async fn bound_request(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request was not received and handled within {limit:?}"),
        )
        .into_response(),
    }
}

/// Bounds a request to a service's own API by `DB_TIMEOUT_MS`, as every other piece of
/// database work is: the API's requests are database work, and a database that went silent
/// (dropped packets: no error, no answer) makes them a prompt `503 unavailable`, not a wait
/// for the request timeout. The handler's response, not a stream's body, is what is bounded.
pub(crate) async fn bound_by_database(
    State(db): State<Db>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(db.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::database(&db.went_unanswered(db.timeout)).into_response(),
    }
}

/// The error body of every API: `{ "error": code, "message": human text }`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A database failure: logged in full, reported without internals. Only an outage is a
    /// `503` (worth retrying); any other failure is a `500`: retrying the same request would
    /// fail the same way.
    pub fn database(error: &sqlx::Error) -> Self {
        if db::is_connection_error(error) {
            // An outage: `/readyz` and the consumer say so once; not a line per request.
            tracing::debug!(%error, "database away while serving a request");
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service cannot reach its database; try again shortly",
            )
        } else {
            tracing::error!(%error, "database error while serving a request");
            Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the service failed on this request and changed nothing; retrying will not help",
            )
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::database(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_outage_invites_a_retry() {
        for outage in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert_eq!(
                ApiError::database(&outage).status,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        let failure = ApiError::database(&sqlx::Error::RowNotFound);
        assert_eq!(failure.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failure.code, "internal");
    }
}
