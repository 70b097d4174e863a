//! The same flows, orchestrated (`SHOP_STYLE=orchestration`, docs/choosing.md): the saga
//! sends a command per step, each service answers with the event the choreography uses, and on
//! a failure the saga walks back what ran, last first. Each scenario checks the exact messages
//! of the order (events and commands), who caused each, the same HTTP answers and notices as
//! the choreography, and ends with a clean audit.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use service_kit::{Config, Style};
use shared_events::{
    BookShipment, CancelShipment, ChargePayment, ConfirmOrder, Envelope, Message, OrderCancelled,
    OrderPlaced, RefundPayment, ReleaseStock, ReserveStock, SettleOrder,
};
use shop::map::{Scenario, messages_of, stories};
use shop_tests::{Seen, Shop, TestPublisher, eventually, order_body};
use uuid::Uuid;

/// The order's messages, one per message id (the relay publishes at least once).
fn distinct(shop: &Shop, order_id: Uuid) -> BTreeMap<Uuid, Seen> {
    shop.spy
        .for_order(order_id)
        .into_iter()
        .map(|seen| (seen.envelope.message_id, seen))
        .collect()
}

/// The scenario's story, as the flow map tells it: exactly its messages, each caused by the
/// one the map says.
async fn follows_the_map(
    shop: &Shop,
    order_id: Uuid,
    scenario: Scenario,
) -> BTreeMap<String, Seen> {
    let story = stories(Style::Orchestration, scenario);
    let messages = shop.exact_messages(order_id, &messages_of(&story)).await;
    for (cause, effect) in story {
        assert_eq!(
            messages[effect].envelope.causation_id,
            Some(messages[cause].envelope.message_id),
            "{effect} is caused by {cause}"
        );
    }
    messages
}

async fn orchestrated() -> Shop {
    Shop::start_in(Style::Orchestration).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_takes_each_step_by_command_and_orders_confirms() {
    let shop = orchestrated().await;
    let order_id = shop.place(&order_body("MUG-001", 2, "card", "GB")).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "confirmed");
    let messages = follows_the_map(&shop, order_id, Scenario::Happy).await;
    for (command, routing_key) in [
        (ChargePayment::TYPE, "payment.charge_payment"),
        (ReserveStock::TYPE, "inventory.reserve_stock"),
        (BookShipment::TYPE, "shipping.book_shipment"),
        (ConfirmOrder::TYPE, "orders.confirm_order"),
    ] {
        let seen = &messages[command];
        assert_eq!(seen.envelope.producer, "saga", "{command}");
        assert_eq!(
            seen.routing_key, routing_key,
            "{command} goes to its handler"
        );
    }
    let charge: ChargePayment = messages[ChargePayment::TYPE]
        .envelope
        .decode()
        .expect("payload");
    assert_eq!(charge.total_cents, 2 * 1250);
    assert_eq!(
        shop.count("SELECT count(*) FROM saga.sagas WHERE phase = 'confirmed'")
            .await,
        1
    );
    shop.assert_notices(order_id, &["order_confirmed"]).await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_cancels_with_nothing_to_walk_back() {
    let shop = orchestrated().await;
    let order_id = shop
        .place(&order_body("TEE-001", 1, "card_declined", "US"))
        .await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(
        order["cancellation_reason"],
        "payment failed: card declined"
    );
    follows_the_map(&shop, order_id, Scenario::CardDeclined).await;
    shop.assert_notices(order_id, &["order_cancelled"]).await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_stock_walks_back_the_charge() {
    let shop = orchestrated().await;
    let mut body = order_body("MUG-001", 3, "card", "GB");
    body["items"] =
        json!([{ "sku": "MUG-001", "quantity": 3 }, { "sku": "HOODIE-001", "quantity": 11 }]);
    let order_id = shop.place(&body).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert!(
        order["cancellation_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("stock reservation failed") && r.contains("HOODIE-001")),
        "{order}"
    );
    follows_the_map(&shop, order_id, Scenario::OutOfStock).await;
    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_destination_walks_back_the_stock_then_the_charge() {
    let shop = orchestrated().await;
    let order_id = shop.place(&order_body("BOOK-001", 2, "card", "AQ")).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    // In reverse order of the steps, each undo waiting for the one before.
    follows_the_map(&shop, order_id, Scenario::Unshippable).await;
    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    shop.audit_and_stop().await;
}

async fn cancel(shop: &Shop, order_id: Uuid) -> (u16, Value) {
    let response = shop
        .http
        .post(format!("{}/orders/{order_id}/cancel", shop.url("orders")))
        .send()
        .await
        .expect("orders reachable");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The customer cancels while `held`'s step is in flight (the service stopped, its command
/// waiting in its queue): every step asked for is walked back, last first, starting from the
/// cancellation, and the order settles once `held` is back.
async fn cancelled_while(held: &str, in_flight: &str, walk_back: &[&str]) {
    let mut shop = orchestrated().await;
    shop.stop_service(held).await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    eventually(&format!("{in_flight} sent"), || async {
        shop.spy.types_for(order_id).iter().any(|t| t == in_flight)
    })
    .await;

    let (status, order) = cancel(&shop, order_id).await;
    assert_eq!(status, 202, "{order}");
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["settled"], false, "nothing is walked back yet");
    shop.start_service(held).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["cancellation_reason"], "customer_request");
    shop.spy.wait_for::<SettleOrder>(order_id).await;
    let messages = distinct(&shop, order_id);
    let by_type: BTreeMap<&str, &Seen> = messages
        .values()
        .map(|s| (s.envelope.event_type.as_str(), s))
        .collect();
    let undos: Vec<&str> = by_type
        .keys()
        .copied()
        .filter(|t| {
            [
                CancelShipment::TYPE,
                ReleaseStock::TYPE,
                RefundPayment::TYPE,
            ]
            .contains(t)
        })
        .collect();
    let mut expected = walk_back.to_vec();
    expected.sort_unstable();
    assert_eq!(undos, expected, "every step asked for, and only those");
    // The step in flight goes back first, straight from the cancellation; each next undo
    // waits for the answer to the one before.
    assert_eq!(
        by_type[walk_back[0]].envelope.causation_id,
        Some(by_type[OrderCancelled::TYPE].envelope.message_id),
        "the walk-back starts from the cancellation"
    );
    let answered_by = |undo: &str| -> Option<uuid::Uuid> { by_type[undo].envelope.causation_id };
    for pair in walk_back.windows(2) {
        let cause = answered_by(pair[1]).expect("caused");
        let answer = messages
            .get(&cause)
            .map(|seen| seen.envelope.event_type.as_str())
            .unwrap_or("?");
        assert_eq!(
            messages[&cause].envelope.causation_id,
            Some(by_type[pair[0]].envelope.message_id),
            "{} waits for the answer ({answer}) to {}",
            pair[1],
            pair[0]
        );
    }
    assert!(
        !by_type.contains_key(ConfirmOrder::TYPE),
        "{:?}",
        by_type.keys()
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_the_charge_is_in_flight_the_charge_is_walked_back() {
    cancelled_while("payment", ChargePayment::TYPE, &[RefundPayment::TYPE]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_the_reservation_is_in_flight_stock_then_charge_go_back() {
    cancelled_while(
        "inventory",
        ReserveStock::TYPE,
        &[ReleaseStock::TYPE, RefundPayment::TYPE],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_the_booking_is_in_flight_every_step_goes_back_last_first() {
    cancelled_while(
        "shipping",
        BookShipment::TYPE,
        &[
            CancelShipment::TYPE,
            ReleaseStock::TYPE,
            RefundPayment::TYPE,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_orchestrated_order_cannot_be_cancelled() {
    let shop = orchestrated().await;
    let confirmed = shop.place(&order_body("TEE-001", 1, "card", "GB")).await;
    assert_eq!(shop.settled_order(confirmed).await["status"], "confirmed");
    let (status, refused) = cancel(&shop, confirmed).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("order_confirmed"))
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sagas_deadline_survives_a_restart_of_the_saga() {
    // Long enough that the saga is surely stopped before it passes.
    let deadline = |config: &mut Config| config.set_var("ORDER_DEADLINE_MS", "3000");
    let mut shop = Shop::start_in_with(Style::Orchestration, deadline).await;
    shop.stop_service("payment").await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    shop.spy.wait_for::<ChargePayment>(order_id).await;
    // The saga goes away before the deadline and comes back after it: the deadline is a row.
    shop.stop_service("saga").await;
    let passed = format!(
        "SELECT count(*) FROM saga.sagas WHERE order_id = '{order_id}' AND deadline_at < now()"
    );
    eventually("the saga's deadline has passed", || async {
        shop.count(&passed).await == 1
    })
    .await;
    assert_eq!(shop.order(order_id).await["status"], "pending");
    shop.start_service("saga").await;
    eventually("the restarted saga expires the order", || async {
        shop.order(order_id).await["cancellation_reason"] == json!("deadline_exceeded")
    })
    .await;
    shop.start_service("payment").await;
    assert_eq!(shop.settled_order(order_id).await["status"], "cancelled");
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_commands_as_they_pass_and_the_orchestrated_map() {
    let shop = orchestrated().await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    assert_eq!(shop.settled_order(order_id).await["status"], "confirmed");
    let console = shop.url("console");
    let timeline = format!("{console}/api/orders/{order_id}/timeline");
    eventually("the console heard the whole saga", || async {
        shop.get_json(&timeline)
            .await
            .as_array()
            .is_some_and(|heard| heard.iter().any(|e| e["event_type"] == "OrderConfirmed"))
    })
    .await;
    let heard: Vec<String> = shop
        .get_json(&timeline)
        .await
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| Some(e["event_type"].as_str()?.to_owned()))
        .collect();
    for command in [
        ChargePayment::TYPE,
        ReserveStock::TYPE,
        BookShipment::TYPE,
        ConfirmOrder::TYPE,
    ] {
        assert!(heard.iter().any(|h| h == command), "{command} in {heard:?}");
    }
    let map = shop.get_json(&format!("{console}/api/flow")).await;
    assert_eq!(map["style"], "orchestration");
    assert!(
        map["services"]
            .as_array()
            .is_some_and(|services| services.iter().any(|s| s == "saga")),
        "{map}"
    );
    shop.audit_and_stop().await;
}

fn short_deadline(config: &mut Config) {
    config.set_var("ORDER_DEADLINE_MS", "1000");
}

/// The deadline is decided once, by orders where the order is placed, and travels in
/// OrderPlaced: only orders is given `ORDER_DEADLINE_MS` here (the saga reads none), and the saga
/// keeps the very deadline the customer is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sagas_deadline_is_the_one_orders_shows_and_cancels_an_order_stuck_at_payment() {
    let mut shop = orchestrated().await;
    shop.stop_service("orders").await;
    shop.start_service_with("orders", short_deadline).await;
    shop.stop_service("payment").await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    let shown = shop.order(order_id).await["deadline_at"].clone();
    shop.spy.wait_for::<ChargePayment>(order_id).await;
    assert_eq!(
        shop.count(&format!(
            "SELECT count(*) FROM saga.sagas s JOIN orders.orders o ON o.id = s.order_id
             WHERE s.order_id = '{order_id}' AND s.deadline_at = o.deadline_at
               AND o.deadline_at - o.created_at = interval '1 second'"
        ))
        .await,
        1,
        "the saga keeps the deadline shown ({shown}), a second after placing"
    );

    eventually("the deadline cancels the order", || async {
        shop.order(order_id).await["status"] == json!("cancelled")
    })
    .await;
    let order = shop.order(order_id).await;
    assert_eq!(order["cancellation_reason"], "deadline_exceeded");
    let time = |value: &Value| {
        serde_json::from_value::<chrono::DateTime<chrono::Utc>>(value.clone()).expect("a time")
    };
    assert!(
        time(&order["updated_at"]) >= time(&shown),
        "not cancelled before the deadline shown: {order}"
    );
    // Payment comes back to ChargePayment then RefundPayment: whatever it did is undone.
    shop.start_service("payment").await;
    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    shop.spy.wait_for::<SettleOrder>(order_id).await;
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_of_two_styles_on_one_shop_refuse_to_run_together() {
    let shop = Shop::start_only(&["payment"]).await;
    let mut config = shop.env.config();
    config.style = Style::Orchestration;
    let entry = shop::registry::find("inventory").expect("inventory");
    let bound = (entry.bind)(config).await.expect("binds its port");
    let refused = tokio::time::timeout(PATIENCE, bound.run(service_kit::CancellationToken::new()))
        .await
        .expect("stops by itself");
    let error = refused.expect_err("an orchestrated service beside a choreographed one");
    assert!(
        error.to_string().contains("SHOP_STYLE"),
        "the error says what to fix: {error}"
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_switched_to_the_other_style_hears_only_its_new_table() {
    let mut shop = Shop::start_only(&["payment"]).await;
    shop.stop_service("payment").await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let queue = format!("{}.payment", shop.env.namespace);
    let placed = Envelope::new(
        &shop_lab::harness::order_placed(uuid::Uuid::now_v7(), "MUG-001", 1),
        None,
    );
    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    assert_eq!(
        publisher.ready(&queue).await,
        1,
        "choreographed, payment hears OrderPlaced"
    );

    // The same shop, switched: payment's table now holds commands only, and its queue follows.
    shop.env.style = Style::Orchestration;
    shop.start_service("payment").await;
    shop.stop_service("payment").await;
    let before = publisher.ready(&queue).await;
    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    assert_eq!(
        publisher.ready(&queue).await,
        before,
        "orchestrated, OrderPlaced no longer reaches payment"
    );

    // Switched back (`shop up` and provisioning declare every queue of the style): the saga,
    // which does not run in the choreography, stops hearing events instead of piling them up.
    let config = shop.env.config();
    let declare = |style| {
        shop::provision::declare_topologies(
            &config.amqp_url,
            &config.namespace,
            style,
            &config.retry_delays,
            config.history,
        )
    };
    declare(Style::Orchestration).await.expect("declared");
    let saga = format!("{}.saga", shop.env.namespace);
    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    assert_eq!(
        publisher.ready(&saga).await,
        1,
        "orchestrated, the saga hears it"
    );
    declare(Style::Choreography).await.expect("declared");
    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    assert_eq!(
        publisher.ready(&saga).await,
        1,
        "choreographed, it no longer does"
    );
    publisher.close().await;
    shop.stop().await;
}

const PATIENCE: std::time::Duration = shop_tests::PATIENCE;
