//! Orders' own settings (beside the kit's): how many orders may wait to be settled before new
//! ones are shed, and how long an order may stay open.

use std::{ops::RangeInclusive, time::Duration};

use service_kit::{Config, config::ConfigError};

/// The variables orders reads for itself.
pub const VARIABLES: &[&str] = &["MAX_PENDING_ORDERS", "ORDER_DEADLINE_MS"];

/// `MAX_PENDING_ORDERS` when unset: about ten seconds of what `shop bench --saturate` measures
/// this shop settling on a 2-core machine (~90 orders/s), so an ordinary broker restart (a few
/// seconds without progress) sheds nothing.
pub const DEFAULT_MAX_PENDING_ORDERS: u64 = 1_000;
/// What `MAX_PENDING_ORDERS` may be.
pub const MAX_PENDING_ORDERS: RangeInclusive<u64> = 1..=1_000_000;

/// `ORDER_DEADLINE_MS` when unset: ten minutes, far beyond any saga of a healthy shop (tens of
/// milliseconds) and beyond a broker or database restart, so only a stuck order expires.
pub const DEFAULT_ORDER_DEADLINE: Duration = Duration::from_secs(600);
/// What `ORDER_DEADLINE_MS` may be: from a second (tests and demonstrations) to a week.
pub const ORDER_DEADLINES: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `MAX_PENDING_ORDERS`: orders accepted but not yet settled past which `POST /orders`
    /// answers `503` with `Retry-After` instead of accepting more.
    pub max_pending_orders: u64,
    /// `ORDER_DEADLINE_MS`: an order still open this long after it was placed is cancelled
    /// (reason `deadline_exceeded`).
    pub order_deadline: Duration,
}

impl Settings {
    pub fn read(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            max_pending_orders: config.number(
                "MAX_PENDING_ORDERS",
                DEFAULT_MAX_PENDING_ORDERS,
                MAX_PENDING_ORDERS,
            )?,
            order_deadline: config.millis(
                "ORDER_DEADLINE_MS",
                DEFAULT_ORDER_DEADLINE,
                ORDER_DEADLINES,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let mut config = Config::defaults(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
        for (name, value) in vars {
            config.set_var(name, *value);
        }
        config
    }

    #[test]
    fn defaults_unless_told_otherwise() {
        let settings = Settings::read(&config(&[])).expect("defaults");
        assert_eq!(settings.max_pending_orders, DEFAULT_MAX_PENDING_ORDERS);
        assert_eq!(settings.order_deadline, DEFAULT_ORDER_DEADLINE);
        let told = Settings::read(&config(&[
            ("MAX_PENDING_ORDERS", "3"),
            ("ORDER_DEADLINE_MS", "1000"),
        ]))
        .expect("valid");
        assert_eq!(told.max_pending_orders, 3);
        assert_eq!(told.order_deadline, Duration::from_secs(1));
    }

    #[test]
    fn values_outside_their_range_are_reported_by_name() {
        for (name, value) in [
            ("ORDER_DEADLINE_MS", "999"),
            ("ORDER_DEADLINE_MS", "604800001"),
            ("ORDER_DEADLINE_MS", "soon"),
            ("MAX_PENDING_ORDERS", "0"),
            ("MAX_PENDING_ORDERS", "-1"),
        ] {
            let error = Settings::read(&config(&[(name, value)])).expect_err(value);
            assert!(error.to_string().contains(name), "{name}={value}: {error}");
        }
    }
}
