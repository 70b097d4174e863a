//! Configuration from environment variables, each with a localhost default (docs/architecture.md,
//! "Configuration"): the kit's settings (`settings`) and reading them (`environment`).

mod environment;
mod settings;

pub use environment::VARIABLES;
pub use settings::{
    Config, ConfigError, DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_NAMESPACE,
    HEADER_BYTES_CEILING, default_retry_delays, with_database,
};
