//! Reading the configuration from the environment: the kit's variables, each by its name once
//! here, and the service's own settings, which it reads for itself through [`Config::var`],
//! [`Config::millis`] and [`Config::number`].

use std::{net::SocketAddr, ops::RangeInclusive, time::Duration};

use super::{
    durations::DURATIONS,
    settings::{Config, ConfigError, Vars},
};
use crate::http::auth::AuthSettings;

/// Every environment variable the kit reads for every service; a service reads its own besides
/// (listed by the shop's registry), and the compose file may set no others on it.
pub const VARIABLES: &[&str] = &[
    "AMQP_URL",
    "AMQP_HEARTBEAT_SECS",
    "AMQP_CONNECT_TIMEOUT_MS",
    "AMQP_RECONNECT_MAX_MS",
    "DATABASE_URL",
    "SHOP_NAMESPACE",
    "SHOP_STYLE",
    "HTTP_ADDR",
    "HTTP_MANAGEMENT_ADDR",
    "RUST_LOG",
    "LOG_FORMAT",
    "DB_POOL_SIZE",
    "DB_TIMEOUT_MS",
    "DB_PROBE_MAX_MS",
    "CONSUMER_PREFETCH",
    "CONSUMER_BATCH_MAX",
    "OUTBOX_SWEEP_MS",
    "RETRY_DELAYS_MS",
    "MAX_ATTEMPTS",
    "OUTBOX_RETENTION_SECS",
    "INBOX_RETENTION_SECS",
    "DEAD_LETTER_MAX_AGE_SECS",
    "PRUNE_INTERVAL_SECS",
    "HISTORY_MAX_AGE",
    "HISTORY_MAX_BYTES",
    "REPLAY_FROM",
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_REQUEST_TIMEOUT_MS",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_MAX_BODY_BYTES",
    "AUTH_JWKS_URL",
    "AUTH_ISSUER",
    "AUTH_AUDIENCE",
    "AUTH_DISABLED",
    // Read by the OpenTelemetry SDK (see `telemetry`); the usual ones, not every `OTEL_*`.
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

impl Config {
    /// A setting of the service's own, as given (`None` when unset or blank).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Gives the service a setting of its own, as the environment would (tests and tools that
    /// run a service in their own process).
    pub fn set_var(&mut self, name: &str, value: impl Into<String>) {
        self.vars.0.insert(name.to_owned(), value.into());
    }

    /// A duration setting of the service's own, in milliseconds: `default` when unset, refused
    /// (by name) outside `range`.
    pub fn millis(
        &self,
        name: &'static str,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let range = ms(range.start())..=ms(range.end());
        self.number(name, ms(&default), range)
            .map(Duration::from_millis)
    }

    /// A numeric setting of the service's own: `default` when unset, refused (by name) outside
    /// `range`.
    pub fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = match self.var(name) {
            Some(value) => parse(name, value)?,
            None => default,
        };
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                name,
                reason: format!("must be {} to {}", range.start(), range.end()),
            })
        }
    }

    pub fn from_env(default_http_addr: SocketAddr) -> Result<Self, ConfigError> {
        let mut config = Self::from_lookup(default_http_addr, |name| std::env::var(name).ok())?;
        config.vars = Vars(
            std::env::vars()
                .filter(|(name, _)| !VARIABLES.contains(&name.as_str()))
                .collect(),
        );
        Ok(config)
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(
        default_http_addr: SocketAddr,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::defaults(default_http_addr);
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(url) = var("AMQP_URL") {
            config.amqp_url = url;
        }
        if let Some(url) = var("DATABASE_URL") {
            config.database_url = url;
        }
        if let Some(namespace) = var("SHOP_NAMESPACE") {
            config.namespace = namespace;
        }
        if let Some(style) = var("SHOP_STYLE") {
            config.style = parse("SHOP_STYLE", &style)?;
        }
        if let Some(addr) = var("HTTP_ADDR") {
            config.http_addr = parse("HTTP_ADDR", &addr)?;
        }
        if let Some(addr) = var("HTTP_MANAGEMENT_ADDR") {
            config.http_management_addr = Some(parse("HTTP_MANAGEMENT_ADDR", &addr)?);
        }
        if let Some(size) = var("DB_POOL_SIZE") {
            config.db_pool_size = parse("DB_POOL_SIZE", &size)?;
        }
        if let Some(prefetch) = var("CONSUMER_PREFETCH") {
            config.prefetch = parse("CONSUMER_PREFETCH", &prefetch)?;
        }
        if let Some(max) = var("CONSUMER_BATCH_MAX") {
            config.batch_max = parse("CONSUMER_BATCH_MAX", &max)?;
        }
        for setting in DURATIONS {
            if let Some(value) = var(setting.name) {
                setting.apply(&mut config, &value)?;
            }
        }
        if let Some(attempts) = var("MAX_ATTEMPTS") {
            config.max_attempts = parse("MAX_ATTEMPTS", &attempts)?;
        }
        if let Some(age) = var("HISTORY_MAX_AGE") {
            config.history.max_age = parse("HISTORY_MAX_AGE", &age)?;
        }
        if let Some(bytes) = var("HISTORY_MAX_BYTES") {
            config.history.max_bytes = parse("HISTORY_MAX_BYTES", &bytes)?;
        }
        if let Some(from) = var("REPLAY_FROM") {
            config.replay_from = parse("REPLAY_FROM", &from)?;
        }
        if let Some(disabled) = var("AUTH_DISABLED") {
            config.auth_disabled = parse("AUTH_DISABLED", &disabled)?;
        }
        config.auth = match (
            var("AUTH_JWKS_URL"),
            var("AUTH_ISSUER"),
            var("AUTH_AUDIENCE"),
        ) {
            (Some(jwks_url), Some(issuer), Some(audience)) => Some(AuthSettings {
                jwks_url,
                issuer,
                audience,
            }),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "AUTH_JWKS_URL",
                    reason: "AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE go together: set all \
                             three"
                        .to_owned(),
                });
            }
        };

        for (name, setting) in [
            ("HTTP_MAX_CONNECTIONS", &mut config.http_max_connections),
            ("HTTP_MAX_HEADER_BYTES", &mut config.http_max_header_bytes),
            ("HTTP_MAX_BODY_BYTES", &mut config.http_max_body_bytes),
        ] {
            if let Some(limit) = var(name) {
                *setting = parse(name, &limit)?;
            }
        }
        config.validate()?;
        Ok(config)
    }
}

fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        name,
        reason: format!("{value:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::settings::with_database;
    use std::collections::HashMap;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8081))
    }

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(addr(), |name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_point_at_localhost() {
        let config = from(&[]).expect("defaults are valid");
        assert_eq!(config.namespace, "shop");
        assert_eq!(config.http_addr, addr());
        assert!(config.amqp_url.contains("127.0.0.1:5672"));
        assert!(config.database_url.contains("127.0.0.1:5432"));
    }

    #[test]
    fn environment_overrides_defaults() {
        let config = from(&[
            ("SHOP_NAMESPACE", "test-1"),
            ("HTTP_ADDR", "0.0.0.0:9000"),
            ("RETRY_DELAYS_MS", "10, 20"),
            ("MAX_ATTEMPTS", "3"),
            ("DB_TIMEOUT_MS", "1500"),
            (
                "AMQP_URL",
                "amqp://a:b@node1:5672/%2f, amqp://a:b@node2:5672/%2f",
            ),
        ])
        .expect("valid");
        assert_eq!(config.db_timeout, Duration::from_millis(1500));
        assert_eq!(
            config.amqp_urls(),
            vec!["amqp://a:b@node1:5672/%2f", "amqp://a:b@node2:5672/%2f"]
        );
        assert_eq!(config.first_amqp_url(), "amqp://a:b@node1:5672/%2f");
        assert_eq!(config.namespace, "test-1");
        assert_eq!(config.http_addr.port(), 9000);
        assert_eq!(
            config.retry_delays,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(config.max_attempts, 3);
    }

    #[test]
    fn the_inbox_must_outlast_every_retry_and_the_dead_letter_wait() {
        let config = from(&[
            ("RETRY_DELAYS_MS", "1000,5000"),
            ("MAX_ATTEMPTS", "4"),
            ("DEAD_LETTER_MAX_AGE_SECS", "200"),
            ("INBOX_RETENTION_SECS", "212"),
        ])
        .expect("212 s outlasts 1 + 5 + 5 s of retries and 200 s in the dead-letter queue");
        assert_eq!(config.retry_schedule(), Duration::from_secs(11));
        let err = from(&[
            ("RETRY_DELAYS_MS", "1000,5000"),
            ("MAX_ATTEMPTS", "4"),
            ("DEAD_LETTER_MAX_AGE_SECS", "200"),
            ("INBOX_RETENTION_SECS", "211"),
        ])
        .expect_err("111 s does not");
        assert!(err.to_string().contains("INBOX_RETENTION_SECS"), "{err}");
        assert!(from(&[]).expect("defaults").inbox_retention > Duration::from_secs(3 * 86_400));
    }

    #[test]
    fn another_database_on_the_same_server() {
        assert_eq!(
            with_database("postgres://u:p@db:5432/shop?sslmode=disable", "t1"),
            "postgres://u:p@db:5432/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://localhost", "t2"),
            "postgres://localhost/t2"
        );
    }

    #[test]
    fn every_broker_url_asks_for_the_heartbeat_unless_it_sets_its_own() {
        let config = from(&[
            (
                "AMQP_URL",
                "amqp://a:5672/%2f, amqp://b:5672/%2f?frame_max=8192, amqp://c/%2f?heartbeat=9",
            ),
            ("AMQP_HEARTBEAT_SECS", "4"),
        ])
        .expect("valid");
        assert_eq!(
            config.amqp_urls_with_heartbeat(),
            [
                "amqp://a:5672/%2f?heartbeat=4",
                "amqp://b:5672/%2f?frame_max=8192&heartbeat=4",
                "amqp://c/%2f?heartbeat=9",
            ]
        );
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        for (name, value) in [
            ("SHOP_NAMESPACE", "Shop Space"),
            ("HTTP_ADDR", "nowhere"),
            ("MAX_ATTEMPTS", "0"),
            ("RETRY_DELAYS_MS", "1,x"),
            ("HTTP_MAX_HEADER_BYTES", "1000000"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("AMQP_URL", "http://not-amqp"),
            ("AMQP_HEARTBEAT_SECS", "0"),
            ("DB_TIMEOUT_MS", "10"),
            ("DB_PROBE_MAX_MS", "0"),
            ("AMQP_CONNECT_TIMEOUT_MS", "5"),
        ] {
            let err = from(&[(name, value)]).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }
}
