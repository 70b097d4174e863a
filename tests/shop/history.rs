//! The shop's history (`<ns>.history`, a stream) and catching up from it (`REPLAY_FROM`): a
//! subscriber that never ran learns everything settled before it started, once; replaying into
//! a participant changes nothing; retention bounds the history.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use service_kit::{Config, history::ReplayFrom};
use shop_tests::{RunningService, Shop, eventually, order_body, token};
use uuid::Uuid;

const PARTICIPANTS: &[&str] = &["orders", "payment", "inventory", "shipping"];

fn replay_from_start(config: &mut Config) {
    config.replay_from = ReplayFrom::Start;
}

/// Places `n` orders (every third one refused by payment, so some are cancelled) and waits
/// until each is settled; returns them with their final status.
async fn settled_orders(shop: &Shop, n: usize) -> Vec<(Uuid, String)> {
    let mut placed = Vec::with_capacity(n);
    for i in 0..n {
        let method = if i % 3 == 2 { "card_declined" } else { "card" };
        placed.push(shop.place(&order_body("MUG-001", 1, method, "GB")).await);
    }
    let mut settled = Vec::with_capacity(n);
    for order_id in placed {
        let order = shop.settled_order(order_id).await;
        let status = order["status"].as_str().unwrap_or_default().to_owned();
        settled.push((order_id, status));
    }
    settled
}

/// The catch-up as `/readyz` of the service at `url` reports it, once it has caught up.
async fn caught_up_at(http: &reqwest::Client, url: &str, service: &str) -> Value {
    let url = format!("{url}/readyz");
    let replay = || async {
        let readiness: Value = match http.get(&url).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        readiness["replay"].clone()
    };
    eventually(&format!("{service} caught up with the history"), || async {
        replay().await["caught_up"] == true
    })
    .await;
    replay().await
}

/// The catch-up as `/readyz` reports it, once it has caught up.
async fn caught_up(shop: &Shop, service: &str) -> Value {
    caught_up_at(&shop.http, &shop.url(service), service).await
}

async fn notice_count(shop: &Shop) -> i64 {
    shop.count("SELECT count(*) FROM notifications.notifications")
        .await
}

/// Each order's customer was told once how it ended: confirmed or cancelled.
async fn assert_told_how_each_ended(shop: &Shop, orders: &[(Uuid, String)]) {
    for (order_id, status) in orders {
        let expected = if status == "confirmed" {
            "order_confirmed"
        } else {
            "order_cancelled"
        };
        shop.assert_notices(*order_id, &[expected]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_ran_learns_every_settled_order_once() {
    let mut shop = Shop::start_only(PARTICIPANTS).await;
    let orders = settled_orders(&shop, 6).await;
    assert!(orders.iter().any(|(_, status)| status == "cancelled"));

    // No queue, no schema: notifications never ran. Started asking for the past, it learns it.
    shop.start_service_with("notifications", replay_from_start)
        .await;
    let replay = caught_up(&shop, "notifications").await;
    assert_told_how_each_ended(&shop, &orders).await;
    assert_eq!(notice_count(&shop).await, 6);
    assert!(replay["handled"].as_u64() >= Some(6), "{replay}");
    assert!(replay["skipped"].as_u64() > Some(0), "{replay}");
    assert_eq!(replay["lag"], 0, "{replay}");

    // Started again the same way, it adds nothing: the replay is done.
    shop.stop_service("notifications").await;
    shop.start_service_with("notifications", replay_from_start)
        .await;
    let again = caught_up(&shop, "notifications").await;
    assert_eq!(again["handled"], replay["handled"], "{again}");

    // And it goes on live.
    let later = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    shop.settled_order(later).await;
    shop.assert_notices(later, &["order_confirmed"]).await;
    assert_eq!(notice_count(&shop).await, 7);
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_whole_history_into_payment_charges_nothing_and_announces_nothing() {
    let mut shop = Shop::start().await;
    let orders = settled_orders(&shop, 6).await;
    let payments = "SELECT count(*) FROM payment.payments";
    let announced = "SELECT count(*) FROM payment.outbox";
    let (charges, events) = (shop.count(payments).await, shop.count(announced).await);
    let absorbed = "SELECT coalesce(sum(duplicates), 0) FROM payment.inbox";
    let absorbed_before = shop.count(absorbed).await;

    shop.stop_service("payment").await;
    shop.start_service_with("payment", replay_from_start).await;
    let replay = caught_up(&shop, "payment").await;

    let handled = replay["handled"].as_u64().unwrap_or_default();
    assert!(handled >= orders.len() as u64, "{replay}");
    // Every event it handled again was absorbed by the inbox, and nothing else happened.
    let absorbed_now = shop.count(absorbed).await - absorbed_before;
    assert_eq!(u64::try_from(absorbed_now).ok(), Some(handled), "{replay}");
    assert_eq!(shop.count(payments).await, charges);
    assert_eq!(shop.count(announced).await, events);
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_started_after_the_orders_shows_them_all() {
    let mut shop = Shop::start_only(PARTICIPANTS).await;
    let orders = settled_orders(&shop, 4).await;
    shop.start_service_with("console", replay_from_start).await;
    caught_up(&shop, "console").await;
    let heard = shop
        .get_json(&format!("{}/api/orders?limit=100", shop.url("console")))
        .await;
    let heard = heard.as_array().cloned().unwrap_or_default();
    // Every event of every order, each once, as the broker saw them published.
    for (order_id, _) in &orders {
        let mut published: Vec<String> = shop
            .spy
            .for_order(*order_id)
            .iter()
            .map(|seen| seen.envelope.message_id.to_string())
            .collect();
        let mut shown: Vec<String> = heard
            .iter()
            .filter(|event| event["order_id"] == order_id.to_string())
            .filter_map(|event| event["message_id"].as_str().map(str::to_owned))
            .collect();
        published.sort();
        published.dedup();
        shown.sort();
        assert_eq!(shown, published, "the console's events of {order_id}");
    }
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_listener_started_after_a_load_is_right_from_the_first_order() {
    let shop = Shop::start_only(PARTICIPANTS).await;
    // Three customers, four countries, some orders declined: what sales must add up.
    let mut placed = Vec::new();
    for i in 0..12_usize {
        let customer = ["ada", "grace", "linus"][i % 3];
        let country = ["GB", "FR", "DE", "JP"][i % 4];
        let method = if i % 5 == 4 { "card_declined" } else { "card" };
        let body =
            shop_tests::order_body_for(customer, "MUG-001", 1 + i as u32 % 2, method, country);
        let response = shop
            .http
            .post(format!("{}/orders", shop.url("orders")))
            .bearer_auth(token(customer, false))
            .json(&body)
            .send()
            .await
            .expect("orders reachable");
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.expect("JSON");
        placed.push((
            customer,
            country,
            order["order_id"].as_str().expect("id").to_owned(),
        ));
    }
    let (mut by_country, mut by_customer) = (BTreeMap::new(), BTreeMap::new());
    for (customer, country, order_id) in &placed {
        let order = shop.settled_order(order_id.parse().expect("uuid")).await;
        if order["status"] == "confirmed" {
            let total = order["total_cents"].as_i64().expect("a total");
            let sums = by_country.entry(*country).or_insert((0, 0));
            *sums = (sums.0 + 1, sums.1 + total);
            let spent = by_customer.entry(*customer).or_insert((0, 0));
            *spent = (spent.0 + 1, spent.1 + total);
        }
    }

    // Sales never ran; no other service knows it. Started with the past, it adds up.
    let mut config = shop.env.config();
    config.replay_from = ReplayFrom::Start;
    let sales = RunningService::run(sales::bind(config).await.expect("sales binds")).await;
    caught_up_at(&shop.http, &sales.url, "sales").await;
    let figures = shop.get_json(&format!("{}/sales", sales.url)).await;
    assert_eq!(figures["orders_heard"], placed.len(), "{figures}");
    let expected_countries: Vec<Value> = by_country
        .iter()
        .map(|(country, (orders, revenue))| {
            json!({"country": country, "currency": "EUR", "confirmed_orders": orders, "revenue_cents": revenue})
        })
        .collect();
    assert_eq!(figures["by_country"], json!(expected_countries));
    let expected_customers: Vec<Value> = by_customer
        .iter()
        .map(|(customer, (orders, spent))| {
            json!({"customer_id": customer, "currency": "EUR", "confirmed_orders": orders, "spent_cents": spent})
        })
        .collect();
    assert_eq!(figures["by_customer"], json!(expected_customers));
    sales.stop().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_history() {
    fn small_history(config: &mut Config) {
        config.history.max_bytes = service_kit::config::HISTORY_MIN_BYTES;
    }
    let shop = Shop::start_with(PARTICIPANTS, small_history).await;
    let stream = service_kit::history::history_name(&shop.env.namespace);
    // Well past the bound: about 4 kB of events per order.
    let orders = settled_orders(&shop, 60).await;
    let published = shop.spy.all().len() as u64;
    assert!(published >= 4 * orders.len() as u64);

    let (first, held) = history_extent(&stream).await;
    assert!(
        first > 0,
        "the oldest events were removed (first offset {first})"
    );
    assert!(held < published, "{held} of {published} events held");
    shop.stop().await;
}

/// The history's first offset and how many events it holds, read from its start to its end.
async fn history_extent(stream: &str) -> (u64, u64) {
    let connection = lapin::Connection::connect(
        &shop_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the broker");
    let mut first = None;
    let held = service_kit::history::read_to_end(&connection, stream, |offset, _| {
        first = first.or(Some(offset));
    })
    .await
    .expect("the history read");
    let _ = connection.close(200, "read".into()).await;
    (first.expect("the history holds events"), held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_time_learns_what_occurred_since_then() {
    let mut shop = Shop::start_only(PARTICIPANTS).await;
    let earlier = settled_orders(&shop, 3).await;
    // The history's times are to the second: the later orders begin in a second of their own.
    let last_earlier = shop
        .spy
        .all()
        .iter()
        .map(|seen| seen.envelope.occurred_at.timestamp())
        .max()
        .expect("events");
    eventually("a new second", || async {
        chrono::Utc::now().timestamp() > last_earlier
    })
    .await;
    let later = settled_orders(&shop, 3).await;
    let since = later
        .iter()
        .flat_map(|(order_id, _)| shop.spy.for_order(*order_id))
        .map(|seen| seen.envelope.occurred_at)
        .min()
        .expect("events");

    let mut config = shop.env.config();
    config.replay_from = ReplayFrom::Since(since);
    shop.services
        .push(RunningService::start("notifications", config).await);
    let replay = caught_up(&shop, "notifications").await;
    assert_eq!(replay["from"], since.to_rfc3339(), "{replay}");
    assert_told_how_each_ended(&shop, &later).await;
    for (order_id, _) in &earlier {
        assert!(shop.notices(*order_id).await.is_empty(), "{order_id}");
    }
    assert_eq!(notice_count(&shop).await, 3);
    shop.stop().await;
}
