//! The plumbing every shop service stands on, so that a service crate holds only what it
//! subscribes to, what it owns and what it announces.
//!
//! A service author reads [`Routes`], [`Ctx`], [`HandlerError`] and [`Service`], writes a
//! [`ServiceSpec`] and calls [`bind`]. A reader who wants to see how one delivery becomes a state
//! change and announced events reads `messaging/apply.rs` first. The folders, each importing
//! only from the ones below it in this list (CI checks that no modules import each other in a
//! loop):
//!
//! - `service.rs` runs a service: HTTP, migrations, then the broker session;
//! - `messaging/`: a message's way in: the broker session, the consume loop, batches, one
//!   delivery's life (`apply`), settling, parking, the inbox, provenance, the failure policy,
//!   catching up from the history (`replay`), and the handler's contract (routes, context,
//!   unit of work);
//! - `outbox/`: a message's way out: rows written in the unit of work, and the relay;
//! - `broker/`: RabbitMQ as the shop uses it: topology, the history (a stream), confirmed
//!   publishing, the messaging span, the style marker, the operator's dead-letter tools;
//! - `http/`: the server, its health routes and limits, bearer tokens, request extractors;
//! - `runtime/`: configuration, the database handle, telemetry, metrics, outages, sweeps.
//!
//! See `docs/architecture.md` for why each mechanism exists.

mod broker;
mod http;
mod messaging;
mod outbox;
mod runtime;
mod service;

pub use broker::{dead_letters, headers, history, publisher, style, topology};
pub use http::{auth, openapi, problem, requests};
pub use runtime::{config, sweep, telemetry};

pub use broker::style::Style;
pub use http::server::ApiError;
pub use messaging::{
    handler::{Ctx, Handler, HandlerError, HandlerFuture, Routes, Service},
    unit_of_work::UnitOfWork,
};
pub use outbox::write::{Announced, Outbox};
pub use runtime::{
    config::Config,
    db::Db,
    metrics::{KIT_METRICS, Metric, MetricKind, Metrics},
    outage::Outage,
    shutdown::on_signal as shutdown_on_signal,
    telemetry::{ErrorChain, Telemetry, init_logs},
};
pub use service::{
    ApiBuilder, ApiContext, BackgroundFuture, BoundService, Error, ServiceSpec, bind,
};
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
    Ok((config, runtime::shutdown::on_signal(), telemetry))
}
