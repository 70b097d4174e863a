//! A service as a process (payment; orders for its API) whose broker or database connections
//! pass through a proxy (`shop_lab::proxy`) that drops packets on demand: faults from outside
//! the process.
//!
//! - A crash between a batch's commit and its acks loses nothing and doubles nothing: the proxy
//!   silences payment's side (its acks, its publishes never reach the broker) while deliveries
//!   still arrive; payment commits a batch of orders and is killed with SIGKILL; the broker hands
//!   the batch to the restarted process, whose inbox absorbs every copy.
//! - A silent broker connection (half-open: no FIN, no RST) is noticed by the AMQP heartbeat:
//!   payment reports not ready, and once the network heals it reconnects and charges again.
//! - A silent database pauses the consumer (its circuit breaker): no delivery goes through a
//!   delay queue, none spends an attempt or is dead-lettered however long the silence lasts,
//!   payment reports not ready (`/readyz`: `consumer_paused`); after the heal every order is
//!   charged once, and a poison message is still dead-lettered.
//! - A silent database makes the Orders API answer `503 unavailable` within `DB_TIMEOUT_MS`,
//!   not hang until the request times out; after the heal it answers again.

use std::time::Duration;

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use service_kit::{
    Style,
    config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, default_retry_delays},
    publisher::envelope_properties,
    topology,
};
use shared_events::{Envelope, Message, OrderPlaced};
use shop_lab::{
    harness::{self, order_placed},
    process_shop::{Options, ProcessShop},
    proxy::{self, Proxy},
};
use sqlx::PgPool;
use uuid::Uuid;

const ORDERS: usize = 20;
const PATIENCE: Duration = Duration::from_secs(60);
const CHARGED: &str = "SELECT count(*) FROM payment.payments";

/// What payment reaches through the proxy.
#[derive(Clone, Copy)]
enum Behind {
    Broker,
    Database,
}

impl Behind {
    fn variable(self) -> &'static str {
        match self {
            Self::Broker => "AMQP_URL",
            Self::Database => "DATABASE_URL",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Broker => 5672,
            Self::Database => 5432,
        }
    }
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or(default.to_owned())
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("count")
        .unwrap_or(0)
}

async fn eventually(what: &str, pool: &PgPool, sql: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = count(pool, sql).await;
        if n == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {sql} is {n}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `service` as a process in a shop of its own, its broker or database connections through
/// `proxy`; every service's queue declared, so what it announces is routed. Runs `scenario`,
/// then removes the shop whatever happened.
async fn with_service_behind<F>(
    service: &'static str,
    proxy: &Proxy,
    behind: Behind,
    prefix: &'static str,
    retry_delays: Vec<Duration>,
    scenario: F,
) where
    F: AsyncFnOnce(&mut ProcessShop, &reqwest::Client),
{
    let amqp_url = setting("TEST_AMQP_URL", DEFAULT_AMQP_URL);
    let options = Options {
        exe: env!("CARGO_BIN_EXE_shop").into(),
        prefix,
        admin_database_url: setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        amqp_url: amqp_url.clone(),
        retry_delays: retry_delays.clone(),
        replicas: 1,
        style: Style::Choreography,
        settings: vec![("DB_POOL_SIZE", "3".to_owned())],
    };
    let mut shop = ProcessShop::create(options).await.expect("a sandbox");
    let direct = match behind {
        Behind::Broker => amqp_url,
        Behind::Database => shop.databases[service].clone(),
    };
    shop.fleet.set_for(
        service,
        behind.variable(),
        proxy::through(&direct, proxy.addr()),
    );
    let http = reqwest::Client::new();
    let outcome = std::panic::AssertUnwindSafe(async {
        shop::provision::declare_topologies_of(
            &shop.sandbox.amqp_url,
            &shop.sandbox.namespace,
            Style::Choreography,
            &retry_delays,
            service_kit::history::Retention::default(),
            |_| true,
        )
        .await
        .expect("the topology");
        let start = match service {
            "orders" => shop.start(&http, |name| name == "orders").await,
            _ => shop.start(&http, |name| name == "payment").await,
        };
        start.unwrap_or_else(|e| panic!("{service} starts: {e}"));
        scenario(&mut shop, &http).await;
    });
    let result = futures_util::FutureExt::catch_unwind(outcome).await;
    shop.remove().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn start_proxy(behind: Behind) -> Proxy {
    let url = match behind {
        Behind::Broker => setting("TEST_AMQP_URL", DEFAULT_AMQP_URL),
        Behind::Database => setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
    };
    let upstream = proxy::address_of(&url, behind.default_port()).expect("the upstream resolves");
    Proxy::start(upstream).await.expect("the proxy listens")
}

/// What `/readyz` answers (ready or not).
async fn readiness(http: &reqwest::Client, base_url: &str) -> serde_json::Value {
    http.get(format!("{base_url}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/readyz answers")
        .json()
        .await
        .expect("/readyz JSON")
}

fn payment_url(shop: &ProcessShop) -> String {
    shop.fleet
        .services
        .iter()
        .find(|s| s.name == "payment")
        .expect("payment runs")
        .url()
}

/// The sum of a counter's series on a service's `/metrics` (0 when it has none yet).
async fn counter(http: &reqwest::Client, base_url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text");
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes `orders` OrderPlaced events on the shop's exchange, as orders would.
async fn place(shop: &ProcessShop, orders: usize) {
    let events = (0..orders)
        .map(|_| order_placed(Uuid::now_v7(), "MUG-001", 1))
        .collect();
    publish(shop, events).await;
}

async fn publish(shop: &ProcessShop, events: Vec<OrderPlaced>) {
    let connection = Connection::connect(&shop.sandbox.amqp_url, ConnectionProperties::default())
        .await
        .expect("the broker");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let exchange = topology::exchange_name(&shop.sandbox.namespace);
    for event in events {
        let placed = Envelope::new(&event, None);
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                OrderPlaced::ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &placed.to_json(),
                envelope_properties(&placed),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "routed"
        );
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_a_batchs_commit_and_its_acks_loses_and_doubles_nothing() {
    let proxy = start_proxy(Behind::Broker).await;
    let retry_delays = default_retry_delays();
    with_service_behind(
        "payment",
        &proxy,
        Behind::Broker,
        "shop_crash",
        retry_delays,
        async |shop, http| {
            crash_and_recover(shop, &proxy, http).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_connection_is_noticed_and_left_for_a_new_one() {
    let proxy = start_proxy(Behind::Broker).await;
    let retry_delays = default_retry_delays();
    with_service_behind(
        "payment",
        &proxy,
        Behind::Broker,
        "shop_silent",
        retry_delays,
        async |shop, http| {
            let payment = payment_url(shop);
            let pool = PgPool::connect(&shop.databases["payment"])
                .await
                .expect("payment's database");
            let ready = async || shop::fleet::is_ready(http, &payment).await;

            proxy.silence();
            let silenced = tokio::time::Instant::now();
            // The kernel sees nothing wrong (the proxy holds both sockets open): only the heartbeat
            // (AMQP_HEARTBEAT_SECS, 3 s: given up after 6) can tell. Without it, 60 s.
            while ready().await {
                assert!(
                    silenced.elapsed() < Duration::from_secs(30),
                    "payment still reports ready 30 s into the silence"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("silence noticed after {:?}", silenced.elapsed());

            proxy.heal();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !ready().await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "payment never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            place(shop, 3).await;
            eventually(
                "orders placed after the heal charged",
                &pool,
                "SELECT count(*) FROM payment.payments",
                3,
            )
            .await;
            pool.close().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_pauses_the_consumer_and_spends_no_attempt() {
    let proxy = start_proxy(Behind::Database).await;
    // The whole retry schedule (0.3 s) is a small part of the silence: were an outage spent
    // as attempts, or bounced through the delay queues, it would show.
    let retry_delays = vec![Duration::from_millis(100), Duration::from_millis(200)];
    with_service_behind(
        "payment",
        &proxy,
        Behind::Database,
        "shop_dbsilent",
        retry_delays,
        async |shop, http| {
            let payment = payment_url(shop);
            let pool = PgPool::connect(&shop.databases["payment"])
                .await
                .expect("payment's database, directly");
            place(shop, 3).await;
            eventually("orders before the silence charged", &pool, CHARGED, 3).await;

            proxy.silence();
            let silenced = tokio::time::Instant::now();
            place(shop, ORDERS).await;
            let mut poison = order_placed(Uuid::now_v7(), "MUG-001", 1);
            // Text Postgres cannot store (a NUL): no retry can help, the database refuses it.
            poison.payment_method = "card\u{0}".to_owned();
            publish(shop, vec![poison]).await;
            while shop::fleet::is_ready(http, &payment).await {
                assert!(
                    silenced.elapsed() < Duration::from_secs(30),
                    "payment still reports ready 30 s into the database's silence"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("database silence noticed after {:?}", silenced.elapsed());
            // Not ready because the consumer's circuit breaker is open, and /readyz says so.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let ready = readiness(http, &payment).await;
                if ready["consumer_paused"] == true {
                    assert_eq!(ready["ready"], false, "{ready}");
                    assert_eq!(ready["database"], false, "{ready}");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the consumer never said it paused: {ready}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(8).saturating_sub(silenced.elapsed())).await;
            assert_eq!(
                counter(http, &payment, "shop_retries_total").await,
                0.0,
                "no delivery went through a delay queue"
            );
            assert_eq!(
                counter(http, &payment, "shop_dead_letters_total").await,
                0.0,
                "nothing dead-lettered for an outage"
            );
            assert_eq!(
                counter(http, &payment, "shop_messages_total").await,
                3.0,
                "nothing handled (or failed) but the orders before the silence"
            );

            proxy.heal();
            let healed = tokio::time::Instant::now();
            eventually(
                "every order charged after the heal",
                &pool,
                CHARGED,
                3 + ORDERS as i64,
            )
            .await;
            eprintln!("every order charged {:?} after the heal", healed.elapsed());
            assert_eq!(
                count(
                    &pool,
                    "SELECT count(DISTINCT order_id) FROM payment.payments"
                )
                .await,
                3 + ORDERS as i64,
                "one charge per order"
            );
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while counter(http, &payment, "shop_dead_letters_total").await < 1.0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the poison message was never dead-lettered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                counter(http, &payment, "shop_retries_total").await,
                0.0,
                "no attempt spent"
            );
            assert!(shop::fleet::is_ready(http, &payment).await, "ready again");
            pool.close().await;
        },
    )
    .await;
}

async fn crash_and_recover(shop: &mut ProcessShop, proxy: &Proxy, http: &reqwest::Client) {
    let pool = PgPool::connect(&shop.databases["payment"])
        .await
        .expect("payment's database");

    // From here on the broker hears nothing from payment: no ack, no publish.
    proxy.silence_clients();
    place(shop, ORDERS).await;
    eventually(
        "every order charged and committed",
        &pool,
        "SELECT count(*) FROM payment.inbox",
        ORDERS as i64,
    )
    .await;

    // Committed, not acked: kill it.
    let payment = shop
        .fleet
        .services
        .iter_mut()
        .find(|s| s.name == "payment")
        .expect("payment runs");
    let port = payment.port;
    let mut child = payment.child.take().expect("its process");
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("it is gone");

    proxy.heal();
    let restarted = shop
        .fleet
        .spawn("payment", 0, port)
        .expect("payment restarts");
    if let Some(payment) = shop.fleet.services.iter_mut().find(|s| s.name == "payment") {
        payment.child = Some(restarted);
    }
    shop.fleet.wait_ready(http).await.expect("payment ready");

    eventually(
        "every copy of the batch absorbed by the inbox",
        &pool,
        "SELECT sum(duplicates)::int8 FROM payment.inbox",
        ORDERS as i64,
    )
    .await;
    eventually(
        "every event the killed process committed published by the restarted one",
        &pool,
        "SELECT count(*) FROM payment.outbox WHERE sent_at IS NOT NULL",
        ORDERS as i64,
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM payment.payments").await,
        ORDERS as i64,
        "one charge per order"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT order_id) FROM payment.payments"
        )
        .await,
        ORDERS as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM payment.outbox").await,
        ORDERS as i64,
        "one outgoing event per order"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_answers_the_api_with_503_unavailable() {
    let proxy = start_proxy(Behind::Database).await;
    with_service_behind(
        "orders",
        &proxy,
        Behind::Database,
        "shop_apisilent",
        default_retry_delays(),
        async |shop, http| {
            let orders = shop.orders_urls().into_iter().next().expect("orders runs");
            let body = harness::order_body("cust-silent", "MUG-001", 1, "card", "GB");
            let token = harness::token_for(&shop.issuer, &body).expect("a token");
            let place = async || {
                http.post(format!("{orders}/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", Uuid::now_v7().to_string())
                    .json(&body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("orders answers")
            };
            let placed = place().await;
            assert_eq!(placed.status(), 202);
            let placed: serde_json::Value = placed.json().await.expect("JSON");
            let order_id = placed["order_id"].as_str().expect("an id").to_owned();
            let read = async || {
                http.get(format!("{orders}/orders/{order_id}"))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("orders answers")
            };

            proxy.silence();
            for answer in [place().await, read().await] {
                assert_eq!(answer.status(), 503);
                let problem: serde_json::Value = answer.json().await.expect("JSON");
                assert_eq!(problem["error"], "unavailable", "{problem}");
            }
            let ready = readiness(http, &orders).await;
            assert_eq!(
                (&ready["ready"], &ready["database"]),
                (&false.into(), &false.into())
            );

            proxy.heal();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while read().await.status() != 200 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "orders never answered again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}
