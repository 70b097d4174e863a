//! The endpoints every service serves: `/healthz` (the process is alive), `/readyz` (database
//! and broker connected) and `/metrics` (Prometheus text). They answer on the service's port
//! and on its management port, where probes never wait behind customers.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    messaging::replay::Progress,
    runtime::{db::Db, metrics::Metrics},
};

/// The tag of the endpoints every service has.
pub(crate) const OPERATIONS_TAG: &str = "operations";

#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) service: &'static str,
    /// The shop it belongs to (`SHOP_NAMESPACE`): with the service's name, who answers here.
    pub(crate) namespace: String,
    pub(crate) db: Db,
    pub(crate) broker_connected: Arc<AtomicBool>,
    /// The consumer holds a batch until the database answers (its circuit breaker is open).
    pub(crate) consumer_paused: Arc<AtomicBool>,
    /// How far the catch-up from the history got (`REPLAY_FROM`), when one was asked for.
    pub(crate) replay: Option<Arc<Mutex<Progress>>>,
    pub(crate) metrics: Metrics,
    /// Its API guards customers' data but runs with `AUTH_DISABLED=true`: said in `/readyz`.
    pub(crate) unauthenticated: bool,
}

/// The health routes with their description; the state is given where they are served.
pub(crate) fn health_routes() -> OpenApiRouter<Health> {
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process answers.
#[derive(Serialize, ToSchema)]
struct Liveness {
    service: &'static str,
    alive: bool,
}

/// Whether the service can do its work: database and broker connected, consumer running.
#[derive(Serialize, ToSchema)]
struct Readiness {
    service: &'static str,
    /// The shop it belongs to (`SHOP_NAMESPACE`).
    namespace: String,
    ready: bool,
    database: bool,
    broker: bool,
    /// The consumer takes no deliveries until the database answers again.
    consumer_paused: bool,
    /// The catch-up from the history (`REPLAY_FROM`), when one was asked for: the service
    /// consumes its own queue once `caught_up`.
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<Progress>,
    /// Said while callers are not authenticated (`AUTH_DISABLED=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
}

/// Liveness: the process is up (nothing else is checked).
#[utoipa::path(get, path = "/healthz", tag = OPERATIONS_TAG,
    responses((status = 200, description = "The process answers", body = Liveness,
        example = json!({"service": "orders", "alive": true}))))]
async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    Json(Liveness {
        service: health.service,
        alive: true,
    })
}

/// Readiness: the database and the broker are connected and the consumer is not paused.
#[utoipa::path(get, path = "/readyz", tag = OPERATIONS_TAG,
    responses(
        (status = 200, description = "Ready to work", body = Readiness),
        (status = 503, description = "Not ready (which part is down is said), or the server is \
            at its connection bound", content(
            (Readiness = "application/json"),
            (crate::http::problem::Problem = "application/problem+json"),
        ), headers(("Retry-After" = u32, description = "Seconds to wait (at the bound only)")))))]
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
        replay: health.replay.as_ref().map(|progress| {
            progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }),
        warning: health.unauthenticated.then_some(
            "AUTH_DISABLED=true: callers are not authenticated and every one acts as an operator",
        ),
    };
    (status, Json(body))
}

/// The service's metrics in Prometheus's text format (docs/architecture.md lists them).
#[utoipa::path(get, path = "/metrics", tag = OPERATIONS_TAG,
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        body = String, content_type = "text/plain; version=0.0.4")))]
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
