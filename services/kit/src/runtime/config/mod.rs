//! Configuration from environment variables, each with a localhost default (docs/architecture.md,
//! "Configuration"): the kit's settings (`settings`), the durations among them and their ranges
//! (`durations`), and reading them (`environment`).

mod durations;
mod environment;
mod settings;

pub use durations::{DURATIONS, DurationSetting, Unit};
pub use environment::VARIABLES;
pub use settings::{
    Config, ConfigError, DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_NAMESPACE,
    HEADER_BYTES_CEILING, HISTORY_MIN_BYTES, default_retry_delays, with_database,
};
