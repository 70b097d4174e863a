//! The plumbing every shop service stands on, so that a service crate holds only what it
//! subscribes to, what it owns and what it announces.
//!
//! A service author reads [`Routes`], [`Ctx`], [`HandlerError`] and [`Service`], writes a
//! [`ServiceSpec`] and calls [`bind`]. Underneath, one way down (no module imports one above it):
//!
//! - `service` runs it: HTTP (`/healthz`, `/readyz`, `/metrics`), migrations, then
//!   `session`, the reconnect loop that owns the AMQP connections;
//! - `session` drives `consumer` (the inbox: idempotent handling, retries, dead letters) and
//!   `outbox` (events written in the handler's transaction, and the relay that publishes them);
//! - those stand on [`publisher`] (confirms and `mandatory`), [`topology`] (every exchange and
//!   queue), `db` (the schema-scoped pool, each piece of work bounded in time), `outage` (a
//!   dependency's absence logged once, not per try), `backoff`, `metrics` and [`config`].
//!
//! [`dead_letters`] is the operator's side: listing and re-driving dead letters.
//! See `docs/architecture.md` for why each mechanism exists.

pub mod auth;
mod backoff;
mod batch;
pub mod config;
mod consumer;
mod db;
pub mod dead_letters;
mod failure;
mod handler;
mod http;
mod inbox;
mod metrics;
mod outage;
mod outbox;
mod parked;
mod provenance;
pub mod publisher;
pub mod requests;
mod retention;
mod service;
mod session;
mod shutdown;
pub mod style;
pub mod sweep;
pub mod telemetry;
pub mod topology;

pub use config::Config;
pub use consumer::headers;
pub use db::{Announced, Db};
pub use handler::{Ctx, Handler, HandlerError, HandlerFuture, Routes, Service, UnitOfWork};
pub use http::ApiError;
pub use metrics::Metrics;
pub use outage::Outage;
pub use outbox::Outbox;
pub use service::{ApiContext, BackgroundFuture, BoundService, Error, ServiceSpec, bind};
pub use shutdown::on_signal as shutdown_on_signal;
pub use style::Style;
pub use telemetry::{ErrorChain, Telemetry, init_logs};
pub use tokio_util::sync::CancellationToken;

/// What every service binary does first: logs and traces as service `name`, configuration
/// from the environment (with the service's own default port), and a shutdown token fired by
/// SIGTERM or Ctrl-C. Keep the [`Telemetry`] until the service has stopped: dropping it sends
/// the last spans.
pub fn process_setup(
    name: &str,
    default_http_addr: std::net::SocketAddr,
) -> Result<(Config, CancellationToken, Telemetry), config::ConfigError> {
    // lapin's own lines stay off whatever the filter (telemetry::filter says why).
    let telemetry = telemetry::init(name, "info");
    let config = Config::from_env(default_http_addr)?;
    Ok((config, shutdown::on_signal(), telemetry))
}
