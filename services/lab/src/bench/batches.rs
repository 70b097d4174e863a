//! How many deliveries each service applied per transaction: its `shop_consumer_batch_size`
//! histogram, read before and after the run, the difference summarised.

use std::collections::BTreeMap;

use super::processes::*;

/// A service's batches over the run.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct BatchFigures {
    pub(super) batches: u64,
    pub(super) mean: f64,
    /// The bucket bounds these fall in: exact up to 32 (one bucket per size), coarser above.
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

/// Cumulative bucket counts by upper bound, and the sum, of one service (its replicas added).
#[derive(Debug, Clone, Default)]
pub(super) struct BatchHistogram {
    buckets: BTreeMap<u64, u64>,
    sum: f64,
}

const SERIES: &str = "shop_consumer_batch_size";

impl BatchHistogram {
    /// Adds what one `/metrics` text says.
    pub(super) fn add(&mut self, metrics: &str) {
        for line in metrics.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if series == format!("{SERIES}_sum") {
                self.sum += value;
            } else if let Some(bound) = series
                .strip_prefix(SERIES)
                .and_then(|rest| rest.strip_prefix("_bucket{le=\""))
                .and_then(|rest| rest.strip_suffix("\"}"))
                .and_then(|bound| bound.parse::<f64>().ok())
            {
                // +Inf is left out: every batch is within the largest finite bucket.
                if bound.is_finite() {
                    *self.buckets.entry(bound as u64).or_default() += value as u64;
                }
            }
        }
    }

    /// What happened between `before` and `self`; `None` without a batch.
    pub(super) fn since(&self, before: &Self) -> Option<BatchFigures> {
        let counts: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .map(|(&bound, &n)| {
                let earlier = before.buckets.get(&bound).copied().unwrap_or(0);
                (bound, n.saturating_sub(earlier))
            })
            .collect();
        let batches = counts.last()?.1;
        if batches == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = (q * batches as f64).ceil().max(1.0) as u64;
            counts
                .iter()
                .find(|(_, cumulative)| *cumulative >= rank)
                .map_or(0.0, |(bound, _)| *bound as f64)
        };
        Some(BatchFigures {
            batches,
            mean: round1((self.sum - before.sum) / batches as f64),
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: quantile(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;

    fn exposition(counts: &[(u64, u64)], sum: f64) -> String {
        let mut text = String::new();
        for (bound, n) in counts {
            let _ = writeln!(text, "{SERIES}_bucket{{le=\"{bound}\"}} {n}");
        }
        let total = counts.last().map_or(0, |(_, n)| *n);
        let _ = writeln!(text, "{SERIES}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(text, "{SERIES}_sum {sum}\n{SERIES}_count {total}");
        text
    }

    #[test]
    fn the_run_is_the_difference_of_two_readings_summed_over_replicas() {
        let mut before = BatchHistogram::default();
        before.add(&exposition(&[(1, 10), (2, 10), (4, 10)], 10.0));
        let mut after = BatchHistogram::default();
        // Two replicas: 100 batches of one, 98 of two, one of four, one of three, in all.
        after.add(&exposition(&[(1, 60), (2, 109), (4, 110)], 170.0));
        after.add(&exposition(&[(1, 50), (2, 99), (4, 100)], 150.0));
        let figures = after.since(&before).expect("batches ran");
        assert_eq!(figures.batches, 200);
        assert_eq!(figures.mean, 1.6);
        assert_eq!(figures.p50, 1.0);
        assert_eq!(figures.p99, 2.0);
        assert_eq!(figures.max, 4.0);
    }

    #[test]
    fn no_batch_no_figures() {
        let mut reading = BatchHistogram::default();
        reading.add(&exposition(&[(1, 3)], 3.0));
        assert!(reading.since(&reading.clone()).is_none());
    }
}
