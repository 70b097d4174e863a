//! Judging the run: each accepted order against the outcome its path must reach, and the
//! confirming SKU's sales against its stock.

use uuid::Uuid;

/// The outcome an order's path must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expected {
    Confirmed,
    /// Confirmed while [`CONFIRMING_SKU`] lasts; once it has run out, cancelled by the stock
    /// reservation.
    ConfirmedWhileStockLasts,
    /// Cancelled at one of these stages (the start of the order's cancellation reason).
    Cancelled(&'static [&'static str]),
    /// The customer asked to cancel and never got an answer: either outcome is right.
    ConfirmedOrCancelledByCustomer,
}

/// OrderCancelled's reason when the customer cancelled, and when the deadline did.
pub(super) const CUSTOMER_REQUEST: &str = "customer_request";
pub(super) const DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// An accepted order: its id, the outcome its path must reach, how many POSTs it took.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    pub(super) order_id: Uuid,
    pub(super) expected: Expected,
    pub(super) tries: u32,
}

/// How an order ended, as orders reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ended {
    pub(super) status: String,
    pub(super) reason: Option<String>,
}

/// [`CONFIRMING_SKU`]'s stock after the run, as inventory reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StockLevel {
    pub(super) seeded: i64,
    pub(super) available: i64,
}

/// The orders judged against their paths and the stock.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) lost: usize,
    pub(super) wrong_outcome: usize,
    /// Orders that wanted a unit of [`CONFIRMING_SKU`].
    pub(super) wanted: usize,
    /// Of those, confirmed (each sold one unit) and cancelled for want of stock.
    pub(super) sold: usize,
    pub(super) refused_for_stock: usize,
    /// Orders cancelled by their customer, and orders expired at their deadline (any order may
    /// be: the deadline ends a saga the faults stalled).
    pub(super) cancelled_by_customer: usize,
    pub(super) expired: usize,
    /// How the stock does not add up, if it does not: first come, first served means exactly
    /// `min(seeded, wanted)` units sold, and the rest still available.
    pub(super) stock_mismatch: Option<String>,
}

/// Judges each accepted order (`None`: orders does not know it) against its path, and the
/// confirming SKU's sales against its stock. Pure, so its rules are unit-tested.
pub(super) fn judge(orders: &[(Expected, Option<Ended>)], stock: StockLevel) -> Verdict {
    const STOCK_FAILURE: &str = "stock reservation failed";
    let mut verdict = Verdict::default();
    for (expected, ended) in orders {
        let Some(ended) = ended else {
            verdict.lost += 1;
            continue;
        };
        let cancelled_at = |stage: &str| {
            ended.status == "cancelled"
                && ended
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(stage))
        };
        if cancelled_at(DEADLINE_EXCEEDED) {
            verdict.expired += 1;
            continue;
        }
        if cancelled_at(CUSTOMER_REQUEST) {
            verdict.cancelled_by_customer += 1;
        }
        let as_expected = match expected {
            Expected::Confirmed => ended.status == "confirmed",
            Expected::Cancelled(stages) => stages.iter().any(|stage| cancelled_at(stage)),
            Expected::ConfirmedOrCancelledByCustomer => {
                ended.status == "confirmed" || cancelled_at(CUSTOMER_REQUEST)
            }
            Expected::ConfirmedWhileStockLasts => {
                verdict.wanted += 1;
                if ended.status == "confirmed" {
                    verdict.sold += 1;
                    true
                } else if cancelled_at(STOCK_FAILURE) {
                    verdict.refused_for_stock += 1;
                    true
                } else {
                    false
                }
            }
        };
        if !as_expected {
            verdict.wrong_outcome += 1;
        }
    }
    // Orders that ended otherwise are wrong already; the stock is judged on those that got
    // inventory's answer.
    let answered = verdict.sold + verdict.refused_for_stock;
    let seeded = usize::try_from(stock.seeded).unwrap_or(0);
    let should_sell = seeded.min(answered);
    let left = stock.seeded - i64::try_from(verdict.sold).unwrap_or(i64::MAX);
    if verdict.sold != should_sell || stock.available != left {
        verdict.stock_mismatch = Some(format!(
            "{answered} orders asked for one of {seeded} units: {should_sell} should be sold, \
             {} were, and {left} should be left, {} are",
            verdict.sold, stock.available
        ));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(status: &str, reason: Option<&str>) -> Option<Ended> {
        Some(Ended {
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
        })
    }

    fn confirmed() -> Option<Ended> {
        ended("confirmed", None)
    }

    fn out_of_stock() -> Option<Ended> {
        ended(
            "cancelled",
            Some("stock reservation failed: STICKER-001: requested 1, available 0"),
        )
    }

    fn wanting(outcomes: Vec<Option<Ended>>) -> Vec<(Expected, Option<Ended>)> {
        outcomes
            .into_iter()
            .map(|ended| (Expected::ConfirmedWhileStockLasts, ended))
            .collect()
    }

    #[test]
    fn a_run_wanting_more_than_the_stock_sells_exactly_the_stock_and_refuses_the_rest() {
        let orders = wanting(vec![
            confirmed(),
            out_of_stock(),
            confirmed(),
            confirmed(),
            out_of_stock(),
            confirmed(),
        ]);
        let verdict = judge(
            &orders,
            StockLevel {
                seeded: 4,
                available: 0,
            },
        );
        assert_eq!(
            verdict,
            Verdict {
                wanted: 6,
                sold: 4,
                refused_for_stock: 2,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn a_run_within_the_stock_sells_one_unit_per_order_and_leaves_the_rest() {
        let orders = wanting(vec![confirmed(), confirmed()]);
        let verdict = judge(
            &orders,
            StockLevel {
                seeded: 10,
                available: 8,
            },
        );
        assert_eq!(verdict.stock_mismatch, None);
        assert_eq!((verdict.sold, verdict.refused_for_stock), (2, 0));
    }

    #[test]
    fn overselling_or_refusing_while_units_are_left_does_not_add_up() {
        let oversold = judge(
            &wanting(vec![confirmed(), confirmed(), confirmed()]),
            StockLevel {
                seeded: 2,
                available: 0,
            },
        );
        assert!(oversold.stock_mismatch.is_some(), "{oversold:?}");
        let refused_too_early = judge(
            &wanting(vec![confirmed(), out_of_stock()]),
            StockLevel {
                seeded: 2,
                available: 1,
            },
        );
        assert!(
            refused_too_early.stock_mismatch.is_some(),
            "{refused_too_early:?}"
        );
        assert_eq!(refused_too_early.wrong_outcome, 0);
    }

    #[test]
    fn a_customer_cancel_commits_to_its_answer_and_the_deadline_may_end_any_order() {
        let by_customer = || ended("cancelled", Some(CUSTOMER_REQUEST));
        let expired = || ended("cancelled", Some(DEADLINE_EXCEEDED));
        let accepted = Expected::Cancelled(&[CUSTOMER_REQUEST]);
        let orders = vec![
            (accepted, by_customer()),
            // A cancel answered 409 means the confirmation had committed.
            (Expected::Confirmed, confirmed()),
            (Expected::ConfirmedOrCancelledByCustomer, confirmed()),
            (Expected::ConfirmedOrCancelledByCustomer, by_customer()),
            (Expected::Confirmed, expired()),
            (Expected::ConfirmedWhileStockLasts, expired()),
            // Wrong: accepted but confirmed; cancelled by a customer who never asked.
            (accepted, confirmed()),
            (Expected::Confirmed, by_customer()),
        ];
        let verdict = judge(
            &orders,
            StockLevel {
                seeded: 5,
                available: 5,
            },
        );
        assert_eq!(verdict.expired, 2);
        assert_eq!(verdict.cancelled_by_customer, 3);
        assert_eq!(verdict.wrong_outcome, 2);
        assert_eq!(verdict.stock_mismatch, None);
    }

    #[test]
    fn unknown_orders_are_lost_and_other_endings_are_wrong() {
        let declined = Expected::Cancelled(&["payment failed"]);
        let unserved = Expected::Cancelled(&["shipment failed", "stock reservation failed"]);
        let orders = vec![
            (declined, None),
            (
                declined,
                ended("cancelled", Some("payment failed: card declined")),
            ),
            (declined, ended("cancelled", Some("shipment failed: AQ"))),
            (unserved, ended("cancelled", Some("shipment failed: AQ"))),
            (unserved, out_of_stock()),
            (unserved, confirmed()),
            (
                Expected::Confirmed,
                ended("cancelled", Some("payment failed: x")),
            ),
            (
                Expected::ConfirmedWhileStockLasts,
                ended("cancelled", Some("payment failed: x")),
            ),
            (Expected::ConfirmedWhileStockLasts, ended("pending", None)),
        ];
        let verdict = judge(
            &orders,
            StockLevel {
                seeded: 5,
                available: 5,
            },
        );
        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.wrong_outcome, 5);
        assert_eq!(verdict.wanted, 2);
        assert_eq!(verdict.stock_mismatch, None);
    }
}
