//! A customer cancels mid-saga, and an order still open at its deadline is cancelled
//! (docs/architecture.md, "Flows and compensations"). Every interleaving is forced, not hoped for: a
//! service is stopped so its queue holds what it has not handled, a message is taken out of
//! that queue and delivered again only after the cancellation, and a service that must handle
//! its queue in order runs with a prefetch of one.

use std::time::Duration;

use serde_json::{Value, json};
use service_kit::Config;
use shared_events::{
    Message, OrderCancelled, OrderConfirmed, PaymentCompleted, PaymentRefunded, PaymentVoided,
    ReservationVoided, ShipmentBooked, ShipmentCancelled, ShipmentVoided, StockReleased,
    StockReserved,
};
use shop_tests::{Shop, TestPublisher, eventually, metric, order_body, take_queued};
use uuid::Uuid;

async fn cancel(shop: &Shop, order_id: Uuid, body: Option<&str>) -> (u16, Value) {
    let mut request = shop
        .http
        .post(format!("{}/orders/{order_id}/cancel", shop.url("orders")));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("orders reachable");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

async fn wait_for_status(shop: &Shop, order_id: Uuid, status: &str) {
    eventually(&format!("order {order_id} {status}"), || async {
        shop.order(order_id).await["status"] == json!(status)
    })
    .await;
}

async fn wait_for_event(shop: &Shop, order_id: Uuid, event_type: &str) {
    eventually(&format!("{event_type} for {order_id}"), || async {
        count_of(shop, order_id, event_type) > 0
    })
    .await;
}

/// How many `event_type` events were announced for the order: distinct messages, since the
/// relay may publish one twice (at least once; the inbox absorbs the copy).
fn count_of(shop: &Shop, order_id: Uuid, event_type: &str) -> usize {
    shop.spy
        .for_order(order_id)
        .iter()
        .filter(|seen| seen.envelope.event_type == event_type)
        .map(|seen| seen.envelope.message_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Handles its queue one message at a time, in queue order.
fn in_order(config: &mut Config) {
    config.prefetch = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_before_payment_saw_the_order_it_is_never_charged() {
    let mut shop = Shop::start().await;
    shop.stop_service("payment").await;
    let order_id = shop.place(&order_body("MUG-001", 2, "card", "GB")).await;
    // Hold back OrderPlaced: payment will learn of the cancellation first.
    let held = take_queued(&shop.env.namespace, "payment", 1).await;

    let (status, order) = cancel(&shop, order_id, Some(r#"{"reason": "found it cheaper"}"#)).await;
    assert_eq!(status, 202, "{order}");
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["settled"], false, "payment has not answered yet");
    assert_eq!(order["cancellation_reason"], "customer_request");
    assert_eq!(order["cancellation_note"], "found it cheaper");
    wait_for_event(&shop, order_id, ReservationVoided::TYPE).await;
    wait_for_event(&shop, order_id, ShipmentVoided::TYPE).await;
    assert_eq!(shop.order(order_id).await["settled"], false);

    shop.start_service("payment").await;
    wait_for_event(&shop, order_id, PaymentVoided::TYPE).await;
    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");

    // The late OrderPlaced finds the order voided: no charge, ever.
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    publisher
        .redeliver(&shop.env.namespace, "payment", &held[0])
        .await;
    eventually("payment handled the late OrderPlaced", || async {
        shop.count("SELECT count(*) FROM payment.inbox WHERE event_type = 'OrderPlaced'")
            .await
            == 1
    })
    .await;
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.payments WHERE status = 'voided'")
            .await,
        1
    );
    assert_eq!(count_of(&shop, order_id, PaymentCompleted::TYPE), 0);
    shop.assert_notices(order_id, &["order_cancelled"]).await;
    publisher.close().await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_after_the_charge_is_refunded_and_a_late_payment_reserves_nothing() {
    let mut shop = Shop::start().await;
    shop.stop_service("inventory").await;
    let order_id = shop.place(&order_body("BOOK-001", 1, "card", "GB")).await;
    wait_for_status(&shop, order_id, "paid").await;
    // Inventory has OrderPlaced and PaymentCompleted waiting; hold PaymentCompleted back.
    let mut held = take_queued(&shop.env.namespace, "inventory", 2).await;
    let payment_completed = held.pop().expect("PaymentCompleted");
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    publisher
        .redeliver(&shop.env.namespace, "inventory", &held[0])
        .await;

    let (status, order) = cancel(&shop, order_id, None).await;
    assert_eq!(status, 202, "{order}");
    wait_for_event(&shop, order_id, PaymentRefunded::TYPE).await;
    wait_for_event(&shop, order_id, ShipmentVoided::TYPE).await;

    shop.start_service_with("inventory", in_order).await;
    wait_for_event(&shop, order_id, ReservationVoided::TYPE).await;
    shop.settled_order(order_id).await;
    publisher
        .redeliver(&shop.env.namespace, "inventory", &payment_completed)
        .await;
    eventually("inventory handled the late PaymentCompleted", || async {
        shop.count("SELECT count(*) FROM inventory.inbox WHERE event_type = 'PaymentCompleted'")
            .await
            == 1
    })
    .await;
    assert_eq!(count_of(&shop, order_id, StockReserved::TYPE), 0);
    assert_eq!(
        shop.count(
            "SELECT count(*) FROM inventory.stock WHERE sku = 'BOOK-001' AND reserved = 0 AND available = seeded"
        )
        .await,
        1,
        "nothing held"
    );
    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    publisher.close().await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_after_the_reservation_the_stock_goes_back() {
    let mut shop = Shop::start().await;
    shop.stop_service("shipping").await;
    let order_id = shop.place(&order_body("HOODIE-001", 2, "card", "GB")).await;
    wait_for_status(&shop, order_id, "stock_reserved").await;

    let (status, _) = cancel(&shop, order_id, Some("{}")).await;
    assert_eq!(status, 202);
    wait_for_event(&shop, order_id, PaymentRefunded::TYPE).await;
    wait_for_event(&shop, order_id, StockReleased::TYPE).await;
    // Shipping, back, reads StockReserved before OrderCancelled: it books, then cancels.
    shop.start_service_with("shipping", in_order).await;
    wait_for_event(&shop, order_id, ShipmentCancelled::TYPE).await;
    let order = shop.settled_order(order_id).await;
    assert_eq!(
        order["status"], "cancelled",
        "the late booking does not confirm it"
    );
    assert_eq!(count_of(&shop, order_id, ShipmentBooked::TYPE), 1);
    assert_eq!(count_of(&shop, order_id, OrderConfirmed::TYPE), 0);
    assert_eq!(
        shop.count("SELECT count(*) FROM shipping.shipments WHERE status = 'cancelled'")
            .await,
        1
    );
    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_that_reaches_orders_after_the_cancellation_is_undone() {
    let mut shop = Shop::start().await;
    shop.stop_service("shipping").await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    wait_for_status(&shop, order_id, "stock_reserved").await;
    // Orders goes down; shipping comes back and books.
    shop.stop_service("orders").await;
    shop.start_service("shipping").await;
    wait_for_event(&shop, order_id, ShipmentBooked::TYPE).await;
    // ShipmentBooked is in orders' queue, not yet handled; hold it back and cancel first.
    let held = take_queued(&shop.env.namespace, "orders", 1).await;
    shop.start_service("orders").await;
    let (status, order) = cancel(&shop, order_id, None).await;
    assert_eq!(status, 202, "the cancellation committed first: {order}");
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    publisher
        .redeliver(&shop.env.namespace, "orders", &held[0])
        .await;

    wait_for_event(&shop, order_id, ShipmentCancelled::TYPE).await;
    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(count_of(&shop, order_id, OrderConfirmed::TYPE), 0);
    assert_eq!(count_of(&shop, order_id, OrderCancelled::TYPE), 1);
    publisher.close().await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_cannot_be_cancelled_and_a_cancel_is_idempotent() {
    let mut shop = Shop::start().await;
    let confirmed = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    assert_eq!(shop.settled_order(confirmed).await["status"], "confirmed");
    let (status, error) = cancel(&shop, confirmed, None).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (409, Some("order_confirmed"))
    );

    shop.stop_service("payment").await;
    let open = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    let (first, _) = cancel(&shop, open, None).await;
    let (again, order) = cancel(&shop, open, Some(r#"{"reason": "twice"}"#)).await;
    assert_eq!((first, again), (202, 200));
    assert_eq!(order["status"], "cancelled");
    assert!(
        order.get("cancellation_note").is_none(),
        "the first request's (none) stands"
    );
    // In queue order: the late OrderPlaced charges, the cancellation then refunds.
    shop.start_service_with("payment", in_order).await;
    shop.settled_order(open).await;
    assert_eq!(
        count_of(&shop, open, OrderCancelled::TYPE),
        1,
        "announced once"
    );
    assert_eq!(count_of(&shop, confirmed, OrderCancelled::TYPE), 0);
    assert_eq!(
        shop.wait_for_notices(open, 2).await,
        vec!["order_cancelled", "payment_refunded"],
        "told of the cancellation once"
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cancel_request_gets_a_clear_error_and_changes_nothing() {
    let mut shop = Shop::start().await;
    shop.stop_service("payment").await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    let too_long = json!({ "reason": "x".repeat(201) }).to_string();
    for (body, status, code) in [
        (Some(too_long.as_str()), 422, "invalid_reason"),
        (Some(r#"{"reason": "a\u0000b"}"#), 422, "invalid_body"),
        (Some(r#"{"why": "unknown field"}"#), 422, "invalid_body"),
        (Some(r#"{"reason": 7}"#), 422, "invalid_body"),
        (Some("{not json"), 400, "malformed_json"),
    ] {
        let (got, error) = cancel(&shop, order_id, body).await;
        assert_eq!(
            (got, error["error"].as_str()),
            (status, Some(code)),
            "{body:?}"
        );
    }
    let response = shop
        .http
        .post(format!("{}/orders/{order_id}/cancel", shop.url("orders")))
        .header("content-type", "text/plain")
        .body("please")
        .send()
        .await
        .expect("orders reachable");
    assert_eq!(response.status(), 415);
    let (status, error) = cancel(&shop, Uuid::now_v7(), None).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (404, Some("order_not_found"))
    );
    let response = shop
        .http
        .post(format!("{}/orders/not-a-uuid/cancel", shop.url("orders")))
        .send()
        .await
        .expect("orders reachable");
    assert_eq!(response.status(), 400);

    assert_eq!(
        shop.order(order_id).await["status"],
        "pending",
        "nothing written"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count_of(&shop, order_id, OrderCancelled::TYPE), 0);
    shop.start_service("payment").await;
    shop.settled_order(order_id).await;
    shop.audit_and_stop().await;
}

fn short_deadline(config: &mut Config) {
    config.set_var("ORDER_DEADLINE_MS", "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_open_at_its_deadline_is_cancelled_and_a_late_service_undoes_its_part() {
    let mut shop = Shop::start().await;
    shop.stop_service("orders").await;
    shop.start_service_with("orders", short_deadline).await;
    shop.stop_service("payment").await;
    let order_id = shop.place(&order_body("TEE-001", 1, "card", "GB")).await;

    wait_for_status(&shop, order_id, "cancelled").await;
    let order = shop.order(order_id).await;
    assert_eq!(order["cancellation_reason"], "deadline_exceeded");
    // The deadline the customer is shown is ORDER_DEADLINE_MS after placing, and it is kept:
    // the order was not expired before it.
    let at = |field: &str| {
        order[field]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .unwrap_or_else(|| panic!("{field} in {order}"))
    };
    assert_eq!(
        at("deadline_at") - at("created_at"),
        chrono::Duration::seconds(1),
        "{order}"
    );
    assert!(
        at("updated_at") >= at("deadline_at"),
        "expired early: {order}"
    );
    eprintln!(
        "expired {} ms after its deadline",
        (at("updated_at") - at("deadline_at")).num_milliseconds()
    );
    let expired = metric(&shop.http, &shop.url("orders"), "shop_orders_expired_total").await;
    assert_eq!(expired, 1);

    // Payment comes back and handles OrderPlaced before OrderCancelled: it charges, then
    // refunds; the late PaymentCompleted neither revives the order nor reserves stock.
    shop.start_service_with("payment", in_order).await;
    wait_for_event(&shop, order_id, PaymentRefunded::TYPE).await;
    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(count_of(&shop, order_id, StockReserved::TYPE), 0);
    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_survives_a_restart_and_two_replicas_expire_each_order_once() {
    // Long enough that all twenty are placed, and the instance stopped, before it passes.
    let deadline = |config: &mut Config| config.set_var("ORDER_DEADLINE_MS", "5000");
    let mut shop = Shop::start().await;
    shop.stop_service("orders").await;
    shop.start_service_with("orders", deadline).await;
    shop.stop_service("payment").await;
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(
            shop.place(&order_body("STICKER-001", 1, "card", "GB"))
                .await,
        );
    }
    let last = orders.last().copied().expect("twenty orders");
    // The deadline passes while no orders instance runs; two come back.
    shop.stop_service("orders").await;
    let passed =
        format!("SELECT count(*) FROM orders.orders WHERE id = '{last}' AND deadline_at < now()");
    eventually("the last order's deadline has passed", || async {
        shop.count(&passed).await == 1
    })
    .await;
    shop.start_service_with("orders", deadline).await;
    shop.start_service_with("orders", deadline).await;

    for order_id in &orders {
        wait_for_status(&shop, *order_id, "cancelled").await;
    }
    let mut expired = 0;
    for replica in shop.services.iter().filter(|s| s.name == "orders") {
        expired += metric(&shop.http, &replica.url, "shop_orders_expired_total").await;
    }
    assert_eq!(expired, 20, "each order expired by exactly one replica");
    shop.start_service("payment").await;
    for order_id in &orders {
        shop.settled_order(*order_id).await;
        assert_eq!(count_of(&shop, *order_id, OrderCancelled::TYPE), 1);
    }
    shop.audit_and_stop().await;
}
