//! What a service process runs on besides the broker: configuration, the database handle, logs
//! and traces, metrics, outage logging, retention and other sweeps, backoff and shutdown.

pub(crate) mod backoff;
pub mod config;
pub(crate) mod db;
pub(crate) mod metrics;
pub(crate) mod outage;
pub(crate) mod retention;
pub(crate) mod shutdown;
pub mod sweep;
pub mod telemetry;
