//! The summary of a run: its figures, as text and as JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use super::batches::*;
use super::ceilings::*;
use super::figures::*;
use super::options::*;
use super::processes::*;
use super::saturation::*;

#[derive(Debug, serde::Serialize)]
pub(super) struct Summary {
    pub(super) mode: &'static str,
    pub(super) mix: String,
    pub(super) offered_per_s: f64,
    pub(super) settled_per_s: f64,
    pub(super) latency_ms: Latency,
    pub(super) outcomes: BTreeMap<String, u64>,
    pub(super) run: Offered,
    /// The shop's own services.
    pub(super) services: BTreeMap<String, ProcessFigures>,
    /// RabbitMQ, Postgres and this load generator, apart from the shop.
    pub(super) infrastructure: BTreeMap<String, ProcessFigures>,
    /// The whole machine over the same window (softirq: mostly loopback networking).
    pub(super) machine_cpu: MachineCpu,
    pub(super) ceiling: Option<Ceilings>,
    /// Per settled order, measured (our own shop only).
    pub(super) per_order: Option<PerOrder>,
    /// Deliveries applied per transaction, by service (our own shop only).
    pub(super) batch: BTreeMap<String, BatchFigures>,
    pub(super) ratio: Option<Ratios>,
    pub(super) saturation_steps: Vec<Offered>,
    pub(super) soak: Vec<SoakMinute>,
}

/// The shop's work per second as a share of what bare RabbitMQ and Postgres manage.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Ratios {
    pub(super) deliveries_of_broker_ceiling: f64,
    pub(super) transactions_of_db_ceiling: f64,
}

pub(super) fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let run = &summary.run;
    let l = &summary.latency_ms;
    let _ = writeln!(out, "\n==== shop bench ({}) ====", summary.mode);
    let _ = writeln!(out, "mix:                 {}", summary.mix);
    let _ = writeln!(
        out,
        "offered:             {:.0} orders/s for {} s ({} sent, {} accepted, {} shed, {} refused)",
        run.offered_per_s, run.duration_s, run.sent, run.accepted, run.shed, run.refused
    );
    let _ = writeln!(
        out,
        "settled:             {} orders, {:.1}/s{}",
        run.settled,
        run.settled_per_s,
        if run.unsettled > 0 {
            format!(" ({} not settled within {DRAIN_TIME:?})", run.unsettled)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "placed -> settled:   p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    let outcomes: Vec<String> = summary
        .outcomes
        .iter()
        .map(|(outcome, n)| format!("{outcome} {n}"))
        .collect();
    let _ = writeln!(out, "outcomes:            {}", outcomes.join(", "));
    for (title, group) in [
        ("services", &summary.services),
        ("infrastructure", &summary.infrastructure),
    ] {
        let _ = writeln!(out, "{title}:");
        for (name, p) in group {
            let _ = writeln!(
                out,
                "  {name:<15} CPU {:>5.1}%  RSS {:>6.1} MiB (peak {:.1})",
                p.cpu_pct, p.rss_mib, p.peak_rss_mib
            );
        }
    }
    let m = &summary.machine_cpu;
    let _ = writeln!(
        out,
        "machine:             {:.0}% busy (user {}%, system {}%, softirq {}%, iowait {}%, steal {}%)",
        m.busy_pct, m.user_pct, m.system_pct, m.softirq_pct, m.iowait_pct, m.steal_pct
    );
    if let Some(per_order) = &summary.per_order {
        let _ = writeln!(
            out,
            "per settled order:   {} transactions, {} deliveries, {} parked, {} sent to a retry queue{}",
            per_order.transactions,
            per_order.deliveries,
            per_order.parked,
            per_order.retried,
            if summary.mode == "saturate" {
                " (in the step kept up)"
            } else {
                ""
            }
        );
    }
    if !summary.batch.is_empty() {
        let _ = writeln!(out, "deliveries per transaction (batches):");
        for (service, b) in &summary.batch {
            let _ = writeln!(
                out,
                "  {service:<15} {} batches, mean {}, p50 {}, p99 {}, max {}",
                b.batches, b.mean, b.p50, b.p99, b.max
            );
        }
    }
    if let Some(ceiling) = &summary.ceiling {
        let _ = writeln!(
            out,
            "machine ceilings:    RabbitMQ {:.0} msgs/s, Postgres {:.0} saga-step tx/s ({} at once)",
            ceiling.broker_msgs_per_s, ceiling.db_tx_per_s, ceiling.concurrency
        );
    }
    if let Some(ratio) = &summary.ratio {
        let _ = writeln!(
            out,
            "shop / ceiling:      deliveries {:.1}% of RabbitMQ's, transactions {:.1}% of Postgres's",
            ratio.deliveries_of_broker_ceiling * 100.0,
            ratio.transactions_of_db_ceiling * 100.0
        );
    }
    if !summary.saturation_steps.is_empty() {
        let _ = writeln!(out, "saturation steps (20 s each):");
        for step in &summary.saturation_steps {
            let _ = writeln!(
                out,
                "  {:>5.0}/s offered -> {:>5.1}/s accepted, {:>5.1}/s shed, {:>5.1}/s settled, p50 {} ms, p99 {} ms{}",
                step.offered_per_s,
                step.accepted as f64 / step.duration_s.max(0.001),
                step.shed as f64 / step.duration_s.max(0.001),
                step.settled_per_s,
                step.latency_ms.p50,
                step.latency_ms.p99,
                if step.kept_up { "" } else { "  fell behind" }
            );
        }
    }
    if !summary.soak.is_empty() {
        let _ = writeln!(out, "soak, minute by minute:");
        for minute in &summary.soak {
            let _ = writeln!(out, "  {}", soak_line(minute));
        }
    }
    // A last minute cut short (the orders ran out) holds too few orders to compare.
    let full = |m: &&SoakMinute| m.seconds >= 59.0;
    if let (Some(first), Some(last)) = (
        summary.soak.iter().find(full),
        summary.soak.iter().rev().find(full),
    ) {
        let _ = writeln!(
            out,
            "soak:                p99 first full minute {} ms, last full minute {} ms ({:.2}x)",
            first.p99_ms,
            last.p99_ms,
            last.p99_ms / first.p99_ms.max(0.001)
        );
    }
    out
}
