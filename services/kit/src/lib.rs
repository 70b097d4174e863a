//! The plumbing every shop service stands on, so that a service crate holds only what it
//! subscribes to, what it owns and what it announces:
//!
//! - [`config`]: environment variables with localhost defaults;
//! - [`topology`]: the exchange, the service's quorum queue, its retry and dead-letter queues;
//! - [`outbox`]: events written in the same transaction as the state change, and the relay
//!   that publishes them with confirms and `mandatory`;
//! - [`inbox`]: the idempotent consumer, its subscription table ([`Routes`]), retries and
//!   dead letters;
//! - [`broker`]: the reconnect loop that owns the AMQP connections;
//! - [`dead_letters`]: listing and re-driving what ended in a dead-letter queue;
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`telemetry`] and [`shutdown`]: logs and signals.

pub mod broker;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod http;
pub mod inbox;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

mod service;

pub use config::Config;
pub use db::Db;
pub use inbox::{Ctx, HandlerError, HandlerFuture, Routes};
pub use service::{Error, ServiceSpec, run};
pub use tokio_util::sync::CancellationToken;

/// What every service binary does first: logs, configuration from the environment (with the
/// service's own default port), and a shutdown token fired by SIGTERM or Ctrl-C.
pub fn process_setup(
    default_http_addr: std::net::SocketAddr,
) -> Result<(Config, CancellationToken), config::ConfigError> {
    telemetry::init();
    let config = Config::from_env(default_http_addr)?;
    Ok((config, shutdown::on_signal()))
}
