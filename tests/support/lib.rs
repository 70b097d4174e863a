//! Test support: a whole shop (or part of it) on the real RabbitMQ and Postgres, isolated by a
//! fresh database and a unique `SHOP_NAMESPACE`, and a spy that records every event published
//! on the namespace's exchange.
//!
//! Settings: `TEST_AMQP_URL` and `TEST_ADMIN_DATABASE_URL` (a database the tests may use to
//! create and drop their own); localhost defaults.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};
use service_kit::{CancellationToken, Config, publisher::envelope_properties, topology};
use shared_events::{Envelope, Event};
pub use shop::SERVICES;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long any test waits for the shop to get somewhere before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_AMQP_URL.into())
}

pub fn admin_database_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| service_kit::config::DEFAULT_DATABASE_URL.into())
}

pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("bound address")
}

/// One isolated environment: a database and a namespace, deleted again by [`Env::cleanup`].
pub struct Env {
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub pool: PgPool,
    cleaned: bool,
}

impl Env {
    pub async fn new() -> Self {
        init_logs();
        let id = Uuid::new_v4().simple().to_string();
        let namespace = format!("test-{}", &id[..12]);
        let database = format!("shop_test_{}", &id[..12]);
        let admin_url = admin_database_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres reachable (see .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let database_url = service_kit::config::with_database(&admin_url, &database);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&database_url)
            .await
            .expect("connect to test database");
        Self {
            namespace,
            database,
            database_url,
            pool,
            cleaned: false,
        }
    }

    pub fn config(&self, http_addr: SocketAddr) -> Config {
        let mut config = Config::defaults(http_addr);
        config.amqp_url = amqp_url();
        config.database_url = self.database_url.clone();
        config.namespace = self.namespace.clone();
        config.db_pool_size = 3;
        config.prefetch = 16;
        config.outbox_sweep_interval = Duration::from_millis(500);
        config.retry_delays = vec![Duration::from_millis(100), Duration::from_millis(400)];
        config.max_attempts = 8;
        config
    }

    /// Drops the database and every queue and exchange of the namespace.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        cleanup(&self.namespace, &self.database, self.pool.clone()).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test still cleans up, on a runtime of its own (the test's may be gone).
        let (namespace, database, pool) = (
            self.namespace.clone(),
            self.database.clone(),
            self.pool.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(cleanup(&namespace, &database, pool));
            }
        })
        .join();
    }
}

async fn cleanup(namespace: &str, database: &str, pool: PgPool) {
    pool.close().await;
    if let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        let delays = service_kit::config::default_retry_delays();
        let test_delays = [Duration::from_millis(100), Duration::from_millis(400)];
        for service in SERVICES.iter().chain(&["probe"]) {
            for delays in [&delays[..], &test_delays[..]] {
                let _ = topology::Topology::new(namespace, service, vec![], delays)
                    .delete(&channel)
                    .await;
            }
        }
        let _ = channel
            .exchange_delete(
                topology::exchange_name(namespace).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = connection.close(200, "test done".into()).await;
    }
    if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// A service running in this process, as its binary would run it.
pub struct RunningService {
    pub name: &'static str,
    pub url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), service_kit::Error>>,
}

impl RunningService {
    pub async fn start(name: &'static str, config: Config) -> Self {
        let url = format!("http://{}", config.http_addr);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            match name {
                "orders" => orders::run(config, token).await,
                "payment" => payment::run(config, token).await,
                "inventory" => inventory::run(config, token).await,
                "shipping" => shipping::run(config, token).await,
                "notifications" => notifications::run(config, token).await,
                other => panic!("no service {other}"),
            }
        });
        let service = Self {
            name,
            url,
            shutdown,
            task,
        };
        service.wait_ready().await;
        service
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let readyz = format!("{}/readyz", self.url);
        eventually(&format!("{} ready", self.name), || async {
            client
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{} failed: {e}", self.name),
            Err(e) => panic!("{} panicked: {e}", self.name),
        }
    }
}

/// A running shop: an environment, some services, a spy, an HTTP client.
pub struct Shop {
    pub env: Env,
    pub services: Vec<RunningService>,
    pub spy: Spy,
    pub http: reqwest::Client,
}

impl Shop {
    pub async fn start() -> Self {
        Self::start_only(&SERVICES).await
    }

    pub async fn start_only(names: &[&'static str]) -> Self {
        Self::start_with(names, |_| {}).await
    }

    /// Starts `names` with their test configuration adjusted by `tweak`.
    pub async fn start_with(names: &[&'static str], tweak: fn(&mut Config)) -> Self {
        let env = Env::new().await;
        // The spy first: it declares the exchange and sees every event from the start.
        let spy = Spy::start(&env.namespace).await;
        let mut services = Vec::new();
        for name in names {
            let mut config = env.config(free_addr());
            tweak(&mut config);
            services.push(RunningService::start(name, config).await);
        }
        Self {
            env,
            services,
            spy,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, service: &str) -> String {
        self.services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.url.clone())
            .unwrap_or_else(|| panic!("{service} is not running"))
    }

    pub async fn stop_service(&mut self, name: &str) {
        let index = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        self.services.remove(index).stop().await;
    }

    pub async fn start_service(&mut self, name: &'static str) {
        let config = self.env.config(free_addr());
        self.services
            .push(RunningService::start(name, config).await);
    }

    pub async fn stop(self) {
        for service in self.services {
            service.stop().await;
        }
        self.spy.close().await;
        self.env.cleanup().await;
    }

    pub async fn place_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/orders", self.url("orders")))
            .json(body)
            .send()
            .await
            .expect("orders reachable")
    }

    /// Places an order that must be accepted; returns its id.
    pub async fn place(&self, body: &Value) -> Uuid {
        let response = self.place_order(body).await;
        assert_eq!(response.status(), 202, "order accepted");
        let placed: Value = response.json().await.expect("JSON body");
        placed["order_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("order_id in the response")
    }

    pub async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.expect("reachable");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    pub async fn order(&self, order_id: Uuid) -> Value {
        self.get_json(&format!("{}/orders/{order_id}", self.url("orders")))
            .await
    }

    /// Waits until the order is settled and returns it.
    pub async fn settled_order(&self, order_id: Uuid) -> Value {
        eventually(&format!("order {order_id} settled"), || async {
            self.order(order_id).await["settled"] == json!(true)
        })
        .await;
        self.order(order_id).await
    }

    /// Runs the auditor (waiting for orders in flight) and fails the test on any violation.
    pub async fn assert_audit_clean(&self) -> shop::audit::Report {
        let amqp_url = amqp_url();
        let broker = shop::audit::Broker {
            amqp_url: &amqp_url,
            namespace: &self.env.namespace,
        };
        let report = shop::audit::audit_until_clean(&self.env.pool, Some(&broker), PATIENCE)
            .await
            .expect("the auditor runs");
        assert!(report.is_clean(), "audit failed:\n{report}");
        report
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count(&self.env.pool, sql).await
    }
}

/// The single number a `SELECT count(*) …` returns.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event as the broker delivered it to the spy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    pub envelope: Envelope,
    pub properties: BasicProperties,
}

/// Records everything published on the namespace's exchange (an exclusive queue bound `#`).
pub struct Spy {
    seen: Arc<Mutex<Vec<Seen>>>,
    connection: Connection,
    task: JoinHandle<()>,
}

impl Spy {
    pub async fn start(namespace: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable (see .ci/run)");
        let channel = connection.create_channel().await.expect("channel");
        let exchange = topology::exchange_name(namespace);
        declare_exchange(&channel, &exchange).await;
        let mut consumer = topology::tap(&channel, &exchange, "spy")
            .await
            .expect("spy queue");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                if let Ok(envelope) = Envelope::from_json(&delivery.data) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Seen {
                            routing_key: delivery.routing_key.to_string(),
                            envelope,
                            properties: delivery.properties,
                        });
                }
            }
        });
        Self {
            seen,
            connection,
            task,
        }
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn for_order(&self, order_id: Uuid) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.envelope.correlation_id == order_id)
            .collect()
    }

    pub fn types_for(&self, order_id: Uuid) -> Vec<String> {
        self.for_order(order_id)
            .into_iter()
            .map(|s| s.envelope.event_type)
            .collect()
    }

    /// Waits until the spy has seen an `E` for the order; returns it.
    pub async fn wait_for<E: Event>(&self, order_id: Uuid) -> Seen {
        eventually(&format!("{} for {order_id}", E::TYPE), || async {
            self.for_order(order_id)
                .iter()
                .any(|s| s.envelope.event_type == E::TYPE)
        })
        .await;
        self.for_order(order_id)
            .into_iter()
            .find(|s| s.envelope.event_type == E::TYPE)
            .expect("just seen")
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "spy done".into()).await;
        self.task.abort();
    }
}

pub async fn declare_exchange(channel: &Channel, exchange: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
}

/// Publishes envelopes onto a namespace's exchange as a producer would (confirmed).
pub struct TestPublisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl TestPublisher {
    pub async fn new(namespace: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let exchange = topology::exchange_name(namespace);
        declare_exchange(&channel, &exchange).await;
        Self {
            connection,
            channel,
            exchange,
        }
    }

    pub async fn publish(&self, routing_key: &str, envelope: &Envelope) {
        self.publish_raw(
            routing_key,
            &envelope.to_json(),
            envelope_properties(envelope),
        )
        .await;
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker took the message");
        assert!(confirm.take_message().is_none(), "message was routed");
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "publisher done".into()).await;
    }
}

/// A valid order body for the seeded catalog.
pub fn order_body(sku: &str, quantity: u32, payment_method: &str, country: &str) -> Value {
    json!({
        "customer_id": "cust-42",
        "items": [{ "sku": sku, "quantity": quantity }],
        "payment_method": payment_method,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": country
        }
    })
}

/// A metric's value from a service's `/metrics` (0 if absent).
pub async fn metric(http: &reqwest::Client, service_url: &str, series: &str) -> u64 {
    let text = http
        .get(format!("{service_url}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A message taken from a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        service_kit::publisher::header_text(&self.properties, name)
    }
}

/// Waits until `<ns>.<service>.dlq` holds `count` messages and takes them.
pub async fn take_dead_letters(namespace: &str, service: &str, count: usize) -> Vec<DeadLetter> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable");
    let channel = connection.create_channel().await.expect("channel");
    let queue = topology::dead_letter_queue_name(namespace, service);
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while taken.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} dead letters in {queue}, got {}",
            taken.len()
        );
        let got = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        match got {
            Some(message) => taken.push(DeadLetter {
                body: message.delivery.data,
                properties: message.delivery.properties,
            }),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    taken
}

/// Records an event straight into a service's outbox, as a transaction that committed while
/// no relay was listening would have.
pub async fn insert_outbox_row<E: Event>(pool: &PgPool, schema: &str, event: &E) -> Envelope {
    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut *conn)
        .await
        .expect("search_path");
    let envelope = service_kit::outbox::append(&mut conn, event, None)
        .await
        .expect("insert outbox row");
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .expect("reset search_path");
    envelope
}
