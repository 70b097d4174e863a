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
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{self, Db},
    metrics::Metrics,
};

/// In-flight requests get this long to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) service: &'static str,
    pub(crate) db: Db,
    pub(crate) broker_connected: Arc<AtomicBool>,
    pub(crate) metrics: Metrics,
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
    ready: bool,
    database: bool,
    broker: bool,
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    Json(serde_json::json!({ "service": health.service, "alive": true }))
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let database = health.db.is_reachable().await;
    let broker = health.broker_connected.load(Ordering::SeqCst);
    let ready = database && broker;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        service: health.service,
        ready,
        database,
        broker,
    };
    (status, Json(body))
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        health.metrics.render(),
    )
}

/// Serves until `shutdown`, then gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
pub(crate) async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let graceful = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    tokio::pin!(graceful);
    tokio::select! {
        result = &mut graceful => {
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("HTTP requests still open after the grace period; closing them"),
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
        tracing::error!(%error, "database error while serving a request");
        if db::is_connection_error(error) {
            Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service cannot reach its database; try again shortly",
            )
        } else {
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
