//! Payment decisions, free of I/O.

/// The test card that is always declined: the deterministic way to drive PaymentFailed.
pub const DECLINED_METHOD: &str = "card_declined";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Approved,
    Declined { reason: String },
}

pub fn decide_charge(payment_method: &str, amount_cents: i64) -> Charge {
    if payment_method == DECLINED_METHOD {
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
        Some(PaymentStatus::Declined) => Refund::NothingCharged,
        Some(PaymentStatus::Refunded) => Refund::AlreadyRefunded,
        None => Refund::ChargeNotSeenYet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declined_test_card_is_declined_and_others_are_charged() {
        assert_eq!(decide_charge("card", 4499), Charge::Approved);
        assert!(matches!(
            decide_charge(DECLINED_METHOD, 4499),
            Charge::Declined { .. }
        ));
        assert!(matches!(decide_charge("card", 0), Charge::Declined { .. }));
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
    }
}
