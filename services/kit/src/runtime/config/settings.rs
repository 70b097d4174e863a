//! The kit's settings: what each means, its default, and the rules that tie them together.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::{
    broker::{
        history::{ReplayFrom, Retention},
        style::Style,
    },
    http::auth::AuthSettings,
};

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
    /// Where probes and Prometheus reach `/healthz`, `/readyz`, `/metrics` and `/openapi.json`
    /// on connections of their own (`HTTP_MANAGEMENT_ADDR`; none when unset).
    pub http_management_addr: Option<SocketAddr>,
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
    /// `HISTORY_MAX_AGE`, `HISTORY_MAX_BYTES`: how much of the shop's history the broker keeps,
    /// when this process is the first to declare it.
    pub history: Retention,
    /// `REPLAY_FROM`: catch up from the history before consuming live (`start`, a time), or not
    /// (`none`, the default).
    pub replay_from: ReplayFrom,
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
    /// `AUTH_JWKS_URL`, `AUTH_ISSUER`, `AUTH_AUDIENCE`: the identity provider whose tokens the
    /// APIs that show customers' data believe (all three, or none).
    pub auth: Option<AuthSettings>,
    /// `AUTH_DISABLED=true`: such an API starts without an identity provider, every caller
    /// acting as an operator (a warning at start and in `/readyz`).
    pub auth_disabled: bool,
    /// The environment's other variables: a service reads its own settings from them
    /// ([`Config::var`], [`Config::millis`], [`Config::number`]).
    pub(super) vars: Vars,
}

/// The environment's variables, shown by name only (a value may be a secret).
#[derive(Clone, Default)]
pub(super) struct Vars(pub(super) BTreeMap<String, String>);

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_NAMESPACE: &str = "shop";

/// The least `HISTORY_MAX_BYTES` may be: a few hundred events.
pub const HISTORY_MIN_BYTES: u64 = 100_000;

/// The most a connection may buffer for a request's headers: past it the HTTP server stops
/// reading and answers `431` itself (without the JSON body `HTTP_MAX_HEADER_BYTES` gets).
pub const HEADER_BYTES_CEILING: usize = 256 * 1024;

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
            http_management_addr: None,
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
            history: Retention::default(),
            replay_from: ReplayFrom::None,
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(30),
            http_max_connections: 1024,
            http_max_header_bytes: 32 * 1024,
            http_max_body_bytes: 64 * 1024,
            auth: None,
            auth_disabled: false,
            vars: Vars::default(),
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
        {
            return Err(ConfigError::Invalid {
                name: "HTTP_HEADER_TIMEOUT_MS/HTTP_REQUEST_TIMEOUT_MS/HTTP_MAX_CONNECTIONS",
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
        if self.prune_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "PRUNE_INTERVAL_SECS",
                reason: "must not be zero".to_owned(),
            });
        }
        if self.history.max_bytes < HISTORY_MIN_BYTES {
            return Err(ConfigError::Invalid {
                name: "HISTORY_MAX_BYTES",
                reason: format!("must be at least {HISTORY_MIN_BYTES}"),
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
