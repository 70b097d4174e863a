//! Every event of the catalog round-trips through its JSON fixture unchanged: the fixtures are
//! the wire contract, and a field renamed in Rust breaks this test.

use serde::Serialize;
use shared_events::*;

fn fixture(event_type: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn round_trip<E: Event + Serialize + PartialEq + std::fmt::Debug>() {
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
fn first_event_of_a_saga_has_no_cause() {
    let envelope: Envelope = serde_json::from_value(fixture("OrderPlaced")).expect("parses");
    assert_eq!(envelope.causation_id, None);
}
