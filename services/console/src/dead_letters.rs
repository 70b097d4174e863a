//! Each service's dead letters, grouped by cause, for the page: the console peeks every
//! service's dead-letter queue (its broker user may read them; reading returns each message
//! where it was) at most every [`FRESH_FOR`], however many pages ask.

use std::{sync::Arc, time::Duration};

use axum::{Json, extract::State};
use lapin::{Connection, ConnectionProperties};
use serde::Serialize;
use service_kit::{
    ApiError, Config,
    dead_letters::{self, Group},
    problem::Problem,
};
use tokio::{sync::Mutex, time::Instant};
use utoipa::ToSchema;

/// How long one look at the queues is shown before the next.
const FRESH_FOR: Duration = Duration::from_secs(2);
/// How long one look may take before the page is told the broker did not answer.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// One service's dead-letter queue, its messages grouped by cause.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct ServiceDeadLetters {
    service: String,
    depth: usize,
    /// By cause and message type: how many, and the latest's reason.
    #[schema(value_type = Vec<Object>)]
    groups: Vec<Group>,
}

#[derive(Clone)]
pub(crate) struct Watch {
    amqp_url: String,
    namespace: String,
    /// Every service with a queue: the shop's services, of its style.
    services: Vec<String>,
    last: Arc<Mutex<Last>>,
}

#[derive(Default)]
struct Last {
    connection: Option<Connection>,
    seen: Option<(Instant, Vec<ServiceDeadLetters>)>,
}

impl Watch {
    pub(crate) fn new(config: &Config, services: Vec<String>) -> Self {
        Self {
            amqp_url: config.first_amqp_url(),
            namespace: config.namespace.clone(),
            services,
            last: Arc::default(),
        }
    }

    async fn look(&self, last: &mut Last) -> Result<Vec<ServiceDeadLetters>, String> {
        if last
            .connection
            .as_ref()
            .is_none_or(|connection| !connection.status().connected())
        {
            let connection = Connection::connect(&self.amqp_url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            last.connection = Some(connection);
        }
        let Some(connection) = last.connection.as_ref() else {
            return Err("no broker connection".to_owned());
        };
        let mut seen = Vec::with_capacity(self.services.len());
        let mut last_error = None;
        for service in &self.services {
            // A queue not declared (a service not deployed) is left out; the others are shown.
            match dead_letters::list_on(connection, &self.namespace, service).await {
                Ok(letters) => seen.push(ServiceDeadLetters {
                    service: service.clone(),
                    depth: letters.len(),
                    groups: dead_letters::group(service, &letters),
                }),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        match (seen.is_empty(), last_error) {
            (true, Some(error)) => Err(error),
            _ => Ok(seen),
        }
    }
}

/// Every service's dead-letter depth and causes (looked at most every two seconds).
#[utoipa::path(get, path = "/api/dead-letters", tag = crate::heard::TAG,
    responses(
        (status = 200, description = "By service", body = Vec<ServiceDeadLetters>),
        (status = 502, description = "`broker_unreachable`", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(crate) async fn current(
    State(watch): State<Watch>,
) -> Result<Json<Vec<ServiceDeadLetters>>, ApiError> {
    let mut last = watch.last.lock().await;
    if let Some((at, seen)) = &last.seen
        && at.elapsed() < FRESH_FOR
    {
        return Ok(Json(seen.clone()));
    }
    let looked = tokio::time::timeout(LOOK_TIMEOUT, watch.look(&mut last))
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
    match looked {
        Ok(seen) => {
            last.seen = Some((Instant::now(), seen.clone()));
            Ok(Json(seen))
        }
        Err(reason) => {
            last.connection = None;
            tracing::debug!(%reason, "cannot look at the dead-letter queues");
            Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "broker_unreachable",
                "the console cannot read the dead-letter queues right now",
            ))
        }
    }
}
