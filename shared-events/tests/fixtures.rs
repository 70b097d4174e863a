//! Every event of the catalog round-trips through its JSON fixture unchanged: the fixtures are
//! the wire contract, and a field renamed in Rust breaks this test.

use serde::Serialize;
use shared_events::*;

/// `<Event>.json` holds the current version; `<Event>.v<n>.json` each older one still read.
fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn round_trip<E: Message + Serialize + PartialEq + std::fmt::Debug>() {
    let json = fixture(E::TYPE);
    let envelope: Envelope = serde_json::from_value(json.clone()).expect("envelope parses");
    assert_eq!(envelope.producer, E::PRODUCER);
    let event: E = envelope.decode().expect("payload decodes");
    assert_eq!(event.order_id(), envelope.correlation_id);
    let rebuilt = Envelope {
        payload: serde_json::to_value(&event).expect("payload serializes"),
        ..envelope
    };
    assert_eq!(
        serde_json::to_value(&rebuilt).expect("envelope serializes"),
        json
    );
}

#[test]
fn every_catalog_event_round_trips_through_its_fixture() {
    round_trip::<OrderPlaced>();
    round_trip::<PaymentCompleted>();
    round_trip::<PaymentFailed>();
    round_trip::<StockReserved>();
    round_trip::<StockReservationFailed>();
    round_trip::<ShipmentBooked>();
    round_trip::<ShipmentFailed>();
    round_trip::<PaymentRefunded>();
    round_trip::<StockReleased>();
    round_trip::<OrderConfirmed>();
    round_trip::<OrderCancelled>();
    round_trip::<PaymentVoided>();
    round_trip::<ReservationVoided>();
    round_trip::<ShipmentCancelled>();
    round_trip::<ShipmentVoided>();
    assert_eq!(
        CATALOG.len(),
        15,
        "a new event needs a fixture and a line above"
    );
}

#[test]
fn every_command_round_trips_through_its_fixture() {
    round_trip::<ChargePayment>();
    round_trip::<ReserveStock>();
    round_trip::<BookShipment>();
    round_trip::<RefundPayment>();
    round_trip::<ReleaseStock>();
    round_trip::<CancelShipment>();
    round_trip::<ConfirmOrder>();
    round_trip::<CancelOrder>();
    round_trip::<SettleOrder>();
    assert_eq!(
        COMMANDS.len(),
        9,
        "a new command needs a fixture and a line above"
    );
}

#[test]
fn every_older_version_a_consumer_reads_has_a_fixture_and_upgrades() {
    for info in CATALOG {
        for version in info.oldest_read..info.version {
            let json = fixture(&format!("{}.v{version}", info.event_type));
            let envelope: Envelope = serde_json::from_value(json).expect("envelope parses");
            assert_eq!(envelope.version, version, "{}", info.event_type);
            assert_eq!(envelope.event_type, info.event_type);
            assert!(
                payload_schema_of_version(info.event_type, version).is_some(),
                "{} v{version} has a schema",
                info.event_type
            );
        }
    }
}

#[test]
fn an_older_order_placed_reads_as_v3_in_euros_with_the_default_deadline() {
    let current: Envelope = serde_json::from_value(fixture("OrderPlaced")).expect("parses");
    let current: OrderPlaced = current.decode().expect("v3");
    for version in ["OrderPlaced.v1", "OrderPlaced.v2"] {
        let old: Envelope = serde_json::from_value(fixture(version)).expect("parses");
        let upgraded: OrderPlaced = old.decode().expect("still read");
        assert_eq!(upgraded.currency, v1::CURRENCY, "{version}");
        assert_eq!(
            upgraded.deadline_at,
            old.occurred_at + v2::DEADLINE,
            "{version}"
        );
        assert_eq!(
            upgraded, current,
            "{version} upgraded is v3 with what it implied"
        );
    }
}

#[test]
fn a_version_from_the_future_is_refused_with_the_versions_this_build_reads() {
    let mut future: Envelope = serde_json::from_value(fixture("OrderPlaced")).expect("parses");
    future.version = 4;
    let refused = future.decode::<OrderPlaced>().expect_err("v4 is unknown");
    assert_eq!(
        refused.to_string(),
        "unsupported version 4 of OrderPlaced (this build reads versions 1 to 3)"
    );
}

#[test]
fn first_event_of_a_saga_has_no_cause() {
    let envelope: Envelope = serde_json::from_value(fixture("OrderPlaced")).expect("parses");
    assert_eq!(envelope.causation_id, None);
}
