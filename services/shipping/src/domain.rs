//! Shipping decisions, free of I/O.

use uuid::Uuid;

/// A shipment's state, stored as the enum type `shipping.shipment_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "shipment_status", rename_all = "snake_case")]
pub enum ShipmentStatus {
    Booked,
    Failed,
    /// Booked, then cancelled with the carrier because the order was cancelled.
    Cancelled,
    /// The order was cancelled before anything was booked; nothing ever will be.
    Voided,
}

/// Shipping's answer to the order's cancellation, whatever it has seen of the order so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// A shipment is booked: cancel it (ShipmentCancelled).
    Cancel,
    /// None is booked (failed, or not attempted yet): say so (ShipmentVoided) and, if nothing
    /// was decided yet, record that nothing ever will be booked.
    Void { record: bool },
    /// Already cancelled or voided: that answer was given.
    AlreadyAnswered,
}

pub fn decide_undo(status: Option<ShipmentStatus>) -> Undo {
    match status {
        Some(ShipmentStatus::Booked) => Undo::Cancel,
        Some(ShipmentStatus::Failed) => Undo::Void { record: false },
        None => Undo::Void { record: true },
        Some(ShipmentStatus::Cancelled | ShipmentStatus::Voided) => Undo::AlreadyAnswered,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booking {
    Book {
        carrier: String,
        tracking_number: String,
    },
    Fail {
        reason: String,
    },
}

/// Books with the carrier that serves the destination country, if any does.
pub fn decide_booking(country: &str, carrier: Option<&str>, shipment_id: Uuid) -> Booking {
    match carrier {
        Some(carrier) => Booking::Book {
            carrier: carrier.to_owned(),
            tracking_number: tracking_number(carrier, shipment_id),
        },
        None => Booking::Fail {
            reason: format!("no carrier serves {country}"),
        },
    }
}

/// Carrier initials and the random tail of the shipment id: unique, and readable on a label.
pub fn tracking_number(carrier: &str, shipment_id: Uuid) -> String {
    let initials: String = carrier
        .split('-')
        .filter_map(|word| word.chars().next())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let id = shipment_id.simple().to_string().to_ascii_uppercase();
    format!("{initials}{}", &id[id.len() - 12..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_country_is_booked_with_its_carrier() {
        let id = Uuid::now_v7();
        match decide_booking("GB", Some("royal-parcel"), id) {
            Booking::Book {
                carrier,
                tracking_number,
            } => {
                assert_eq!(carrier, "royal-parcel");
                assert!(tracking_number.starts_with("RP"));
                assert_eq!(tracking_number.len(), 14);
            }
            other => panic!("expected a booking, got {other:?}"),
        }
    }

    #[test]
    fn unserved_country_fails_with_a_reason() {
        assert_eq!(
            decide_booking("AQ", None, Uuid::nil()),
            Booking::Fail {
                reason: "no carrier serves AQ".to_owned()
            }
        );
    }

    #[test]
    fn a_cancellation_cancels_a_booking_and_voids_everything_else_once() {
        assert_eq!(decide_undo(Some(ShipmentStatus::Booked)), Undo::Cancel);
        assert_eq!(
            decide_undo(Some(ShipmentStatus::Failed)),
            Undo::Void { record: false }
        );
        assert_eq!(decide_undo(None), Undo::Void { record: true });
        for answered in [ShipmentStatus::Cancelled, ShipmentStatus::Voided] {
            assert_eq!(decide_undo(Some(answered)), Undo::AlreadyAnswered);
        }
    }
}
