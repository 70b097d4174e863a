//! Test support: a whole shop (or part of it) on the real RabbitMQ and Postgres, isolated by a
//! fresh database and a unique `SHOP_NAMESPACE` (the `shop` crate's [`Sandbox`]), and a spy
//! that records every event published on the namespace's exchange.
//!
//! Settings: `TEST_AMQP_URL` and `TEST_ADMIN_DATABASE_URL` (a database the tests may use to
//! create and drop their own); localhost defaults. A broker or database that is not running
//! fails the test with a message saying what to start.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use serde_json::{Value, json};
use service_kit::{
    BoundService, CancellationToken, Config, ErrorChain, Outbox,
    publisher::{envelope_properties, header_text},
    topology,
};
use shared_events::{Envelope, Event};
pub use shop::harness::Seen;
use shop::harness::{EventTap, Sandbox};
use sqlx::PgPool;
use tokio::{sync::Mutex, task::JoinHandle};
use uuid::Uuid;

/// How long any test waits for the shop to get somewhere before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Retry delays of services under test (short, so retries resolve within a test).
const TEST_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// Retry delays for a test that must not be rescued by a retry or the parked sweep (the first
/// delay is also the sweep's interval) within its patience.
pub const SLOW_RETRY_DELAYS: [Duration; 1] = [Duration::from_secs(60)];

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_AMQP_URL.into())
}

pub fn admin_database_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| service_kit::config::DEFAULT_DATABASE_URL.into())
}

/// Logs (warnings, unless `RUST_LOG` says otherwise) captured per test, and the services'
/// spans traced as in production, so every message carries a real trace context.
pub fn init_logs() {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    static TELEMETRY: std::sync::OnceLock<service_kit::Telemetry> = std::sync::OnceLock::new();
    let logs = tracing_subscriber::fmt::layer().with_test_writer();
    let (traces, telemetry) = service_kit::telemetry::traces("shop-tests");
    if tracing_subscriber::registry()
        .with(service_kit::telemetry::filter("warn"))
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok()
    {
        let _ = TELEMETRY.set(telemetry);
    }
}

/// The RabbitMQ management API, which the least-privilege test provisions through (as
/// compose's provision step does). A fresh broker does not serve it: the first test that
/// needs it enables the plugin (`rabbitmq-plugins`, as the broker's administrator), so the
/// README's one test command needs no step before it.
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

pub async fn ensure_management_api() {
    static ENABLING: Mutex<()> = Mutex::const_new(());
    let _turn = ENABLING.lock().await;
    let http = reqwest::Client::new();
    let overview = format!("{MANAGEMENT_URL}/api/overview");
    let answers = || async {
        http.get(&overview)
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    if answers().await {
        return;
    }
    let enabled = tokio::process::Command::new("rabbitmq-plugins")
        .args(["enable", "--quiet", "rabbitmq_management"])
        .output()
        .await;
    let hint = "enable it with `rabbitmq-plugins enable rabbitmq_management` (as root)";
    match enabled {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the RabbitMQ management API is not reachable on {MANAGEMENT_URL} and enabling it \
             failed ({}): {hint}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => panic!(
            "the RabbitMQ management API is not reachable on {MANAGEMENT_URL} and \
             rabbitmq-plugins cannot be run ({e}): {hint}"
        ),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !answers().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the RabbitMQ management plugin was enabled but {MANAGEMENT_URL} does not answer"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A test still running after this long is stuck (the whole suite takes well under a minute).
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// How long removing an environment may take before it is given up (a stuck broker must not
/// turn a failed test into a hung one).
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);

/// Ends the whole test run, naming the test, if the test that holds it is still running after
/// [`HANG_LIMIT`]: a hang (a broker that stopped answering, a task that never ends) must fail
/// the run with a name, not stall it. Dropping the guard disarms it.
struct HangGuard {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl HangGuard {
    fn arm() -> Self {
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                disarmed.recv_timeout(HANG_LIMIT)
            {
                eprintln!(
                    "{test} is still running after {HANG_LIMIT:?}: it is stuck; stopping the \
                     test run"
                );
                std::process::exit(101);
            }
        });
        Self { _disarm: disarm }
    }
}

/// One isolated environment: a database and a namespace, deleted again by [`Env::cleanup`]
/// (or when dropped, if the test failed first).
pub struct Env {
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub pool: PgPool,
    sandbox: Sandbox,
    cleaned: bool,
    _hang_guard: HangGuard,
}

impl Env {
    pub async fn new() -> Self {
        init_logs();
        let hang_guard = HangGuard::arm();
        let sandbox = Sandbox::create(&admin_database_url(), &amqp_url(), "shop_test")
            .await
            .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&sandbox.database_url)
            .await
            .expect("connect to the test database");
        Self {
            namespace: sandbox.namespace.clone(),
            database: sandbox.database.clone(),
            database_url: sandbox.database_url.clone(),
            pool,
            sandbox,
            cleaned: false,
            _hang_guard: hang_guard,
        }
    }

    /// A service configuration for this environment, listening on a port of its own choice.
    pub fn config(&self) -> Config {
        let mut config = Config::defaults(([127, 0, 0, 1], 0).into());
        config.amqp_url = amqp_url();
        config.database_url = self.database_url.clone();
        config.namespace = self.namespace.clone();
        config.db_pool_size = 3;
        config.prefetch = 16;
        config.outbox_sweep_interval = Duration::from_millis(500);
        config.retry_delays = TEST_RETRY_DELAYS.to_vec();
        config.max_attempts = 8;
        config
    }

    /// Drops the database and every queue and exchange of the namespace.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        self.pool.close().await;
        remove(&self.sandbox).await;
    }
}

async fn remove(sandbox: &Sandbox) {
    let defaults = service_kit::config::default_retry_delays();
    let removed = tokio::time::timeout(
        CLEANUP_LIMIT,
        sandbox.cleanup(&[&defaults, &TEST_RETRY_DELAYS, &SLOW_RETRY_DELAYS], &[]),
    )
    .await;
    if removed.is_err() {
        eprintln!(
            "removing {} took over {CLEANUP_LIMIT:?}; left behind",
            sandbox.namespace
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test still cleans up, on a runtime of its own (the test's may be gone).
        let (sandbox, pool) = (self.sandbox.clone(), self.pool.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    pool.close().await;
                    remove(&sandbox).await;
                });
            }
        })
        .join();
    }
}

/// A service running in this process, as its binary would run it.
pub struct RunningService {
    pub name: &'static str,
    pub url: String,
    shutdown: CancellationToken,
    /// `None` once stopped.
    task: Option<JoinHandle<Result<(), service_kit::Error>>>,
}

/// A service a failed test leaves behind is aborted, so it cannot re-declare the queues its
/// environment's cleanup is deleting.
impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.shutdown.cancel();
            task.abort();
        }
    }
}

impl RunningService {
    /// Starts the registry's service `name` and waits until it is ready.
    pub async fn start(name: &str, config: Config) -> Self {
        let entry = shop::registry::find(name).unwrap_or_else(|| panic!("no service {name}"));
        let bound = (entry.bind)(config)
            .await
            .unwrap_or_else(|e| panic!("{name} cannot start: {}", ErrorChain(&e)));
        Self::run(bound).await
    }

    /// Runs a bound service (one of the registry's, or a test double) until stopped.
    pub async fn run(bound: BoundService) -> Self {
        let name = bound.name();
        let url = format!("http://{}", bound.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let service = Self {
            name,
            url,
            shutdown,
            task: Some(task),
        };
        service.wait_ready().await;
        service
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        eventually(&format!("{} ready", self.name), || {
            shop::harness::is_ready(&client, &self.url)
        })
        .await;
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{} failed: {}", self.name, ErrorChain(&e)),
            Err(e) => panic!("{} panicked: {e}", self.name),
        }
    }
}

/// A running shop: an environment, some services, a spy, an HTTP client.
pub struct Shop {
    // Dropped in this order when a test fails: the services first, the environment last.
    pub services: Vec<RunningService>,
    pub spy: Spy,
    pub http: reqwest::Client,
    pub env: Env,
}

impl Shop {
    pub async fn start() -> Self {
        let all: Vec<&str> = shop::registry::names().collect();
        Self::start_only(&all).await
    }

    pub async fn start_only(names: &[&str]) -> Self {
        Self::start_with(names, |_| {}).await
    }

    /// Starts `names` with their test configuration adjusted by `tweak`.
    pub async fn start_with(names: &[&str], tweak: fn(&mut Config)) -> Self {
        let env = Env::new().await;
        // The spy first: it declares the exchange and sees every event from the start.
        let spy = Spy::start(&env.namespace).await;
        let mut shop = Self {
            env,
            services: Vec::new(),
            spy,
            http: reqwest::Client::new(),
        };
        for name in names {
            shop.start_service_with(name, tweak).await;
        }
        shop
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

    pub async fn start_service(&mut self, name: &str) {
        self.start_service_with(name, |_| {}).await;
    }

    pub async fn start_service_with(&mut self, name: &str, tweak: fn(&mut Config)) {
        let mut config = self.env.config();
        // The console's buttons call this shop's Orders API.
        if let Some(orders) = self.services.iter().find(|s| s.name == "orders") {
            config.orders_url = orders.url.clone();
        }
        tweak(&mut config);
        self.services
            .push(RunningService::start(name, config).await);
    }

    /// Starts `name` with its schema in the database at `database_url` (another server's).
    pub async fn start_service_on(&mut self, name: &str, database_url: &str) {
        let mut config = self.env.config();
        config.database_url = database_url.to_owned();
        if let Some(orders) = self.services.iter().find(|s| s.name == "orders") {
            config.orders_url = orders.url.clone();
        }
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
        let databases = shop::audit::Databases::single(&self.env.pool);
        let report = shop::audit::audit_until_clean(&databases, Some(&broker), PATIENCE)
            .await
            .expect("the auditor runs");
        assert!(report.is_clean(), "audit failed:\n{report}");
        report
    }

    /// The kinds of notice the customer got for an order, sorted.
    pub async fn notices(&self, order_id: Uuid) -> Vec<String> {
        let url = format!(
            "{}/notifications?order_id={order_id}",
            self.url("notifications")
        );
        let mut kinds: Vec<String> = self
            .get_json(&url)
            .await
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|n| n["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.sort();
        kinds
    }

    /// Waits until the customer got at least `count` notices for the order, and returns
    /// them all (a test compares them exactly: one too many shows up too).
    pub async fn wait_for_notices(&self, order_id: Uuid, count: usize) -> Vec<String> {
        eventually(&format!("{count} notices for {order_id}"), || async {
            self.notices(order_id).await.len() >= count
        })
        .await;
        self.notices(order_id).await
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

/// Records everything published on the namespace's exchange.
pub struct Spy(EventTap);

impl Spy {
    pub async fn start(namespace: &str) -> Self {
        let tap = EventTap::start(&amqp_url(), namespace)
            .await
            .unwrap_or_else(|e| panic!("the spy cannot tap the exchange: {}", ErrorChain(&e)));
        Self(tap)
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.all()
    }

    pub fn for_order(&self, order_id: Uuid) -> Vec<Seen> {
        self.0.for_order(order_id)
    }

    pub fn types_for(&self, order_id: Uuid) -> Vec<String> {
        self.for_order(order_id)
            .into_iter()
            .map(|s| s.envelope.event_type)
            .collect()
    }

    /// Waits until the spy has seen an `E` for the order; returns it.
    pub async fn wait_for<E: Event>(&self, order_id: Uuid) -> Seen {
        let event_type = E::TYPE;
        eventually(&format!("{event_type} for {order_id}"), || async {
            self.for_order(order_id)
                .iter()
                .any(|s| s.envelope.event_type == event_type)
        })
        .await;
        self.for_order(order_id)
            .into_iter()
            .find(|s| s.envelope.event_type == event_type)
            .expect("just seen")
    }

    /// Stops the spy. With `SHOP_WIRE_SAMPLES` set to a directory, every message it saw is
    /// written there first (body, content type, string headers, routing key), for validators
    /// we did not write (CI checks them with a CloudEvents SDK).
    pub async fn close(self) {
        if let Some(dir) = std::env::var_os("SHOP_WIRE_SAMPLES") {
            write_wire_samples(std::path::Path::new(&dir), &self.all());
        }
        self.0.close().await;
    }
}

fn write_wire_samples(dir: &std::path::Path, seen: &[Seen]) {
    std::fs::create_dir_all(dir).expect("sample directory");
    for message in seen {
        let headers: serde_json::Map<String, serde_json::Value> = message
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .keys()
                    .filter_map(|name| {
                        let value = header_text(&message.properties, name.as_str())?;
                        Some((name.to_string(), value.into()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sample = json!({
            "routing_key": message.routing_key,
            "content_type": message.properties.content_type().as_ref().map(ToString::to_string),
            "message_id": message.properties.message_id().as_ref().map(ToString::to_string),
            "type": message.properties.kind().as_ref().map(ToString::to_string),
            "headers": headers,
            "body": String::from_utf8_lossy(&message.body),
        });
        let path = dir.join(format!("{}.json", message.envelope.message_id));
        std::fs::write(&path, sample.to_string()).expect("sample written");
    }
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
        topology::declare_exchange(&channel, &exchange)
            .await
            .expect("declare the exchange");
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

    /// Puts a message taken from `service`'s queue back at the end of that queue alone (not
    /// through the exchange: the other subscribers had their copy).
    pub async fn redeliver(&self, namespace: &str, service: &str, message: &DeadLetter) {
        self.put(&topology::queue_name(namespace, service), message)
            .await;
    }

    /// Puts a message straight into one queue (a work, delay or dead-letter queue).
    pub async fn put(&self, queue: &str, message: &DeadLetter) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker took the message");
        assert!(confirm.take_message().is_none(), "{queue} exists");
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "publisher done".into()).await;
    }
}

/// A valid order body for the seeded catalog.
pub fn order_body(sku: &str, quantity: u32, payment_method: &str, country: &str) -> Value {
    shop::harness::order_body("cust-42", sku, quantity, payment_method, country)
}

/// A service's whole `/metrics` exposition.
pub async fn metrics_text(http: &reqwest::Client, service_url: &str) -> String {
    http.get(format!("{service_url}/metrics"))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text")
}

/// A metric's value from a service's `/metrics` (0 if absent).
pub async fn metric(http: &reqwest::Client, service_url: &str, series: &str) -> u64 {
    metrics_text(http, service_url)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A message taken from a queue (a dead-letter queue, or a stopped service's own).
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl DeadLetter {
    /// The same message carrying `envelope` instead (its AMQP properties to match).
    pub fn carrying(envelope: &Envelope) -> Self {
        Self {
            body: envelope.to_json(),
            properties: envelope_properties(envelope),
        }
    }

    pub fn envelope(&self) -> Envelope {
        Envelope::from_json(&self.body).expect("a shop CloudEvent")
    }
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<String> {
        service_kit::publisher::header_text(&self.properties, name)
    }
}

/// Waits until `<ns>.<service>.dlq` holds `count` messages and takes them.
pub async fn take_dead_letters(namespace: &str, service: &str, count: usize) -> Vec<DeadLetter> {
    take(&topology::dead_letter_queue_name(namespace, service), count).await
}

/// Waits until a stopped service's queue holds `count` messages and takes them out, to hold
/// them back and deliver them later ([`TestPublisher::redeliver`]), after what came behind.
pub async fn take_queued(namespace: &str, service: &str, count: usize) -> Vec<DeadLetter> {
    take(&topology::queue_name(namespace, service), count).await
}

async fn take(queue: &str, count: usize) -> Vec<DeadLetter> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable");
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while taken.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} messages in {queue}, got {}",
            taken.len()
        );
        let got = channel
            .basic_get(
                queue.into(),
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
    let announced = Outbox::<E::Producer>::append(&mut conn, event, None)
        .await
        .expect("insert outbox row");
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .expect("reset search_path");
    announced.into_envelope()
}
