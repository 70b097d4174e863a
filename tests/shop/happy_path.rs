//! The happy path, black-box: an order placed over HTTP travels through all five services and
//! ends confirmed, with every event of the chain published exactly once, correlated by the
//! order id and each caused by the one before.

use serde_json::json;
use shared_events::{
    Message, OrderConfirmed, OrderPlaced, PaymentCompleted, ShipmentBooked, StockReserved,
};
use shop_tests::{Seen, Shop, eventually, metric, metrics_text, order_body};

fn header(seen: &Seen, name: &str) -> Option<String> {
    service_kit::publisher::header_text(&seen.properties, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_paid_reserved_shipped_confirmed_and_notified() {
    let shop = Shop::start().await;

    let stock_before = shop
        .get_json(&format!("{}/stock", shop.url("inventory")))
        .await;
    let response = shop
        .place_order(&order_body("MUG-001", 2, "card", "GB"))
        .await;
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Location header");
    let placed: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(placed["status"], "pending");
    let order_id: uuid::Uuid = placed["order_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    assert_eq!(location, format!("/orders/{order_id}"));

    let order = shop.settled_order(order_id).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total_cents"], 2500);
    assert_eq!(
        order["items"],
        json!([{ "sku": "MUG-001", "quantity": 2, "unit_price_cents": 1250 }])
    );
    assert!(order.get("cancellation_reason").is_none());

    // The customer heard exactly once.
    let notifications_url = format!(
        "{}/notifications?order_id={order_id}",
        shop.url("notifications")
    );
    eventually("customer notified", || async {
        shop.get_json(&notifications_url)
            .await
            .as_array()
            .is_some_and(|n| !n.is_empty())
    })
    .await;

    // Every outbox row was published and marked sent (marks are gathered for a moment first).
    eventually("every outbox row marked sent", || async {
        let mut unsent = 0;
        for schema in ["orders", "payment", "inventory", "shipping"] {
            unsent += shop
                .count(&format!(
                    "SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL"
                ))
                .await;
        }
        unsent == 0
    })
    .await;
    let chain = [
        OrderPlaced::TYPE,
        PaymentCompleted::TYPE,
        StockReserved::TYPE,
        ShipmentBooked::TYPE,
        OrderConfirmed::TYPE,
    ];
    // Each fact of the chain happened once: one message id per type. The relay may publish a
    // row twice (at least once); consumers' inboxes absorb the copy, so copies are not counted.
    let seen = shop.spy.for_order(order_id);
    let distinct: std::collections::BTreeSet<(&str, uuid::Uuid)> = seen
        .iter()
        .map(|s| (s.envelope.event_type.as_str(), s.envelope.message_id))
        .collect();
    let types: Vec<&str> = distinct.iter().map(|(event_type, _)| *event_type).collect();
    let mut expected = chain.to_vec();
    expected.sort_unstable();
    assert_eq!(
        types, expected,
        "each event of the chain exactly once: {types:?}"
    );

    let find = |event_type: &str| {
        seen.iter()
            .find(|s| s.envelope.event_type == event_type)
            .expect("seen")
    };
    let mut cause = None;
    let mut trace_ids = std::collections::BTreeSet::new();
    let mut span_ids = std::collections::BTreeSet::new();
    for event_type in chain {
        let event = find(event_type);
        let envelope = &event.envelope;
        assert_eq!(
            envelope.correlation_id, order_id,
            "{event_type} correlation"
        );
        assert_eq!(
            envelope.causation_id, cause,
            "{event_type} caused by the previous event"
        );
        assert_eq!(envelope.message_id.get_version_num(), 7);
        let info = shared_events::CATALOG
            .iter()
            .find(|i| i.event_type == event_type)
            .expect("in catalog");
        assert_eq!(event.routing_key, info.routing_key);
        assert_eq!(envelope.producer, info.producer);
        // AMQP properties mirror the envelope.
        let properties = &event.properties;
        assert_eq!(
            properties.message_id().as_ref().map(ToString::to_string),
            Some(envelope.message_id.to_string())
        );
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ToString::to_string),
            Some(order_id.to_string())
        );
        assert_eq!(
            properties.kind().as_ref().map(ToString::to_string),
            Some(format!("shop.{event_type}.v{}", info.version))
        );
        assert_eq!(
            properties.app_id().as_ref().map(ToString::to_string),
            Some(info.producer.to_owned())
        );
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(ToString::to_string),
            Some("application/cloudevents+json".to_owned())
        );
        assert_eq!(header(event, "causation_id"), cause.map(|c| c.to_string()));
        // One trace per order; each message carries the context of the span that sent it.
        let traceparent = envelope.traceparent.clone().expect("a trace context");
        assert_eq!(header(event, "traceparent"), Some(traceparent.clone()));
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert!(
            matches!(fields[..], ["00", trace, span, "01"] if trace.len() == 32 && span.len() == 16),
            "{traceparent}"
        );
        trace_ids.insert(fields[1].to_owned());
        assert!(span_ids.insert(fields[2].to_owned()), "a span of its own");
        cause = Some(envelope.message_id);
    }
    assert_eq!(trace_ids.len(), 1, "one trace for the order: {trace_ids:?}");

    let notices = shop.get_json(&notifications_url).await;
    assert_eq!(notices.as_array().map(Vec::len), Some(1));
    assert_eq!(notices[0]["kind"], "order_confirmed");

    // Two mugs left the available stock and are held for the confirmed order.
    let stock_after = shop
        .get_json(&format!("{}/stock", shop.url("inventory")))
        .await;
    let mug = |stock: &serde_json::Value| {
        stock
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["sku"] == "MUG-001").cloned())
            .expect("MUG-001 stocked")
    };
    let available = |stock: &serde_json::Value| mug(stock)["available"].as_i64().expect("a count");
    assert_eq!(available(&stock_after), available(&stock_before) - 2);
    assert_eq!(mug(&stock_after)["reserved"], 2);

    // Orders' timeline tells the same story, in causal order.
    let timeline = shop
        .get_json(&format!(
            "{}/orders/{order_id}/timeline",
            shop.url("orders")
        ))
        .await;
    // Each received event names the broker user that published it (here every service is
    // the broker's guest; the least-privilege test sees each service's own user).
    let story: Vec<(&str, &str, Option<&str>)> = timeline
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| {
            Some((
                e["type"].as_str()?,
                e["orders_role"].as_str()?,
                e["published_by"].as_str(),
            ))
        })
        .collect();
    assert_eq!(
        story,
        vec![
            (OrderPlaced::TYPE, "announced", None),
            (PaymentCompleted::TYPE, "received", Some("guest")),
            (StockReserved::TYPE, "received", Some("guest")),
            (ShipmentBooked::TYPE, "received", Some("guest")),
            (OrderConfirmed::TYPE, "announced", None),
        ]
    );
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_health_readiness_and_metrics() {
    let shop = Shop::start().await;
    let order_id = shop.place(&order_body("TEE-001", 1, "card", "DE")).await;
    shop.settled_order(order_id).await;
    for service in &shop.services {
        let health = shop.get_json(&format!("{}/healthz", service.url)).await;
        assert_eq!(health["alive"], true);
        let ready = shop.get_json(&format!("{}/readyz", service.url)).await;
        assert_eq!(
            ready,
            json!({
                "service": service.name,
                "namespace": shop.env.namespace,
                "ready": true,
                "database": true,
                "broker": true,
                "consumer_paused": false
            })
        );
        assert_eq!(
            metric(&shop.http, &service.url, "shop_broker_sessions_total").await,
            1
        );
    }
    assert_eq!(
        metric(
            &shop.http,
            &shop.url("payment"),
            "shop_messages_total{event=\"OrderPlaced\",outcome=\"applied\"}"
        )
        .await,
        1
    );
    assert!(
        metric(
            &shop.http,
            &shop.url("orders"),
            "shop_outbox_published_total"
        )
        .await
            >= 2
    );
    assert_eq!(
        metric(
            &shop.http,
            &shop.url("orders"),
            "shop_saga_duration_seconds_count{outcome=\"confirmed\"}"
        )
        .await,
        1,
        "one saga timed, placed to confirmed"
    );
    assert_eq!(
        metric(
            &shop.http,
            &shop.url("payment"),
            "shop_handler_duration_seconds_count{event=\"OrderPlaced\"}"
        )
        .await,
        1
    );
    let samples = std::env::var_os("SHOP_METRICS_SAMPLES").map(std::path::PathBuf::from);
    for service in &shop.services {
        let text = metrics_text(&shop.http, &service.url).await;
        for line in [
            "# TYPE shop_outbox_unsent_rows gauge",
            "# TYPE shop_outbox_oldest_unsent_age_seconds gauge",
            "# TYPE shop_dead_letter_queue_depth gauge",
            "shop_dead_letter_queue_depth 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{}: no {line:?} in\n{text}",
                service.name
            );
        }
        // What promtool checks in CI (`.ci/run`).
        if let Some(dir) = &samples {
            std::fs::create_dir_all(dir).expect("sample directory");
            std::fs::write(dir.join(format!("{}.prom", service.name)), &text)
                .expect("sample written");
        }
    }
    eventually("every outbox drained, as /metrics says", || async {
        let mut drained = true;
        for service in &shop.services {
            drained &= metric(&shop.http, &service.url, "shop_outbox_unsent_rows").await == 0;
        }
        drained
    })
    .await;
    shop.stop().await;
}
