//! One order's saga, orchestrated: the whole flow in one place, free of I/O.
//!
//! ```text
//! OrderPlaced ─▶ ChargePayment ─▶ ReserveStock ─▶ BookShipment ─▶ ConfirmOrder ─▶ confirmed
//!                      │                │               │
//!                   failed           failed          failed
//!                      ▼                ▼               ▼
//!                 CancelOrder ─▶ (OrderCancelled) ─▶ walk back what ran, last first:
//!                 CancelShipment ─▶ ReleaseStock ─▶ RefundPayment ─▶ SettleOrder ─▶ cancelled
//! ```
//!
//! A step is asked for only once the one before it succeeded, and a walk-back undoes one step
//! at a time, waiting for each answer. The customer's cancellation (orders announces
//! OrderCancelled) and the saga's own deadline walk back every step asked for, the one in
//! flight included: its service records that it will never act on the order, so a command
//! that arrives late changes nothing (the same decisions as in the choreography).
//!
//! Orders alone decides between a confirmation and a cancellation (it holds the order's lock),
//! so the saga confirms or cancels only by asking, and follows what orders announced.

use shared_events::CancelCause;

/// The steps of the money flow, in the order they are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Payment,
    Stock,
    Shipment,
}

pub const STEPS: [Step; 3] = [Step::Payment, Step::Stock, Step::Shipment];

impl Step {
    /// What a failure of this step cancels the order for.
    fn failure(self) -> CancelCause {
        match self {
            Step::Payment => CancelCause::PaymentFailed,
            Step::Stock => CancelCause::StockReservationFailed,
            Step::Shipment => CancelCause::ShipmentFailed,
        }
    }
}

/// Where a saga is, stored as the enum type `saga.saga_phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "saga_phase", rename_all = "snake_case")]
pub enum Phase {
    /// Taking the steps: the last one asked for has not answered yet.
    Running,
    /// Every step is done; orders was asked to confirm.
    Confirming,
    /// A step failed or the deadline passed; orders was asked to cancel.
    Cancelling,
    /// The order is cancelled; the steps are being walked back.
    Compensating,
    Confirmed,
    /// Cancelled, and every step that ran walked back.
    Cancelled,
}

/// What the saga hears: the participants' answers and orders' decisions, as events, and its
/// own deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Succeeded(Step),
    Failed(Step, String),
    /// The step's undo answered (refunded or voided, released or voided, cancelled or voided).
    Undone(Step),
    OrderConfirmed,
    /// By the customer, or as this saga asked.
    OrderCancelled,
    DeadlinePassed,
}

/// What the saga asks for next: one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Take(Step),
    Undo(Step),
    Confirm,
    Cancel { cause: CancelCause, reason: String },
    Settle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saga {
    pub phase: Phase,
    /// Steps asked for: `STEPS[..taken]`.
    pub taken: usize,
    /// Steps still to walk back, the last first: `STEPS[..to_undo]`.
    pub to_undo: usize,
}

impl Saga {
    /// A placed order: charge it first.
    pub fn start() -> (Self, Ask) {
        let saga = Self {
            phase: Phase::Running,
            taken: 1,
            to_undo: 0,
        };
        (saga, Ask::Take(Step::Payment))
    }

    /// Moves the saga on `input`; returns the command it calls for, if any. An input that
    /// does not fit the phase (late, or a copy) changes nothing.
    pub fn on(&mut self, input: Input) -> Option<Ask> {
        match (self.phase, input) {
            (Phase::Running, Input::Succeeded(step)) if self.in_flight() == Some(step) => {
                match STEPS.get(self.taken) {
                    Some(next) => {
                        self.taken += 1;
                        Some(Ask::Take(*next))
                    }
                    None => {
                        self.phase = Phase::Confirming;
                        Some(Ask::Confirm)
                    }
                }
            }
            (Phase::Running, Input::Failed(step, reason)) if self.in_flight() == Some(step) => {
                // The failed step did nothing; the ones before it are walked back.
                self.cancel(self.taken - 1, step.failure(), reason)
            }
            (Phase::Running, Input::DeadlinePassed) => {
                self.cancel(self.taken, CancelCause::DeadlineExceeded, String::new())
            }
            (Phase::Running | Phase::Confirming, Input::OrderCancelled) => {
                // The customer's cancellation: everything asked for goes back.
                self.to_undo = self.taken;
                self.walk_back()
            }
            (Phase::Cancelling, Input::OrderCancelled) => self.walk_back(),
            (Phase::Compensating, Input::Undone(step))
                if self.to_undo > 0 && STEPS[self.to_undo - 1] == step =>
            {
                self.to_undo -= 1;
                self.walk_back()
            }
            (Phase::Confirming, Input::OrderConfirmed) => {
                self.phase = Phase::Confirmed;
                None
            }
            _ => None,
        }
    }

    /// Whether the saga is over (its order is confirmed, or cancelled and walked back).
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Confirmed | Phase::Cancelled)
    }

    fn in_flight(&self) -> Option<Step> {
        self.taken.checked_sub(1).map(|last| STEPS[last])
    }

    fn cancel(&mut self, to_undo: usize, cause: CancelCause, reason: String) -> Option<Ask> {
        self.phase = Phase::Cancelling;
        self.to_undo = to_undo;
        Some(Ask::Cancel { cause, reason })
    }

    /// Asks for the next undo, or, with nothing left to undo, for the order to be settled.
    fn walk_back(&mut self) -> Option<Ask> {
        match self.to_undo.checked_sub(1) {
            Some(last) => {
                self.phase = Phase::Compensating;
                Some(Ask::Undo(STEPS[last]))
            }
            None => {
                self.phase = Phase::Cancelled;
                Some(Ask::Settle)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `inputs` to a new saga; returns it and every command it asked for.
    fn run(inputs: Vec<Input>) -> (Saga, Vec<Ask>) {
        let (mut saga, first) = Saga::start();
        let mut asked = vec![first];
        for input in inputs {
            asked.extend(saga.on(input));
        }
        (saga, asked)
    }

    fn cancel(cause: CancelCause, reason: &str) -> Ask {
        Ask::Cancel {
            cause,
            reason: reason.to_owned(),
        }
    }

    use Input::*;
    use Step::*;

    #[test]
    fn the_happy_path_takes_each_step_in_turn_then_confirms() {
        let (saga, asked) = run(vec![
            Succeeded(Payment),
            Succeeded(Stock),
            Succeeded(Shipment),
            OrderConfirmed,
        ]);
        assert_eq!(
            asked,
            [
                Ask::Take(Payment),
                Ask::Take(Stock),
                Ask::Take(Shipment),
                Ask::Confirm
            ]
        );
        assert_eq!(saga.phase, Phase::Confirmed);
        assert!(saga.is_over());
    }

    #[test]
    fn a_declined_payment_cancels_with_nothing_to_walk_back() {
        let (saga, asked) = run(vec![
            Failed(Payment, "card declined".into()),
            OrderCancelled,
        ]);
        assert_eq!(
            asked,
            [
                Ask::Take(Payment),
                cancel(CancelCause::PaymentFailed, "card declined"),
                Ask::Settle
            ]
        );
        assert_eq!(saga.phase, Phase::Cancelled);
    }

    #[test]
    fn a_failed_shipment_walks_back_stock_then_payment() {
        let (saga, asked) = run(vec![
            Succeeded(Payment),
            Succeeded(Stock),
            Failed(Shipment, "no carrier".into()),
            OrderCancelled,
            Undone(Payment), // out of turn: the stock goes back first
            Undone(Stock),
            Undone(Payment),
        ]);
        assert_eq!(
            asked[3..],
            [
                cancel(CancelCause::ShipmentFailed, "no carrier"),
                Ask::Undo(Stock),
                Ask::Undo(Payment),
                Ask::Settle
            ]
        );
        assert_eq!(saga.phase, Phase::Cancelled);
    }

    #[test]
    fn the_customers_cancellation_walks_back_the_step_in_flight_too() {
        let (saga, asked) = run(vec![
            Succeeded(Payment),
            OrderCancelled,
            Succeeded(Stock), // the reservation in flight answered late: it is undone anyway
            Undone(Stock),
            Undone(Payment),
        ]);
        assert_eq!(
            asked[2..],
            [Ask::Undo(Stock), Ask::Undo(Payment), Ask::Settle]
        );
        assert_eq!(saga.phase, Phase::Cancelled);
    }

    #[test]
    fn a_cancellation_that_beats_the_confirmation_walks_back_all_three() {
        let (saga, asked) = run(vec![
            Succeeded(Payment),
            Succeeded(Stock),
            Succeeded(Shipment),
            OrderCancelled,
            Undone(Shipment),
            Undone(Stock),
            Undone(Payment),
        ]);
        assert_eq!(
            asked[3..],
            [
                Ask::Confirm,
                Ask::Undo(Shipment),
                Ask::Undo(Stock),
                Ask::Undo(Payment),
                Ask::Settle
            ]
        );
        assert_eq!(saga.phase, Phase::Cancelled);
    }

    #[test]
    fn the_deadline_cancels_a_running_saga_only() {
        let (saga, asked) = run(vec![DeadlinePassed, Succeeded(Payment), OrderCancelled]);
        assert_eq!(
            asked[1..],
            [
                cancel(CancelCause::DeadlineExceeded, ""),
                Ask::Undo(Payment)
            ]
        );
        assert_eq!(saga.phase, Phase::Compensating);

        let (confirming, asked) = run(vec![
            Succeeded(Payment),
            Succeeded(Stock),
            Succeeded(Shipment),
            DeadlinePassed,
        ]);
        assert_eq!(asked.last(), Some(&Ask::Confirm), "orders decides");
        assert_eq!(confirming.phase, Phase::Confirming);
    }

    #[test]
    fn copies_and_late_answers_change_nothing() {
        let (saga, asked) = run(vec![
            Succeeded(Payment),
            Succeeded(Payment),
            Failed(Payment, "late".into()),
            Undone(Payment),
            OrderConfirmed,
        ]);
        assert_eq!(asked, [Ask::Take(Payment), Ask::Take(Stock)]);
        assert_eq!((saga.phase, saga.taken), (Phase::Running, 2));

        let (over, asked) = run(vec![
            Failed(Payment, "x".into()),
            OrderCancelled,
            OrderCancelled,
        ]);
        assert_eq!(asked.len(), 3, "settled once");
        assert!(over.is_over());
    }
}
