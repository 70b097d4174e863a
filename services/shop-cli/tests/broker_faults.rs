//! Payment as a process whose broker connections pass through a proxy (`shop_lab::proxy`) that
//! drops packets on demand: faults from outside the process.
//!
//! - A crash between a batch's commit and its acks loses nothing and doubles nothing: the proxy
//!   silences payment's side (its acks, its publishes never reach the broker) while deliveries
//!   still arrive; payment commits a batch of orders and is killed with SIGKILL; the broker hands
//!   the batch to the restarted process, whose inbox absorbs every copy.
//! - A silent broker connection (half-open: no FIN, no RST) is noticed by the AMQP heartbeat:
//!   payment reports not ready, and once the network heals it reconnects and charges again.

use std::{net::SocketAddr, time::Duration};

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use service_kit::{
    config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, default_retry_delays},
    publisher::envelope_properties,
    topology,
};
use shared_events::{Envelope, Event, OrderPlaced};
use shop_lab::{
    harness::order_placed,
    process_shop::{Options, ProcessShop},
    proxy::Proxy,
};
use sqlx::PgPool;
use uuid::Uuid;

const ORDERS: usize = 20;
const PATIENCE: Duration = Duration::from_secs(60);

/// An AMQP URL (`amqp://user:pass@host:port/vhost`) cut around its `host:port`.
fn around_host(amqp_url: &str) -> (&str, &str, &str) {
    let after_scheme = amqp_url.find("://").map_or(0, |at| at + 3);
    let start = amqp_url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    let end = amqp_url[start..]
        .find('/')
        .map_or(amqp_url.len(), |at| start + at);
    (&amqp_url[..start], &amqp_url[start..end], &amqp_url[end..])
}

fn broker_addr(amqp_url: &str) -> SocketAddr {
    let (_, host, _) = around_host(amqp_url);
    let with_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the broker's address resolves")
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

/// Payment as a process in a shop of its own, its broker connections through `proxy`; every
/// service's queue declared, so what payment announces is routed. Runs `scenario`, then removes
/// the shop whatever happened.
async fn with_payment_behind<F>(proxy: &Proxy, prefix: &'static str, scenario: F)
where
    F: AsyncFnOnce(&mut ProcessShop, &reqwest::Client),
{
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let amqp_url = setting("TEST_AMQP_URL", DEFAULT_AMQP_URL);
    let options = Options {
        exe: env!("CARGO_BIN_EXE_shop").into(),
        prefix,
        admin_database_url: setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        amqp_url: amqp_url.clone(),
        retry_delays: default_retry_delays(),
        replicas: 1,
        settings: vec![("DB_POOL_SIZE", "3".to_owned())],
    };
    let mut shop = ProcessShop::create(options).await.expect("a sandbox");
    let (before, _, after) = around_host(&amqp_url);
    shop.fleet.set_for(
        "payment",
        "AMQP_URL",
        format!("{before}{}{after}", proxy.addr()),
    );
    let http = reqwest::Client::new();
    let outcome = std::panic::AssertUnwindSafe(async {
        shop::provision::declare_topologies_of(
            &shop.sandbox.amqp_url,
            &shop.sandbox.namespace,
            &default_retry_delays(),
            |_| true,
        )
        .await
        .expect("the topology");
        shop.start(&http, |name| name == "payment")
            .await
            .expect("payment starts");
        scenario(&mut shop, &http).await;
    });
    let result = futures_util::FutureExt::catch_unwind(outcome).await;
    shop.remove().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn start_proxy() -> Proxy {
    let amqp_url = std::env::var("TEST_AMQP_URL").unwrap_or(DEFAULT_AMQP_URL.to_owned());
    Proxy::start(broker_addr(&amqp_url))
        .await
        .expect("the proxy listens")
}

/// Publishes `orders` OrderPlaced events on the shop's exchange, as orders would.
async fn place(shop: &ProcessShop, orders: usize) {
    let connection = Connection::connect(&shop.sandbox.amqp_url, ConnectionProperties::default())
        .await
        .expect("the broker");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let exchange = topology::exchange_name(&shop.sandbox.namespace);
    for _ in 0..orders {
        let placed = Envelope::new(&order_placed(Uuid::now_v7(), "MUG-001", 1), None);
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
    let proxy = start_proxy().await;
    with_payment_behind(&proxy, "shop_crash", async |shop, http| {
        crash_and_recover(shop, &proxy, http).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_connection_is_noticed_and_left_for_a_new_one() {
    let proxy = start_proxy().await;
    with_payment_behind(&proxy, "shop_silent", async |shop, http| {
        let payment = shop
            .fleet
            .services
            .iter()
            .find(|s| s.name == "payment")
            .expect("payment runs")
            .url();
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
    })
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
