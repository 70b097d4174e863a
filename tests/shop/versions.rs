//! A rolling upgrade, with old messages in flight (docs/architecture.md, "Versions"): orders
//! now sends OrderPlaced version 3 (with its currency and deadline), while version 1 messages, sent before
//! the upgrade, still sit in payment's queue, in its delay queue and in its dead-letter queue.
//! Each is read once, upgraded in one place, and its order goes through; a version from the
//! future is dead-lettered with the reason.

use serde_json::Value;
use service_kit::{dead_letters, topology::Topology};
use shared_events::{Envelope, Message, OrderPlaced, PaymentCompleted};
use shop_tests::{
    Shop, TakenMessage, TestPublisher, amqp_url, eventually, order_body, take_dead_letters,
    take_queued,
};
use uuid::Uuid;

/// Places an order while payment is down and takes its OrderPlaced (version 3, as orders now
/// sends it) out of payment's queue before anything else is put there.
async fn place_and_take(shop: &Shop, body: &Value) -> (Uuid, Envelope) {
    let order_id = shop.place(body).await;
    let taken = take_queued(&shop.env.namespace, "payment", 1).await;
    let envelope = taken[0].envelope();
    assert_eq!(envelope.event_type, OrderPlaced::TYPE);
    assert_eq!(envelope.correlation_id, order_id);
    assert_eq!(envelope.version, 3, "orders sends version 3");
    assert_eq!(envelope.payload["currency"], "EUR");
    assert!(envelope.payload["deadline_at"].is_string());
    (order_id, envelope)
}

/// The same event as orders sent it two upgrades ago: version 1, no currency, no deadline.
fn as_version_1(mut envelope: Envelope) -> TakenMessage {
    envelope.version = 1;
    if let Value::Object(payload) = &mut envelope.payload {
        payload.remove("currency");
        payload.remove("deadline_at");
    }
    TakenMessage::carrying(&envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_messages_left_in_queues_are_upgraded_and_a_future_version_is_dead_lettered() {
    let mut shop = Shop::start().await;
    shop.stop_service("payment").await;
    let namespace = shop.env.namespace.clone();
    let topology = Topology::new(
        &namespace,
        "payment",
        vec![],
        &shop.env.config().retry_delays,
    );
    let publisher = TestPublisher::new(&namespace).await;

    let (in_queue, placed_1) = place_and_take(&shop, &order_body("MUG-001", 1, "card", "GB")).await;
    let (in_delay_queue, placed_2) =
        place_and_take(&shop, &order_body("TEE-001", 1, "card", "GB")).await;
    let (dead_lettered, placed_3) =
        place_and_take(&shop, &order_body("BOOK-001", 1, "card", "GB")).await;
    let (from_the_future, mut placed_4) =
        place_and_take(&shop, &order_body("MUG-001", 2, "card", "GB")).await;

    publisher
        .redeliver(&namespace, "payment", &as_version_1(placed_1))
        .await;
    publisher
        .put(
            &namespace,
            "payment",
            topology.retry_queue_for(2),
            &as_version_1(placed_2),
        )
        .await;
    let letter_v1 = as_version_1(placed_3);
    placed_4.version = 4;
    publisher
        .redeliver(&namespace, "payment", &TakenMessage::carrying(&placed_4))
        .await;

    shop.start_service("payment").await;
    let refused = take_dead_letters(&namespace, "payment", 1).await;
    assert_eq!(refused[0].envelope().correlation_id, from_the_future);
    assert_eq!(
        refused[0].header(service_kit::headers::DEAD_LETTER_REASON),
        Some("unsupported version 4 of OrderPlaced (this build reads versions 1 to 3)".to_owned())
    );

    // A version 1 message dead-lettered before the upgrade, re-driven after it by an operator.
    publisher
        .put(
            &namespace,
            "payment",
            &topology.dead_letter_queue,
            &letter_v1,
        )
        .await;
    let redriven = dead_letters::redrive(
        &amqp_url(),
        &namespace,
        "payment",
        &dead_letters::Selection::All,
        std::time::Duration::from_secs(3600),
    )
    .await
    .expect("redrive");
    assert_eq!(redriven.moved, 1);

    for order_id in [in_queue, in_delay_queue, dead_lettered] {
        let order = shop.settled_order(order_id).await;
        assert_eq!(order["status"], "confirmed", "{order}");
        let charges = shop
            .spy
            .for_order(order_id)
            .iter()
            .filter(|seen| seen.envelope.event_type == PaymentCompleted::TYPE)
            .count();
        assert_eq!(charges, 1, "charged once");
    }
    assert_eq!(
        shop.count(
            "SELECT count(*) FROM payment.payments WHERE currency = 'EUR' AND status = 'charged'"
        )
        .await,
        3
    );

    // The order whose OrderPlaced nobody could read is cancelled, and settles like any other.
    let response = shop
        .http
        .post(format!(
            "{}/orders/{from_the_future}/cancel",
            shop.url("orders")
        ))
        .send()
        .await
        .expect("orders reachable");
    assert_eq!(response.status(), 202);
    shop.settled_order(from_the_future).await;
    eventually("payment's dead-letter queue drained", || async {
        dead_letters::list(&amqp_url(), &namespace, "payment")
            .await
            .is_ok_and(|letters| letters.is_empty())
    })
    .await;
    publisher.close().await;
    shop.audit_and_stop().await;
}
