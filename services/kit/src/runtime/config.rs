//! Configuration from environment variables, each with a localhost default (docs/architecture.md, "Configuration").

use std::{net::SocketAddr, time::Duration};

use crate::{broker::style::Style, http::auth::AuthSettings};

#[derive(Debug, Clone)]
pub struct Config {
    /// `AMQP_URL`: one broker URL, or several separated by commas (the nodes of a cluster).
    pub amqp_url: String,
    /// `AMQP_HEARTBEAT_SECS`: the AMQP heartbeat asked of the broker; a connection silent for
    /// twice this long is given up (a half-open one included) and the session reconnects.
    pub amqp_heartbeat: Duration,
    /// `AMQP_CONNECT_TIMEOUT_MS`: the longest a connection's handshake may take (on a network
    /// that drops packets it would otherwise wait for the whole session set-up).
    pub amqp_connect_timeout: Duration,
    /// `AMQP_RECONNECT_MAX_MS`: the longest wait between two broker sessions (the backoff's
    /// cap), so a broker back or a network healed is found within this plus a handshake.
    pub amqp_reconnect_max: Duration,
    /// `DATABASE_URL`
    pub database_url: String,
    /// `SHOP_NAMESPACE`: prefix of the exchange and of every queue.
    pub namespace: String,
    /// `SHOP_STYLE`: `choreography` (the default: services react to each other's events) or
    /// `orchestration` (the saga sends commands); every service of a shop must share it.
    pub style: Style,
    /// `HTTP_ADDR`: where this process serves health, metrics and its API.
    pub http_addr: SocketAddr,
    /// `DB_POOL_SIZE`
    pub db_pool_size: u32,
    /// `DB_TIMEOUT_MS`: the longest one piece of database work may take (a batch's transaction,
    /// a sweep's, a connection's check on its way back to the pool, getting a connection)
    /// before its connection is given up as silent.
    pub db_timeout: Duration,
    /// `DB_PROBE_MAX_MS`: while the database does not answer, a paused consumer asks again
    /// after a backoff growing up to this.
    pub db_probe_max: Duration,
    /// `CONSUMER_PREFETCH`: deliveries the broker sends a consumer ahead of its acks.
    pub prefetch: u16,
    /// `CONSUMER_BATCH_MAX`: deliveries applied in one transaction at most (a batch takes
    /// what is waiting, never waits for more, and is also bounded by the prefetch window).
    pub batch_max: u16,
    /// `OUTBOX_SWEEP_MS`: the relay's safety sweep, for rows no commit handed it.
    pub outbox_sweep_interval: Duration,
    /// `RETRY_DELAYS_MS`: the waits before the 2nd, 3rd, … attempt; the last one repeats.
    pub retry_delays: Vec<Duration>,
    /// `MAX_ATTEMPTS`: tries before a message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// `OUTBOX_RETENTION_SECS`: how long a sent outbox row is kept (the orders timeline reaches
    /// back this far).
    pub outbox_retention: Duration,
    /// `INBOX_RETENTION_SECS`: how long a handled message's id is remembered; a copy arriving
    /// later would be applied again, so it must exceed [`Config::latest_arrival`].
    pub inbox_retention: Duration,
    /// `DEAD_LETTER_MAX_AGE_SECS`: the oldest message an operator may re-drive from a
    /// dead-letter queue (counted from when it occurred).
    pub dead_letter_max_age: Duration,
    /// `PRUNE_INTERVAL_SECS`: how often retention runs.
    pub prune_interval: Duration,
    /// `HTTP_HEADER_TIMEOUT_MS`: a client must send a request's headers within this long, and a
    /// kept-alive connection waiting for its next request is closed after it.
    pub http_header_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_MS`: a whole request (body and handling) must be done in this long.
    pub http_request_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: connections served at once; past it a new one is closed at once.
    pub http_max_connections: usize,
    /// `HTTP_MAX_HEADER_BYTES`: request headers past this many bytes in total get `431`
    /// (at most [`HEADER_BYTES_CEILING`]).
    pub http_max_header_bytes: usize,
    /// `HTTP_MAX_BODY_BYTES`: request bodies past this get `413` (orders' `POST /orders`).
    pub http_max_body_bytes: usize,
    /// `MAX_PENDING_ORDERS` (read by orders): orders accepted but not yet settled past which
    /// `POST /orders` answers `503` with `Retry-After` instead of accepting more.
    pub max_pending_orders: u64,
    /// `ORDER_DEADLINE_MS` (read by orders): an order still open this long after it was
    /// placed is cancelled (reason `deadline_exceeded`).
    pub order_deadline: Duration,
    /// `ORDERS_URL` (read by the console): the public Orders API its buttons call, as any
    /// client would.
    pub orders_url: String,
    /// `ORDERS_TOKEN_FILE` (read by the console): a file holding the bearer token its buttons
    /// send, the demo customer's; read at start.
    pub orders_token: Option<String>,
    /// `AUTH_JWKS_URL`, `AUTH_ISSUER`, `AUTH_AUDIENCE`: the identity provider whose tokens the
    /// APIs that show customers' data believe (all three, or none).
    pub auth: Option<AuthSettings>,
    /// `AUTH_DISABLED=true`: such an API starts without an identity provider, every caller
    /// acting as an operator (a warning at start and in `/readyz`).
    pub auth_disabled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Every environment variable a service reads (the compose file may set no others on one).
pub const VARIABLES: &[&str] = &[
    "AMQP_URL",
    "AMQP_HEARTBEAT_SECS",
    "AMQP_CONNECT_TIMEOUT_MS",
    "AMQP_RECONNECT_MAX_MS",
    "DATABASE_URL",
    "SHOP_NAMESPACE",
    "SHOP_STYLE",
    "HTTP_ADDR",
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
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_REQUEST_TIMEOUT_MS",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_MAX_BODY_BYTES",
    "MAX_PENDING_ORDERS",
    "ORDER_DEADLINE_MS",
    "ORDERS_URL",
    "ORDERS_TOKEN_FILE",
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

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_NAMESPACE: &str = "shop";
pub const DEFAULT_ORDERS_URL: &str = "http://127.0.0.1:8080";

/// The most a connection may buffer for a request's headers: past it the HTTP server stops
/// reading and answers `431` itself (without the JSON body `HTTP_MAX_HEADER_BYTES` gets).
pub const HEADER_BYTES_CEILING: usize = 256 * 1024;

/// `MAX_PENDING_ORDERS` when unset: about ten seconds of what `shop bench --saturate` measures
/// this shop settling on a 2-core machine (~90 orders/s), so an ordinary broker restart (a few
/// seconds without progress) sheds nothing.
pub const DEFAULT_MAX_PENDING_ORDERS: u64 = 1_000;

/// `ORDER_DEADLINE_MS` when unset: ten minutes, far beyond any saga of a healthy shop (tens of
/// milliseconds) and beyond a broker or database restart, so only a stuck order expires.
pub const DEFAULT_ORDER_DEADLINE: Duration = Duration::from_secs(600);
/// The shortest deadline accepted (tests and demonstrations use short ones).
pub const MIN_ORDER_DEADLINE: Duration = Duration::from_secs(1);

/// `RETRY_DELAYS_MS` when unset.
pub fn default_retry_delays() -> Vec<Duration> {
    [250, 1_000, 5_000, 15_000, 30_000]
        .map(Duration::from_millis)
        .to_vec()
}

impl Config {
    /// Localhost defaults; `http_addr` is the service's own default port.
    pub fn defaults(http_addr: SocketAddr) -> Self {
        Self {
            amqp_url: DEFAULT_AMQP_URL.to_owned(),
            amqp_heartbeat: Duration::from_secs(3),
            amqp_connect_timeout: Duration::from_secs(5),
            amqp_reconnect_max: Duration::from_secs(3),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            style: Style::default(),
            http_addr,
            db_pool_size: 10,
            db_timeout: Duration::from_secs(3),
            db_probe_max: Duration::from_secs(1),
            prefetch: 32,
            batch_max: 32,
            outbox_sweep_interval: Duration::from_secs(2),
            retry_delays: default_retry_delays(),
            max_attempts: 10,
            outbox_retention: Duration::from_secs(24 * 3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            dead_letter_max_age: Duration::from_secs(3 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(30),
            http_max_connections: 1024,
            http_max_header_bytes: 32 * 1024,
            http_max_body_bytes: 64 * 1024,
            max_pending_orders: DEFAULT_MAX_PENDING_ORDERS,
            order_deadline: DEFAULT_ORDER_DEADLINE,
            orders_url: DEFAULT_ORDERS_URL.to_owned(),
            orders_token: None,
            auth: None,
            auth_disabled: false,
        }
    }

    /// The whole retry schedule: the waits before the 2nd … `MAX_ATTEMPTS`th try.
    pub fn retry_schedule(&self) -> Duration {
        let last = self.retry_delays.last().copied().unwrap_or_default();
        (0..self.max_attempts.saturating_sub(1) as usize)
            .map(|i| self.retry_delays.get(i).copied().unwrap_or(last))
            .sum()
    }

    /// The latest a copy of a message can still arrive after it occurred: through every retry,
    /// then as long as it may wait in the dead-letter queue before it is re-driven.
    pub fn latest_arrival(&self) -> Duration {
        self.retry_schedule() + self.dead_letter_max_age
    }

    /// The broker URLs `AMQP_URL` lists: a service connects to one and, when its node is lost,
    /// to the next.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// [`Config::amqp_urls`], each asking for the heartbeat `AMQP_HEARTBEAT_SECS` (unless the
    /// URL sets its own `heartbeat`).
    pub fn amqp_urls_with_heartbeat(&self) -> Vec<String> {
        let seconds = self.amqp_heartbeat.as_secs();
        self.amqp_urls()
            .into_iter()
            .map(|url| {
                if url.contains("heartbeat=") {
                    url
                } else {
                    let separator = if url.contains('?') { '&' } else { '?' };
                    format!("{url}{separator}heartbeat={seconds}")
                }
            })
            .collect()
    }

    /// The first broker `AMQP_URL` lists, for the tools that need just one.
    pub fn first_amqp_url(&self) -> String {
        self.amqp_urls().into_iter().next().unwrap_or_default()
    }

    /// Checks the rules that tie settings together (docs/architecture.md, "Retention").
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_namespace(&self.namespace)?;
        for url in self.amqp_urls() {
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|reason| ConfigError::Invalid {
                    name: "AMQP_URL",
                    reason: format!("{url:?}: {reason}"),
                })?;
        }
        if self.amqp_urls().is_empty() {
            return Err(ConfigError::Invalid {
                name: "AMQP_URL",
                reason: "no broker URL".to_owned(),
            });
        }
        if self.amqp_heartbeat.is_zero() {
            return Err(ConfigError::Invalid {
                name: "AMQP_HEARTBEAT_SECS",
                reason: "must be at least 1: without heartbeats a silent broker goes unnoticed"
                    .to_owned(),
            });
        }
        if self.retry_delays.is_empty()
            || self.max_attempts == 0
            || self.prefetch == 0
            || self.batch_max == 0
        {
            return Err(ConfigError::Invalid {
                name: "RETRY_DELAYS_MS/MAX_ATTEMPTS/CONSUMER_PREFETCH/CONSUMER_BATCH_MAX",
                reason: "must not be empty or zero".to_owned(),
            });
        }
        if self.db_timeout < Duration::from_millis(100) || self.db_probe_max.is_zero() {
            return Err(ConfigError::Invalid {
                name: "DB_TIMEOUT_MS/DB_PROBE_MAX_MS",
                reason: "a timeout of at least 100 ms, a probe interval above zero".to_owned(),
            });
        }
        if self.amqp_connect_timeout < Duration::from_millis(100)
            || self.amqp_reconnect_max.is_zero()
        {
            return Err(ConfigError::Invalid {
                name: "AMQP_CONNECT_TIMEOUT_MS/AMQP_RECONNECT_MAX_MS",
                reason: "a timeout of at least 100 ms, a reconnect interval above zero".to_owned(),
            });
        }
        if self.http_header_timeout.is_zero()
            || self.http_request_timeout.is_zero()
            || self.http_max_connections == 0
            || self.max_pending_orders == 0
        {
            return Err(ConfigError::Invalid {
                name: "HTTP_HEADER_TIMEOUT_MS/HTTP_REQUEST_TIMEOUT_MS/HTTP_MAX_CONNECTIONS/MAX_PENDING_ORDERS",
                reason: "must not be zero".to_owned(),
            });
        }
        if !(1024..=HEADER_BYTES_CEILING).contains(&self.http_max_header_bytes)
            || self.http_max_body_bytes < 1024
        {
            return Err(ConfigError::Invalid {
                name: "HTTP_MAX_HEADER_BYTES/HTTP_MAX_BODY_BYTES",
                reason: format!(
                    "headers 1024 to {HEADER_BYTES_CEILING} bytes, bodies at least 1024 bytes"
                ),
            });
        }
        if self.order_deadline < MIN_ORDER_DEADLINE {
            return Err(ConfigError::Invalid {
                name: "ORDER_DEADLINE_MS",
                reason: format!("must be at least {} ms", MIN_ORDER_DEADLINE.as_millis()),
            });
        }
        if self.prune_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "PRUNE_INTERVAL_SECS",
                reason: "must not be zero".to_owned(),
            });
        }
        if self.inbox_retention <= self.latest_arrival() {
            return Err(ConfigError::Invalid {
                name: "INBOX_RETENTION_SECS",
                reason: format!(
                    "{}s does not outlast the latest a duplicate can arrive: the retry schedule \
                     ({}s) plus DEAD_LETTER_MAX_AGE_SECS ({}s); a duplicate could be applied twice",
                    self.inbox_retention.as_secs(),
                    self.retry_schedule().as_secs(),
                    self.dead_letter_max_age.as_secs()
                ),
            });
        }
        Ok(())
    }

    pub fn from_env(default_http_addr: SocketAddr) -> Result<Self, ConfigError> {
        Self::from_lookup(default_http_addr, |name| std::env::var(name).ok())
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
        if let Some(size) = var("DB_POOL_SIZE") {
            config.db_pool_size = parse("DB_POOL_SIZE", &size)?;
        }
        if let Some(prefetch) = var("CONSUMER_PREFETCH") {
            config.prefetch = parse("CONSUMER_PREFETCH", &prefetch)?;
        }
        if let Some(seconds) = var("AMQP_HEARTBEAT_SECS") {
            config.amqp_heartbeat = Duration::from_secs(parse("AMQP_HEARTBEAT_SECS", &seconds)?);
        }
        if let Some(max) = var("CONSUMER_BATCH_MAX") {
            config.batch_max = parse("CONSUMER_BATCH_MAX", &max)?;
        }
        if let Some(ms) = var("OUTBOX_SWEEP_MS") {
            config.outbox_sweep_interval = Duration::from_millis(parse("OUTBOX_SWEEP_MS", &ms)?);
        }
        if let Some(list) = var("RETRY_DELAYS_MS") {
            config.retry_delays = list
                .split(',')
                .map(|ms| parse("RETRY_DELAYS_MS", ms.trim()).map(Duration::from_millis))
                .collect::<Result<_, _>>()?;
        }
        if let Some(attempts) = var("MAX_ATTEMPTS") {
            config.max_attempts = parse("MAX_ATTEMPTS", &attempts)?;
        }
        for (name, setting) in [
            ("HTTP_HEADER_TIMEOUT_MS", &mut config.http_header_timeout),
            ("HTTP_REQUEST_TIMEOUT_MS", &mut config.http_request_timeout),
            ("DB_TIMEOUT_MS", &mut config.db_timeout),
            ("DB_PROBE_MAX_MS", &mut config.db_probe_max),
            ("AMQP_CONNECT_TIMEOUT_MS", &mut config.amqp_connect_timeout),
            ("AMQP_RECONNECT_MAX_MS", &mut config.amqp_reconnect_max),
        ] {
            if let Some(ms) = var(name) {
                *setting = Duration::from_millis(parse(name, &ms)?);
            }
        }
        if let Some(limit) = var("MAX_PENDING_ORDERS") {
            config.max_pending_orders = parse("MAX_PENDING_ORDERS", &limit)?;
        }
        if let Some(url) = var("ORDERS_URL") {
            config.orders_url = url.trim_end_matches('/').to_owned();
        }
        if let Some(path) = var("ORDERS_TOKEN_FILE") {
            let token = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                name: "ORDERS_TOKEN_FILE",
                reason: format!("cannot read {path}: {e}"),
            })?;
            config.orders_token = Some(token.trim().to_owned());
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

        if let Some(ms) = var("ORDER_DEADLINE_MS") {
            config.order_deadline = Duration::from_millis(parse("ORDER_DEADLINE_MS", &ms)?);
        }
        for (name, setting) in [
            ("HTTP_MAX_CONNECTIONS", &mut config.http_max_connections),
            ("HTTP_MAX_HEADER_BYTES", &mut config.http_max_header_bytes),
            ("HTTP_MAX_BODY_BYTES", &mut config.http_max_body_bytes),
        ] {
            if let Some(limit) = var(name) {
                *setting = parse(name, &limit)?;
            }
        }
        for (name, setting) in [
            ("OUTBOX_RETENTION_SECS", &mut config.outbox_retention),
            ("INBOX_RETENTION_SECS", &mut config.inbox_retention),
            ("DEAD_LETTER_MAX_AGE_SECS", &mut config.dead_letter_max_age),
            ("PRUNE_INTERVAL_SECS", &mut config.prune_interval),
        ] {
            if let Some(secs) = var(name) {
                *setting = Duration::from_secs(parse(name, &secs)?);
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// The same database server as `url`, another database on it (for tools and tests that create
/// a database of their own).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let server = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
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

/// Queue and exchange names start with the namespace; keep it to characters that need no
/// quoting anywhere (AMQP names, Postgres identifiers, URLs).
fn validate_namespace(namespace: &str) -> Result<(), ConfigError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name: "SHOP_NAMESPACE",
            reason: format!("{namespace:?}: use 1-64 of a-z, 0-9, '_' and '-'"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            ("ORDER_DEADLINE_MS", "1000"),
            ("DB_TIMEOUT_MS", "1500"),
            (
                "AMQP_URL",
                "amqp://a:b@node1:5672/%2f, amqp://a:b@node2:5672/%2f",
            ),
        ])
        .expect("valid");
        assert_eq!(config.order_deadline, Duration::from_secs(1));
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
            ("DEAD_LETTER_MAX_AGE_SECS", "100"),
            ("INBOX_RETENTION_SECS", "112"),
        ])
        .expect("112 s outlasts 1 + 5 + 5 s of retries and 100 s in the dead-letter queue");
        assert_eq!(config.retry_schedule(), Duration::from_secs(11));
        let err = from(&[
            ("RETRY_DELAYS_MS", "1000,5000"),
            ("MAX_ATTEMPTS", "4"),
            ("DEAD_LETTER_MAX_AGE_SECS", "100"),
            ("INBOX_RETENTION_SECS", "111"),
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
            ("ORDER_DEADLINE_MS", "999"),
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
