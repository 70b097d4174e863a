//! The console joins by subscribing: it hears every event, serves its page and a live stream
//! from what it heard, and its buttons go through the public Orders API. (The page itself is
//! driven in a real browser by `services/shop-cli/tests/console_browser.rs`.)

use std::time::Duration;

use serde_json::{Value, json};
use shared_events::{CATALOG, Message, OrderPlaced};
use shop_tests::{Shop, eventually};
use uuid::Uuid;

async fn post(shop: &Shop, path: &str) -> (u16, Value) {
    let response = shop
        .http
        .post(format!("{}{path}", shop.url("console")))
        .send()
        .await
        .expect("console reachable");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

async fn timeline_types(shop: &Shop, order_id: Uuid) -> Vec<String> {
    let response = shop
        .http
        .get(format!(
            "{}/api/orders/{order_id}/timeline",
            shop.url("console")
        ))
        .send()
        .await
        .expect("console reachable");
    if !response.status().is_success() {
        return Vec::new();
    }
    let events: Vec<Value> = response.json().await.expect("JSON");
    events
        .iter()
        .filter_map(|e| e["event_type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_hears_every_event_streams_it_and_places_orders_through_the_api() {
    let mut shop = Shop::start().await;
    let page = shop
        .http
        .get(shop.url("console"))
        .send()
        .await
        .expect("console reachable")
        .text()
        .await
        .expect("the page");
    assert!(page.contains("<title>The choreographed shop"), "{page}");
    assert!(
        page.contains(r#"href="/openapi.json""#),
        "the page links its API's description"
    );
    assert!(
        !page.contains("https://"),
        "the page loads nothing from the internet"
    );
    let flow: Value = shop
        .get_json(&format!("{}/api/flow", shop.url("console")))
        .await;
    assert_eq!(
        flow["style"], "choreography",
        "the map of the style it runs in"
    );
    let nodes = flow["nodes"].as_array().expect("nodes");
    for event in CATALOG {
        let node = nodes
            .iter()
            .find(|n| n["message"] == event.event_type)
            .unwrap_or_else(|| panic!("{} is on the map", event.event_type));
        assert!(
            node["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|c| c == "console")),
            "the console hears {}",
            event.event_type
        );
    }
    let scenarios = flow["scenarios"].as_array().expect("scenarios");
    let out_of_stock = scenarios
        .iter()
        .find(|s| s["title"] == "stock runs out")
        .expect("the out-of-stock story");
    assert!(
        out_of_stock["edges"].as_array().is_some_and(
            |edges| edges.contains(&json!(["StockReservationFailed", "PaymentRefunded"]))
        ),
        "{out_of_stock}"
    );

    // The live stream, opened before the order, from the first event heard (`after=0`): a
    // stream opened without `after` starts at its first poll, which the order could outrun.
    let stream = shop
        .http
        .get(format!("{}/api/stream?after=0", shop.url("console")))
        .send()
        .await
        .expect("stream");
    assert_eq!(
        stream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut stream = stream;

    let (status, placed) = post(&shop, "/api/place/happy").await;
    assert_eq!(status, 202, "{placed}");
    let order_id: Uuid = placed["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an order id");
    let mut streamed = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !streamed.contains("OrderConfirmed") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the stream carries the saga within 30 s")
            .expect("a chunk")
            .expect("the stream stays open");
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(streamed.contains("event: heard"), "{streamed}");
    assert!(streamed.contains(&order_id.to_string()), "{streamed}");
    eventually("the console's timeline has the whole saga", || async {
        let types = timeline_types(&shop, order_id).await;
        types.first().map(String::as_str) == Some("OrderPlaced")
            && types.iter().any(|t| t == "OrderConfirmed")
    })
    .await;

    // Cancel through the console, while payment is away.
    shop.stop_service("payment").await;
    let (status, placed) = post(&shop, "/api/place/happy").await;
    assert_eq!(status, 202);
    let open = placed["order_id"].as_str().expect("id").to_owned();
    let (status, cancelled) = post(&shop, &format!("/api/orders/{open}/cancel")).await;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (status, unknown) = post(&shop, "/api/place/free_lunch").await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (404, Some("unknown_kind"))
    );
    shop.start_service("payment").await;
    shop.settled_order(open.parse().expect("uuid")).await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_services_dead_letters_by_cause() {
    let shop = Shop::start_only(&["payment", "console"]).await;
    let publisher = shop_tests::TestPublisher::new(&shop.env.namespace).await;
    for _ in 0..2 {
        publisher
            .publish_raw(
                OrderPlaced::ROUTING_KEY,
                b"{ this is not json",
                Default::default(),
            )
            .await;
    }
    let url = format!("{}/api/dead-letters", shop.url("console"));
    let payment = async || -> Option<Value> {
        let seen: Vec<Value> = shop.http.get(&url).send().await.ok()?.json().await.ok()?;
        seen.into_iter().find(|s| s["service"] == "payment")
    };
    eventually("payment's dead letters shown", || async {
        payment().await.is_some_and(|p| p["depth"] == 2)
    })
    .await;
    let payment = payment().await.expect("payment's entry");
    let groups = payment["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "one cause, twice: {payment}");
    assert_eq!(groups[0]["count"], 2);
    assert!(groups[0]["cause"].as_str().is_some_and(|c| c.len() == 12));
    assert!(groups[0]["last_seen"].is_string(), "{payment}");
    publisher.close().await;
    shop.stop().await;
}
