//! The HTTP server every service runs: its connections and their bound, the limits a request
//! is held to, its trace, and [`ApiError`], the one way an API says no.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    http::{
        connections::{Admission, BusyBody, Connections},
        problem::Problem,
    },
    runtime::{
        config::HEADER_BYTES_CEILING,
        db::{self, Db},
        metrics::Metrics,
        telemetry,
    },
};

/// In-flight requests get this long to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP server holds a client to (docs/architecture.md, "The HTTP edge").
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_header_bytes: usize,
}

/// How long a client turned away at the bound is given to send its request and read the `503`.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(1);
/// Refusals answered at once, at most; past it a newcomer's connection is closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;
/// Connections the management port serves at once: probes and a scraper need a handful.
pub(crate) const MANAGEMENT_MAX_CONNECTIONS: usize = 64;
/// Seconds a refused client is asked to wait.
const RETRY_AFTER_SECS: u32 = 1;

/// Serves until `shutdown`, then gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
///
/// A slow client cannot pin a socket: it must send its headers within the header timeout
/// (which also closes a kept-alive connection left idle), and a whole request is bounded in
/// time. At most `max_connections` are served at once: at the bound the connection idle the
/// longest is closed to make room ([`Connections`]); when every one is busy the newcomer is
/// answered `503` with `Retry-After`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let router = edge_layers(router, limits);
    let connections = Arc::new(Connections::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let tasks = TaskTracker::new();
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
        let connection = match connections.admit() {
            Admission::Admitted(connection) => connection,
            Admission::AdmittedByShedding(connection) => {
                metrics.inc("shop_http_idle_connections_shed_total", &[]);
                connection
            }
            Admission::Refused => {
                metrics.inc("shop_http_connections_refused_total", &[]);
                if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                    tasks.spawn(async move {
                        refuse(stream).await;
                        drop(refusal);
                    });
                }
                continue;
            }
        };
        let service = {
            let (router, connections, connection) =
                (router.clone(), connections.clone(), connection.clone());
            service_fn(move |request: hyper::Request<Incoming>| {
                let busy = connections.busy(&connection);
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await?;
                    Ok::<_, Infallible>(response.map(|body| BusyBody::wrap(body, busy)))
                }
            })
        };
        let stop = shutdown.clone();
        let connections = connections.clone();
        tasks.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_header_size(HEADER_BYTES_CEILING);
            let served = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            tokio::select! {
                _ = served.as_mut() => {}
                // Shed while idle: nothing is in flight, so closing loses nothing; a request
                // that arrived since it was chosen is finished first.
                () = connection.shed.cancelled() => {
                    if connection.is_busy() {
                        served.as_mut().graceful_shutdown();
                        let _ = served.await;
                    }
                }
                () = stop.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
            connections.closed(&connection);
        });
    }
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open after the grace period; closing them");
    }
}

/// What every request on a listener passes through: its trace, the header bound, the time
/// bound, and a problem for any error the router answers without one (an unknown path, a
/// method the path does not have, a path parameter that is not text).
fn edge_layers(router: Router, limits: HttpLimits) -> Router {
    router
        .layer(middleware::from_fn(as_problem))
        .layer(middleware::from_fn(move |request, next| {
            bound_request(limits.request_timeout, request, next)
        }))
        .layer(middleware::from_fn(move |request, next| {
            limit_headers(limits.max_header_bytes, request, next)
        }))
        .layer(middleware::from_fn(trace_request))
}

/// One request answered `503 overloaded` with `Retry-After` on a connection that is then closed:
/// every connection is busy.
async fn refuse(stream: TcpStream) {
    let answer = service_fn(|_request: hyper::Request<Incoming>| async {
        let response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the server is at its bound of connections, all of them busy; retry after \
                 {RETRY_AFTER_SECS} s"
            ),
        )
        .retry_after(RETRY_AFTER_SECS);
        Ok::<_, Infallible>(response)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(REFUSAL_PATIENCE);
    let refused = builder.serve_connection(TokioIo::new(stream), answer);
    let _ = tokio::time::timeout(REFUSAL_PATIENCE, refused).await;
}

/// An error answered by the router itself (no content type, or plain text) becomes a problem;
/// a handler's own answers pass untouched.
async fn as_problem(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_owned(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::BAD_REQUEST => "bad_request",
        _ if status.is_server_error() => "internal",
        _ => "rejected",
    };
    let mut problem = ApiError::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
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

/// Every error a service answers with, whatever the route: an RFC 9457 problem
/// (`application/problem+json`), built by [`ApiError`] and described by [`Problem`].
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

impl ApiError {
    /// The problem, asking the client to wait `seconds` before trying again (`Retry-After`).
    pub fn retry_after(self, seconds: u32) -> Response {
        let mut response = self.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::database(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Problem::new(self.status, self.code, self.message).into_response()
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
