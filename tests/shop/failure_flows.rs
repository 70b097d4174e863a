//! Every failure path (docs/architecture.md, "Flows") with its scattered compensations, the overselling race,
//! a mixed concurrent batch, and the auditor itself. Each scenario ends with a clean audit.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use service_kit::Style;
use shared_events::{
    Envelope, Message, OrderCancelled, OrderLine, OrderPlaced, PaymentCompleted, PaymentFailed,
    PaymentRefunded, PaymentVoided, ReservationVoided, ShipmentBooked, ShipmentFailed,
    ShipmentVoided, ShippingAddress, StockLine, StockReleased, StockReservationFailed,
    StockReserved,
};
use shop::map::{Scenario, messages_of, stories};
use shop_tests::{Seen, Shop, TestPublisher, eventually, metric, order_body};
use uuid::Uuid;

/// The messages the flow map says the scenario leads to (the map is drawn from these stories,
/// so what it shows is what these tests saw).
fn story(scenario: Scenario) -> Vec<&'static str> {
    messages_of(&stories(Style::Choreography, scenario))
}

fn caused(events: &BTreeMap<String, Seen>, effect: &str, cause: &str) {
    caused_by_either(events, effect, [cause, cause]);
}

/// A compensation two facts call for (the failure itself, and the cancellation it led to) is
/// made once, by whichever its service handled first.
fn caused_by_either(events: &BTreeMap<String, Seen>, effect: &str, causes: [&str; 2]) {
    let cause = events[effect].envelope.causation_id;
    assert!(
        causes
            .iter()
            .any(|c| cause == Some(events[*c].envelope.message_id)),
        "{effect} is caused by one of {causes:?}"
    );
}

/// Every participant's answer to a cancellation of an order it never acted on.
const VOIDED: [&str; 3] = [
    PaymentVoided::TYPE,
    ReservationVoided::TYPE,
    ShipmentVoided::TYPE,
];

async fn stock_of(shop: &Shop, sku: &str) -> (i64, i64) {
    let stock = shop
        .get_json(&format!("{}/stock", shop.url("inventory")))
        .await;
    let row = stock
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["sku"] == sku).cloned())
        .expect("stocked sku");
    (
        row["available"].as_i64().expect("n"),
        row["reserved"].as_i64().expect("n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_cancels_the_order_with_nothing_to_undo() {
    let shop = Shop::start().await;
    let order_id = shop
        .place(&order_body("TEE-001", 1, "card_declined", "US"))
        .await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(
        order["cancellation_reason"],
        "payment failed: card declined"
    );
    let events = shop
        .exact_messages(order_id, &story(Scenario::CardDeclined))
        .await;
    caused(&events, PaymentFailed::TYPE, OrderPlaced::TYPE);
    caused(&events, OrderCancelled::TYPE, PaymentFailed::TYPE);
    for answer in VOIDED {
        caused(&events, answer, OrderCancelled::TYPE);
    }

    shop.assert_notices(order_id, &["order_cancelled"]).await;
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.payments WHERE status = 'declined'")
            .await,
        1
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM inventory.reservations WHERE status <> 'voided'")
            .await,
        0,
        "no reservation, and none will be made"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM shipping.shipments WHERE status <> 'voided'")
            .await,
        0,
        "no shipment, and none will be booked"
    );
    assert_eq!(stock_of(&shop, "TEE-001").await, (50, 0));
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_stock_refunds_the_payment_and_cancels_the_order() {
    let shop = Shop::start().await;
    // One line fits, the other does not: nothing may stay reserved.
    let mut body = order_body("MUG-001", 3, "card", "GB");
    body["items"] =
        json!([{ "sku": "MUG-001", "quantity": 3 }, { "sku": "HOODIE-001", "quantity": 11 }]);
    let order_id = shop.place(&body).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert!(
        order["cancellation_reason"]
            .as_str()
            .is_some_and(|r| r.contains("HOODIE-001")),
        "{order}"
    );
    let events = shop
        .exact_messages(order_id, &story(Scenario::OutOfStock))
        .await;
    caused(
        &events,
        StockReservationFailed::TYPE,
        PaymentCompleted::TYPE,
    );
    caused_by_either(
        &events,
        PaymentRefunded::TYPE,
        [StockReservationFailed::TYPE, OrderCancelled::TYPE],
    );
    caused(&events, OrderCancelled::TYPE, StockReservationFailed::TYPE);
    caused(&events, ReservationVoided::TYPE, OrderCancelled::TYPE);
    caused(&events, ShipmentVoided::TYPE, OrderCancelled::TYPE);
    let refund: PaymentRefunded = events[PaymentRefunded::TYPE]
        .envelope
        .decode()
        .expect("payload");
    assert_eq!(refund.amount_cents, 3 * 1250 + 11 * 4900);

    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    assert_eq!(
        stock_of(&shop, "MUG-001").await,
        (100, 0),
        "no partial reservation held"
    );
    assert_eq!(stock_of(&shop, "HOODIE-001").await, (10, 0));
    assert_eq!(
        shop.count("SELECT count(*) FROM shipping.shipments WHERE status <> 'voided'")
            .await,
        0,
        "nothing booked, and nothing will be"
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_destination_refunds_releases_and_cancels() {
    let shop = Shop::start().await;
    let order_id = shop.place(&order_body("BOOK-001", 2, "card", "AQ")).await;

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(
        order["cancellation_reason"],
        "shipment failed: no carrier serves AQ"
    );
    let events = shop
        .exact_messages(order_id, &story(Scenario::Unshippable))
        .await;
    caused(&events, ShipmentFailed::TYPE, StockReserved::TYPE);
    for compensation in [PaymentRefunded::TYPE, StockReleased::TYPE] {
        caused_by_either(
            &events,
            compensation,
            [ShipmentFailed::TYPE, OrderCancelled::TYPE],
        );
    }
    caused(&events, OrderCancelled::TYPE, ShipmentFailed::TYPE);
    caused(&events, ShipmentVoided::TYPE, OrderCancelled::TYPE);
    let released: StockReleased = events[StockReleased::TYPE]
        .envelope
        .decode()
        .expect("payload");
    assert_eq!(
        released.items,
        vec![StockLine {
            sku: "BOOK-001".to_owned(),
            quantity: 2
        }]
    );

    shop.assert_notices(order_id, &["order_cancelled", "payment_refunded"])
        .await;
    assert_eq!(stock_of(&shop, "BOOK-001").await, (25, 0), "stock back");
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.payments WHERE status = 'refunded'")
            .await,
        1
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM shipping.shipments WHERE status = 'booked'")
            .await,
        0
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_racing_for_the_last_units_never_oversell() {
    let shop = Shop::start().await;
    const BUYERS: usize = 25;
    let body = order_body("HOODIE-001", 1, "card", "DE");
    let placing = (0..BUYERS).map(|_| shop.place(&body));
    let ids = futures_util::future::join_all(placing).await;

    let mut confirmed = 0;
    for id in &ids {
        if shop.settled_order(*id).await["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(confirmed, 10, "exactly the 10 hoodies in stock were sold");
    assert_eq!(stock_of(&shop, "HOODIE-001").await, (0, 10));
    let report = shop.assert_audit_clean().await;
    assert_eq!((report.confirmed, report.cancelled), (10, 15));
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_concurrent_batch_ends_with_a_clean_audit() {
    let shop = Shop::start().await;
    let paths: [(&str, Value, &str); 4] = [
        (
            "happy",
            order_body("STICKER-001", 2, "card", "NL"),
            "confirmed",
        ),
        (
            "declined",
            order_body("STICKER-001", 1, "card_declined", "NL"),
            "cancelled",
        ),
        (
            "no stock",
            order_body("HOODIE-001", 11, "card", "NL"),
            "cancelled",
        ),
        (
            "no carrier",
            order_body("STICKER-001", 1, "card", "AQ"),
            "cancelled",
        ),
    ];
    const ORDERS: usize = 240;
    let mut expected = Vec::new();
    let placer = &shop;
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(40) {
        let placing = chunk.iter().map(|i| {
            let (_, body, outcome) = &paths[i % paths.len()];
            async move { (placer.place(body).await, *outcome) }
        });
        expected.extend(futures_util::future::join_all(placing).await);
    }

    let report = shop.assert_audit_clean().await;
    assert_eq!(report.orders, ORDERS as i64);
    for (order_id, outcome) in &expected {
        assert_eq!(
            shop.order(*order_id).await["status"],
            *outcome,
            "{order_id}"
        );
    }
    assert_eq!((report.confirmed, report.cancelled), (60, 180));
    // Stickers: 60 happy orders of 2 stay sold; the AQ orders' stickers came back.
    assert_eq!(stock_of(&shop, "STICKER-001").await, (1000 - 120, 120));
    assert_eq!(
        shop.count("SELECT count(*) FROM notifications.notifications")
            .await,
        60 + 180 + 120
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reserved_before_the_address_is_known_is_deferred_until_it_is() {
    let shop = Shop::start_only(&["shipping"]).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let order_id = Uuid::now_v7();

    let reserved = Envelope::new(
        &StockReserved {
            order_id,
            items: vec![],
        },
        None,
    );
    publisher
        .publish(StockReserved::ROUTING_KEY, &reserved)
        .await;
    let shipping = shop.url("shipping");
    eventually("booking parked", || async {
        metric(
            &shop.http,
            &shipping,
            "shop_messages_total{event=\"StockReserved\",outcome=\"parked\"}",
        )
        .await
            >= 1
    })
    .await;

    let placed = OrderPlaced {
        order_id,
        customer_id: "late".to_owned(),
        items: vec![OrderLine {
            sku: "MUG-001".to_owned(),
            quantity: 1,
            unit_price_cents: 1250,
        }],
        total_cents: 1250,
        payment_method: "card".to_owned(),
        shipping_address: ShippingAddress {
            name: "Late Larry".to_owned(),
            line1: "1 Slow Lane".to_owned(),
            city: "Oslo".to_owned(),
            postal_code: "0150".to_owned(),
            country: "NO".to_owned(),
        },
        currency: "EUR".to_owned(),
        deadline_at: chrono::Utc::now() + chrono::TimeDelta::minutes(10),
    };
    publisher
        .publish(OrderPlaced::ROUTING_KEY, &Envelope::new(&placed, None))
        .await;
    let booked = shop.spy.wait_for::<ShipmentBooked>(order_id).await;
    assert_eq!(booked.envelope.causation_id, Some(reserved.message_id));
    let booked: ShipmentBooked = booked.envelope.decode().expect("payload");
    assert_eq!(booked.carrier, "eurocourier");
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_names_what_breaks_each_invariant() {
    let mut shop = Shop::start().await;
    let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    shop.settled_order(order_id).await;
    shop.wait_for_notices(order_id, 1).await;
    shop.assert_audit_clean().await;

    // Break the books behind the services' backs, one invariant at a time, with the services
    // stopped: a running relay would re-publish the outbox rows marked unsent below before the
    // auditor could see them.
    for service in shop::registry::names_in(service_kit::Style::Choreography) {
        shop.stop_service(service).await;
    }
    let pool = &shop.env.pool;
    let tamper = |sql: &'static str| async move {
        sqlx::query(sql).execute(pool).await.expect(sql);
    };
    tamper("UPDATE payment.payments SET amount_cents = amount_cents - 1").await;
    tamper("UPDATE inventory.stock SET available = available + 1 WHERE sku = 'MUG-001'").await;
    tamper("DELETE FROM shipping.shipments").await;
    tamper("DELETE FROM notifications.notifications").await;
    tamper("UPDATE orders.outbox SET sent_at = NULL").await;

    let report = shop::audit::audit(&shop::audit::Databases::single(pool), None)
        .await
        .expect("audit runs");
    // Each broken invariant is reported with what it is about: the order, the SKU whose units
    // do not add up, the service whose outbox is behind.
    let order = order_id.to_string();
    let named = |invariant: u8| -> Vec<&str> {
        report
            .violations
            .iter()
            .filter(|v| v.invariant == invariant)
            .filter_map(|v| v.subject.as_deref())
            .collect()
    };
    for (invariant, subject) in [
        (2, order.as_str()),
        (3, "MUG-001"),
        (4, order.as_str()),
        (5, order.as_str()),
        (6, "orders"),
    ] {
        assert_eq!(
            named(invariant),
            [subject],
            "invariant {invariant}:\n{report}"
        );
    }

    tamper("UPDATE orders.orders SET status = 'paid'").await;
    let report = shop::audit::audit(&shop::audit::Databases::single(pool), None)
        .await
        .expect("audit runs");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant == 1 && v.subject.as_deref() == Some(order.as_str())),
        "{report}"
    );
    shop.stop().await;
}
