//! The figures a load produces: what it offered and what came of it, its latency, and its work
//! per settled order.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::batches::*;
use super::processes::*;

/// What one load did.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Offered {
    pub(super) offered_per_s: f64,
    pub(super) duration_s: f64,
    pub(super) sent: u64,
    pub(super) accepted: u64,
    /// Answered `503 overloaded`: shed by admission control (`MAX_PENDING_ORDERS`).
    pub(super) shed: u64,
    /// Any other answer, or none.
    pub(super) refused: u64,
    pub(super) settled: u64,
    pub(super) settled_per_s: f64,
    /// Orders not settled within [`DRAIN_TIME`] after the load stopped.
    pub(super) unsettled: u64,
    pub(super) latency_ms: Latency,
    pub(super) outcomes: BTreeMap<String, u64>,
    /// Whether the shop kept up: settled (nearly) all it was offered, at the rate offered.
    pub(super) kept_up: bool,
    /// A saturation step's own work per settled order and batches (the run's are reported
    /// at the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) per_order: Option<PerOrder>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) batch: BTreeMap<String, BatchFigures>,
}

impl Offered {
    /// Two loads one after the other, as one.
    pub(super) fn and(mut self, next: &Self) -> Self {
        self.duration_s = round1(self.duration_s + next.duration_s);
        self.sent += next.sent;
        self.accepted += next.accepted;
        self.shed += next.shed;
        self.refused += next.refused;
        self.settled += next.settled;
        self.unsettled += next.unsettled;
        self.settled_per_s = round1(self.settled as f64 / self.duration_s.max(0.001));
        for (outcome, n) in &next.outcomes {
            *self.outcomes.entry(outcome.clone()).or_default() += n;
        }
        self.kept_up &= next.kept_up;
        self.per_order = None;
        self.batch.clear();
        self
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Latency {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) max: f64,
}

impl Latency {
    pub(super) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| round1(micros as f64 / 1000.0);
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct PerOrder {
    pub(super) transactions: f64,
    pub(super) deliveries: f64,
    /// Deliveries parked: an event handled before the one it depends on had committed.
    pub(super) parked: f64,
    /// Deliveries sent to a retry queue (a transient failure).
    pub(super) retried: f64,
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
