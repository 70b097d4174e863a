//! Payment decisions, free of I/O.

use shared_events::payment_methods::DECLINED_TEST_CARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Approved,
    Declined { reason: String },
}

/// The currencies payment can charge in (ISO 4217).
pub const CURRENCIES: &[&str] = &["EUR"];

pub fn decide_charge(payment_method: &str, amount_cents: i64, currency: &str) -> Charge {
    if !CURRENCIES.contains(&currency) {
        Charge::Declined {
            reason: format!("currency {currency:?} not accepted (only {CURRENCIES:?})"),
        }
    } else if payment_method == DECLINED_TEST_CARD {
        Charge::Declined {
            reason: "card declined".to_owned(),
        }
    } else if amount_cents <= 0 {
        Charge::Declined {
            reason: format!("nothing to charge: amount {amount_cents}"),
        }
    } else {
        Charge::Approved
    }
}

/// A payment's state, stored as the enum type `payment.payment_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "payment_status", rename_all = "snake_case")]
pub enum PaymentStatus {
    Charged,
    Declined,
    Refunded,
    /// The order was cancelled before it was charged; it never will be.
    Voided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refund {
    /// Money was taken and not yet given back.
    Due,
    /// The charge was declined: nothing to give back.
    NothingCharged,
    /// Already refunded once; a customer is never refunded twice.
    AlreadyRefunded,
    /// The failure arrived before the charge was recorded: try again later.
    ChargeNotSeenYet,
}

/// What a downstream failure means for this order's money.
pub fn decide_refund(status: Option<PaymentStatus>) -> Refund {
    match status {
        Some(PaymentStatus::Charged) => Refund::Due,
        Some(PaymentStatus::Declined | PaymentStatus::Voided) => Refund::NothingCharged,
        Some(PaymentStatus::Refunded) => Refund::AlreadyRefunded,
        None => Refund::ChargeNotSeenYet,
    }
}

/// Payment's answer to the order's cancellation, whatever it has seen of the order so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Money was taken: give it back (PaymentRefunded).
    Refund,
    /// Nothing was taken (declined, or the order not seen yet): say so (PaymentVoided) and,
    /// if there is no payment yet, record that there never will be one.
    Void { record: bool },
    /// Already refunded or voided: that answer was given.
    AlreadyAnswered,
}

pub fn decide_undo(status: Option<PaymentStatus>) -> Undo {
    match status {
        Some(PaymentStatus::Charged) => Undo::Refund,
        Some(PaymentStatus::Declined) => Undo::Void { record: false },
        None => Undo::Void { record: true },
        Some(PaymentStatus::Refunded | PaymentStatus::Voided) => Undo::AlreadyAnswered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declined_test_card_is_declined_and_others_are_charged() {
        assert_eq!(decide_charge("card", 4499, "EUR"), Charge::Approved);
        assert!(matches!(
            decide_charge(DECLINED_TEST_CARD, 4499, "EUR"),
            Charge::Declined { .. }
        ));
        assert!(matches!(
            decide_charge("card", 0, "EUR"),
            Charge::Declined { .. }
        ));
        assert!(matches!(
            decide_charge("card", 4499, "XTS"),
            Charge::Declined { reason } if reason.contains("XTS")
        ));
    }

    #[test]
    fn only_a_standing_charge_is_refunded() {
        assert_eq!(decide_refund(Some(PaymentStatus::Charged)), Refund::Due);
        assert_eq!(
            decide_refund(Some(PaymentStatus::Declined)),
            Refund::NothingCharged
        );
        assert_eq!(
            decide_refund(Some(PaymentStatus::Refunded)),
            Refund::AlreadyRefunded
        );
        assert_eq!(decide_refund(None), Refund::ChargeNotSeenYet);
        assert_eq!(
            decide_refund(Some(PaymentStatus::Voided)),
            Refund::NothingCharged
        );
    }

    #[test]
    fn a_cancellation_refunds_a_charge_and_voids_everything_else_once() {
        assert_eq!(decide_undo(Some(PaymentStatus::Charged)), Undo::Refund);
        assert_eq!(
            decide_undo(Some(PaymentStatus::Declined)),
            Undo::Void { record: false }
        );
        assert_eq!(decide_undo(None), Undo::Void { record: true });
        assert_eq!(
            decide_undo(Some(PaymentStatus::Refunded)),
            Undo::AlreadyAnswered
        );
        assert_eq!(
            decide_undo(Some(PaymentStatus::Voided)),
            Undo::AlreadyAnswered
        );
    }
}
