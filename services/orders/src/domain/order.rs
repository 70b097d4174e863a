//! An order's life, free of I/O: how each fact moves it, how it is cancelled, and when it is
//! settled.

/// How far an order got, stored as the enum type `orders.order_status`; the order of the
/// variants is the order of progress.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    sqlx::Type,
    serde::Serialize,
    utoipa::ToSchema,
)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "order_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Paid,
    StockReserved,
    Confirmed,
    Cancelled,
}

impl Status {
    fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled)
    }
}

/// What cancelled an order: a failure event, the customer, or the deadline. Stored as the
/// enum type `orders.cancelled_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "cancelled_by")]
pub enum Cause {
    PaymentFailed,
    StockReservationFailed,
    ShipmentFailed,
    CustomerRequest,
    DeadlineExceeded,
}

impl Cause {
    /// The `reason` OrderCancelled carries: the failed stage and why, or the customer's
    /// request or the deadline as a code.
    fn reason(self, detail: &str) -> String {
        match self {
            Self::PaymentFailed => format!("payment failed: {detail}"),
            Self::StockReservationFailed => format!("stock reservation failed: {detail}"),
            Self::ShipmentFailed => format!("shipment failed: {detail}"),
            Self::CustomerRequest => "customer_request".to_owned(),
            Self::DeadlineExceeded => "deadline_exceeded".to_owned(),
        }
    }
}

/// A fact orders learned from another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Paid,
    StockReserved,
    ShipmentBooked,
    Failed {
        failure: Cause,
        reason: String,
    },
    /// Payment's answers to a cancellation: money given back, or none taken.
    Refunded,
    PaymentVoided,
    /// Inventory's: stock given back, or none held.
    StockReleased,
    ReservationVoided,
    /// Shipping's: the booking cancelled, or none made.
    ShipmentUndone,
    /// The saga's word (orchestrated style) that every step that ran was walked back.
    WalkedBack,
}

/// What orders announces as a consequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    Confirmed,
    Cancelled { reason: String },
}

/// Why an order cannot be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefused {
    /// The confirmation committed first: the order stands.
    Confirmed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub status: Status,
    pub cancelled_by: Option<Cause>,
    pub cancellation_reason: Option<String>,
    pub refund_seen: bool,
    pub payment_voided: bool,
    pub release_seen: bool,
    pub reservation_voided: bool,
    pub shipment_undone: bool,
    pub walked_back: bool,
}

impl Order {
    pub fn placed() -> Self {
        Self {
            status: Status::Pending,
            cancelled_by: None,
            cancellation_reason: None,
            refund_seen: false,
            payment_voided: false,
            release_seen: false,
            reservation_voided: false,
            shipment_undone: false,
            walked_back: false,
        }
    }

    /// Moves the order forward. Facts may arrive out of order (each service's queue is its
    /// own), so progress only ever moves forward and a final status never changes: whichever
    /// of the confirmation and a cancellation commits first stands.
    pub fn apply(&mut self, fact: Fact) -> Option<Announcement> {
        match fact {
            Fact::Paid => self.advance_to(Status::Paid),
            Fact::StockReserved => self.advance_to(Status::StockReserved),
            Fact::ShipmentBooked if !self.status.is_final() => {
                self.status = Status::Confirmed;
                return Some(Announcement::Confirmed);
            }
            Fact::Failed { failure, reason } if !self.status.is_final() => {
                return Some(self.cancel_for(failure, &reason));
            }
            // Arrived after the order was final: the first outcome stands.
            Fact::ShipmentBooked | Fact::Failed { .. } => {}
            Fact::Refunded => self.refund_seen = true,
            Fact::PaymentVoided => self.payment_voided = true,
            Fact::StockReleased => self.release_seen = true,
            Fact::ReservationVoided => self.reservation_voided = true,
            Fact::ShipmentUndone => self.shipment_undone = true,
            Fact::WalkedBack => self.walked_back = true,
        }
        None
    }

    /// A cancellation asked for from outside the saga (the customer, the deadline): it
    /// cancels an open order, is a no-op on a cancelled one (`Ok(None)`: nothing new to
    /// announce), and is refused on a confirmed one.
    pub fn cancel(&mut self, cause: Cause) -> Result<Option<Announcement>, CancelRefused> {
        match self.status {
            Status::Confirmed => Err(CancelRefused::Confirmed),
            Status::Cancelled => Ok(None),
            _ => Ok(Some(self.cancel_for(cause, ""))),
        }
    }

    fn cancel_for(&mut self, cause: Cause, detail: &str) -> Announcement {
        let reason = cause.reason(detail);
        self.status = Status::Cancelled;
        self.cancelled_by = Some(cause);
        self.cancellation_reason = Some(reason.clone());
        Announcement::Cancelled { reason }
    }

    fn advance_to(&mut self, status: Status) {
        if !self.status.is_final() && status > self.status {
            self.status = status;
        }
    }

    /// No further event is expected: confirmed, or cancelled and every participant has said
    /// what it undid (or, orchestrated, the saga has). Orders cannot see whether payment had
    /// charged or inventory had reserved when the cancellation reached them, so it waits for
    /// their answers rather than guess.
    pub fn settled(&self) -> bool {
        match self.status {
            Status::Confirmed => true,
            Status::Cancelled if self.walked_back => true,
            Status::Cancelled => {
                (self.refund_seen || self.payment_voided)
                    && (self.release_seen || self.reservation_voided)
                    && self.shipment_undone
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(failure: Cause) -> Fact {
        Fact::Failed {
            failure,
            reason: "because".to_owned(),
        }
    }

    /// Every participant's answer to a cancellation, as it would arrive for an order that
    /// was neither charged nor reserved nor booked.
    fn all_voided(order: &mut Order) {
        for fact in [
            Fact::PaymentVoided,
            Fact::ReservationVoided,
            Fact::ShipmentUndone,
        ] {
            assert!(!order.settled(), "settled before every answer: {order:?}");
            order.apply(fact);
        }
    }

    #[test]
    fn happy_path_confirms_once() {
        let mut order = Order::placed();
        assert_eq!(order.apply(Fact::Paid), None);
        assert_eq!(order.status, Status::Paid);
        assert_eq!(order.apply(Fact::StockReserved), None);
        assert_eq!(order.status, Status::StockReserved);
        assert!(!order.settled());
        assert_eq!(
            order.apply(Fact::ShipmentBooked),
            Some(Announcement::Confirmed)
        );
        assert!(order.settled());
        assert_eq!(
            order.apply(Fact::ShipmentBooked),
            None,
            "confirmed only once"
        );
    }

    #[test]
    fn orchestrated_a_cancelled_order_settles_on_the_sagas_word_and_a_confirmed_one_ignores_it() {
        let mut order = Order::placed();
        order.apply(failed(Cause::ShipmentFailed));
        assert!(!order.settled());
        assert_eq!(order.apply(Fact::WalkedBack), None);
        assert!(order.settled());

        let mut confirmed = Order::placed();
        confirmed.apply(Fact::ShipmentBooked);
        confirmed.apply(Fact::WalkedBack);
        assert_eq!(confirmed.status, Status::Confirmed);
    }

    #[test]
    fn progress_never_moves_backwards() {
        let mut order = Order::placed();
        order.apply(Fact::StockReserved);
        order.apply(Fact::Paid);
        assert_eq!(order.status, Status::StockReserved);
    }

    #[test]
    fn declined_payment_cancels_and_settles_once_everyone_answered() {
        let mut order = Order::placed();
        let announcement = order.apply(failed(Cause::PaymentFailed));
        assert_eq!(
            announcement,
            Some(Announcement::Cancelled {
                reason: "payment failed: because".to_owned()
            })
        );
        all_voided(&mut order);
        assert!(order.settled());
        assert_eq!(
            order.apply(failed(Cause::PaymentFailed)),
            None,
            "cancelled only once"
        );
    }

    #[test]
    fn stock_failure_settles_only_after_the_refund_and_the_other_answers() {
        let mut order = Order::placed();
        order.apply(Fact::Paid);
        order.apply(failed(Cause::StockReservationFailed));
        assert_eq!(order.status, Status::Cancelled);
        order.apply(Fact::ReservationVoided);
        order.apply(Fact::ShipmentUndone);
        assert!(!order.settled(), "the charge is not known to be undone");
        order.apply(Fact::Refunded);
        assert!(order.settled());
    }

    #[test]
    fn shipment_failure_needs_refund_and_release_in_any_order() {
        let answers = [Fact::Refunded, Fact::StockReleased, Fact::ShipmentUndone];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for (before_the_failure, order_of_answers) in [0, 1, 2, 3]
            .into_iter()
            .flat_map(|n| orders.map(|o| (n, o)))
        {
            // Some answers may even arrive before the failure they answer.
            let mut order = Order::placed();
            let mut answers = order_of_answers.iter().map(|&i| answers[i].clone());
            for answer in answers.by_ref().take(before_the_failure) {
                order.apply(answer);
            }
            order.apply(failed(Cause::ShipmentFailed));
            for answer in answers {
                assert!(!order.settled(), "{order_of_answers:?}: settled too early");
                order.apply(answer);
            }
            assert!(
                order.settled(),
                "{order_of_answers:?}, {before_the_failure} before"
            );
        }
    }

    #[test]
    fn a_confirmed_order_is_never_cancelled() {
        let mut order = Order::placed();
        order.apply(Fact::ShipmentBooked);
        assert_eq!(order.apply(failed(Cause::ShipmentFailed)), None);
        assert_eq!(
            order.cancel(Cause::CustomerRequest),
            Err(CancelRefused::Confirmed)
        );
        assert_eq!(order.status, Status::Confirmed);
    }

    #[test]
    fn a_customer_cancels_an_open_order_once_at_any_step() {
        for progress in [
            vec![],
            vec![Fact::Paid],
            vec![Fact::Paid, Fact::StockReserved],
        ] {
            let mut order = Order::placed();
            for fact in progress {
                order.apply(fact);
            }
            assert_eq!(
                order.cancel(Cause::CustomerRequest),
                Ok(Some(Announcement::Cancelled {
                    reason: "customer_request".to_owned()
                }))
            );
            assert_eq!(order.cancelled_by, Some(Cause::CustomerRequest));
            assert_eq!(order.cancel(Cause::CustomerRequest), Ok(None), "idempotent");
            assert_eq!(order.cancel(Cause::DeadlineExceeded), Ok(None));
        }
    }

    #[test]
    fn a_booking_after_the_cancellation_leaves_the_order_cancelled() {
        let mut order = Order::placed();
        order.apply(Fact::Paid);
        order.apply(Fact::StockReserved);
        order.cancel(Cause::CustomerRequest).expect("open");
        assert_eq!(order.apply(Fact::ShipmentBooked), None);
        assert_eq!(order.status, Status::Cancelled);
        order.apply(Fact::Refunded);
        order.apply(Fact::StockReleased);
        assert!(!order.settled(), "the booking is not known to be cancelled");
        order.apply(Fact::ShipmentUndone);
        assert!(order.settled());
    }

    #[test]
    fn an_expired_order_says_so() {
        let mut order = Order::placed();
        assert_eq!(
            order.cancel(Cause::DeadlineExceeded),
            Ok(Some(Announcement::Cancelled {
                reason: "deadline_exceeded".to_owned()
            }))
        );
        all_voided(&mut order);
        assert!(order.settled());
    }
}
