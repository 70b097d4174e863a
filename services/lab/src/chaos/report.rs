//! What the run did and whether the shop kept its promises, as printed.

use std::{collections::BTreeMap, fmt, time::Duration};

use shop::audit;

use super::network;
use super::options::*;
use super::verdict::*;

/// What the faults step did.
pub(super) struct Faults {
    /// From the broker coming back to the probe's end, and that end (confirmed, or expired
    /// when the deadline is shorter than the recovery).
    pub(super) broker_recovery: Option<(Duration, &'static str)>,
    /// Per node lost (a cluster run): which node, why it was chosen, from its loss to the
    /// probe's end, and that end.
    pub(super) node_losses: Vec<(String, &'static str, Duration, &'static str)>,
    /// The orders placed right after the broker restart or each node loss to time the
    /// recovery: they are in the shop's books beside the load's orders, and judged with them.
    pub(super) probes: Vec<Placed>,
    pub(super) database_restarted: bool,
    pub(super) duplicates_injected: usize,
    /// The network faults of a `--network-faults` run, in order.
    pub(super) network: Vec<network::Observed>,
}

/// What the late joiner (step 7, `late_joiner`) learned.
pub(super) struct LateJoiner {
    /// The fault it caught up through ("broker restarted", "node … lost", or none).
    pub(super) fault: String,
    /// Whether the fault struck before the catch-up was done.
    pub(super) interrupted: bool,
    /// Events the shop's services announced, and those of them the console holds.
    pub(super) announced: usize,
    pub(super) heard: usize,
    /// Nodes keeping a replica of the history (a cluster run).
    pub(super) history_replicas: Option<usize>,
    pub(super) took: Duration,
}

impl LateJoiner {
    pub(super) fn kept_its_promise(&self) -> bool {
        self.heard == self.announced
            && (self.fault.is_empty() || self.interrupted)
            && self.history_replicas.is_none_or(|replicas| replicas == 3)
    }
}

/// What happened, and whether the shop kept its promises.
pub struct Report {
    pub(super) orders: usize,
    pub(super) replicas: u16,
    pub(super) placed: usize,
    pub(super) retried_posts: u32,
    pub(super) stops: Vec<(&'static str, usize, usize)>,
    pub(super) faults: Faults,
    pub(super) absorbed: BTreeMap<&'static str, i64>,
    pub(super) settled_in: Duration,
    pub(super) verdict: Verdict,
    pub(super) stock: StockLevel,
    pub(super) audit: audit::Report,
    /// The console rebuilt from the history after the run (unless `--no-late-joiner`).
    pub(super) late_joiner: Option<LateJoiner>,
}

impl Report {
    /// Effects applied more than once: violations of the money, stock, shipment and notice
    /// invariants.
    pub(super) fn applied_twice(&self) -> usize {
        self.audit
            .violations
            .iter()
            .filter(|v| matches!(v.invariant, 2..=5))
            .count()
    }

    pub fn promises_kept(&self) -> bool {
        self.verdict.lost == 0
            && self.verdict.wrong_outcome == 0
            && self.verdict.stock_mismatch.is_none()
            && self.audit.is_clean()
            && self
                .late_joiner
                .as_ref()
                .is_none_or(LateJoiner::kept_its_promise)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n==== chaos report ====")?;
        writeln!(
            f,
            "orders placed:            {} of {} ({} POSTs retried with their Idempotency-Key)",
            self.placed, self.orders, self.retried_posts
        )?;
        let stops: Vec<_> = self
            .stops
            .iter()
            .map(|(name, kills, terms)| format!("{name} {kills}/{terms}"))
            .collect();
        writeln!(
            f,
            "stops and restarts:       {} (SIGKILL/SIGTERM, of {} replica(s) each)",
            stops.join(", "),
            self.replicas
        )?;
        match self.faults.broker_recovery {
            Some((recovery, outcome)) => writeln!(
                f,
                "broker restart:           back up -> first order {outcome} in {:.1}s",
                recovery.as_secs_f64()
            )?,
            None if self.faults.node_losses.is_empty() => {
                writeln!(f, "broker restart:           skipped")?;
            }
            None => {}
        }
        for (node, why, recovery, outcome) in &self.faults.node_losses {
            writeln!(
                f,
                "node lost:                {node} ({why}) -> first order {outcome} in {:.1}s",
                recovery.as_secs_f64()
            )?;
        }
        let database = if self.faults.database_restarted {
            "done"
        } else {
            "skipped"
        };
        writeln!(f, "database restart:         {database}")?;
        for observed in &self.faults.network {
            let noticed = observed.noticed.map_or("not reported".to_owned(), |after| {
                format!("not ready after {:.1}s", after.as_secs_f64())
            });
            writeln!(
                f,
                "network fault:            {} for {:.0}s: {noticed}; healed -> every earlier order \
                 settled in {:.1}s, a new one {} in {:.1}s",
                observed.fault,
                observed.held.as_secs_f64(),
                observed.settled.as_secs_f64(),
                observed.outcome,
                observed.recovered.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "duplicates injected:      {}",
            self.faults.duplicates_injected
        )?;
        let absorbed: Vec<_> = self
            .absorbed
            .iter()
            .map(|(service, n)| format!("{service} {n}"))
            .collect();
        writeln!(
            f,
            "duplicates absorbed:      {} ({})",
            self.absorbed.values().sum::<i64>(),
            absorbed.join(", ")
        )?;
        writeln!(
            f,
            "settled after faults in:  {:.1}s",
            self.settled_in.as_secs_f64()
        )?;
        let verdict = &self.verdict;
        writeln!(f, "orders lost:              {}", verdict.lost)?;
        writeln!(f, "orders with wrong outcome: {}", verdict.wrong_outcome)?;
        writeln!(
            f,
            "{CONFIRMING_SKU} stock:        {} seeded, {} orders wanted one: {} sold, {} \
             refused for stock, {} left",
            self.stock.seeded,
            verdict.wanted,
            verdict.sold,
            verdict.refused_for_stock,
            self.stock.available
        )?;
        writeln!(
            f,
            "cancelled by customers:   {} (the rest of those asked too late: confirmed, 409)",
            verdict.cancelled_by_customer
        )?;
        writeln!(f, "expired at the deadline:  {}", verdict.expired)?;
        if let Some(mismatch) = &verdict.stock_mismatch {
            writeln!(f, "STOCK DOES NOT ADD UP:    {mismatch}")?;
        }
        writeln!(f, "effects applied twice:    {}", self.applied_twice())?;
        if let Some(late) = &self.late_joiner {
            let through = match (late.fault.as_str(), late.interrupted) {
                ("", _) => "with no fault".to_owned(),
                (fault, true) => format!("through a fault ({fault} mid-catch-up)"),
                (fault, false) => format!("BEFORE the fault struck ({fault}): not proven"),
            };
            let replicas = late.history_replicas.map_or(String::new(), |n| {
                format!("; the history on {n} of 3 nodes")
            });
            writeln!(
                f,
                "late joiner:              the console, its schema dropped, caught up from the \
                 history {through} in {:.1}s: {} of {} announced events{replicas}",
                late.took.as_secs_f64(),
                late.heard,
                late.announced
            )?;
        }
        let probe = if !self.faults.probes.is_empty() {
            " (the load's orders and the probes placed after the broker and network faults)"
        } else {
            " (the load's orders)"
        };
        write!(f, "audit{probe}: {}", self.audit)
    }
}
