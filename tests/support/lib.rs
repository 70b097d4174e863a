//! Test support: a whole shop (or part of it) on the real RabbitMQ and Postgres, isolated by a
//! fresh database and a unique `SHOP_NAMESPACE` (the lab's [`Sandbox`]), and a spy that records
//! every event published on the namespace's exchange. By concern:
//!
//! - `sandbox`: [`Env`], the test's own database and namespace;
//! - `running`: services in this process ([`RunningService`]) and the [`Shop`] they make up,
//!   with its HTTP calls;
//! - `broker`: the [`Spy`], the [`TestPublisher`], [`TakenMessage`]s from queues, outbox rows;
//! - `metrics`: a service's `/metrics`.
//!
//! Settings: `TEST_AMQP_URL` and `TEST_ADMIN_DATABASE_URL` (a database the tests may use to
//! create and drop their own); localhost defaults. A broker or database that is not running
//! fails the test with a message saying what to start.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use service_kit::{
    BoundService, CancellationToken, Config, ErrorChain, Outbox, Style, headers,
    publisher::{envelope_properties, header_text},
    topology,
};
use shared_events::{CATALOG, Envelope, Event, Message};
pub use shop_lab::harness::Seen;
use shop_lab::harness::{EventTap, Sandbox};
use sqlx::PgPool;
use tokio::{sync::Mutex, task::JoinHandle};
use uuid::Uuid;

/// How long any test waits for the shop to get somewhere before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Retry delays of services under test (short, so retries resolve within a test).
const TEST_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// Retry delays for a test that must not be rescued by a retry or the parked sweep (the first
/// delay is also the sweep's interval) within its patience.
pub const SLOW_RETRY_DELAYS: [Duration; 1] = [Duration::from_secs(60)];

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_AMQP_URL.into())
}

pub fn admin_database_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| service_kit::config::DEFAULT_DATABASE_URL.into())
}

/// Logs (warnings, unless `RUST_LOG` says otherwise) captured per test, and the services'
/// spans traced as in production, so every message carries a real trace context.
pub fn init_logs() {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    static TELEMETRY: std::sync::OnceLock<service_kit::Telemetry> = std::sync::OnceLock::new();
    let logs = tracing_subscriber::fmt::layer().with_test_writer();
    let (traces, telemetry) = service_kit::telemetry::traces("shop-tests");
    if tracing_subscriber::registry()
        .with(service_kit::telemetry::filter("warn"))
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok()
    {
        let _ = TELEMETRY.set(telemetry);
    }
}

mod broker;
mod identity;
mod metrics;
mod running;
mod sandbox;

pub use broker::*;
pub use identity::*;
pub use metrics::*;
pub use running::*;
pub use sandbox::*;

/// The single number a `SELECT count(*) …` returns.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
