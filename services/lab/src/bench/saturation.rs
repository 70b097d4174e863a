//! Saturation and the soak.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use shop::registry;
use sqlx::PgPool;

use super::figures::*;
use super::load::*;
use super::options::*;
use super::processes::*;
use super::target::*;
use super::tracker::*;

/// Offers rising rates (×1.3 from 50/s) until the shop falls behind, then narrows the gap
/// twice; each step 20 s of load. Stops stepping after 6 minutes, so it ends within 8.
pub(super) async fn saturate(
    target: &Target,
    watch: &Watch,
    http: &reqwest::Client,
    progress: &ProgressBar,
) -> (Option<Offered>, Vec<Offered>) {
    const STEP: Duration = Duration::from_secs(20);
    let budget = Instant::now() + Duration::from_secs(360);
    let mut steps: Vec<Offered> = Vec::new();
    let mut best: Option<Offered> = None;
    let mut failed_at: Option<f64> = None;
    let mut rate = 50.0;
    let mut first = 0;
    let mut narrowings = 0;
    while Instant::now() < budget {
        let before = Counters::read(target, http).await;
        let mut result = offer(target, watch, http, rate, STEP, first, progress).await;
        first += result.sent;
        note(
            progress,
            format!(
                "{rate:>6.0}/s offered: {} shed, {:.1}/s settled, p50 {} ms, p99 {} ms{}",
                result.shed,
                result.settled_per_s,
                result.latency_ms.p50,
                result.latency_ms.p99,
                if result.kept_up {
                    ""
                } else {
                    "  (fell behind)"
                }
            ),
        );
        // Let what is left in flight finish before the next step.
        let settle_deadline = Instant::now() + DRAIN_TIME;
        while watch.with(|t| t.in_flight()) > 0 && Instant::now() < settle_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let (Some(before), Some(after)) = (before, Counters::read(target, http).await) {
            (result.per_order, result.batch) = after.since(&before, result.settled);
        }
        if result.kept_up {
            best = Some(result.clone());
        } else {
            failed_at = Some(rate);
        }
        steps.push(result);
        let good = best.as_ref().map_or(0.0, |b| b.offered_per_s);
        rate = match failed_at {
            None => rate * 1.3,
            Some(bad) if narrowings < 2 && bad - good > 10.0 => {
                narrowings += 1;
                (good + bad) / 2.0
            }
            Some(_) => break,
        };
    }
    (best, steps)
}

/// One minute of the soak.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct SoakMinute {
    pub(super) minute: u32,
    /// Seconds of load in this minute (the last may be shorter).
    pub(super) seconds: f64,
    pub(super) settled: u64,
    pub(super) p99_ms: f64,
    pub(super) rss_mib: BTreeMap<String, f64>,
    /// Per service: outbox and inbox rows and bytes.
    pub(super) tables: BTreeMap<String, TableSizes>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct TableSizes {
    pub(super) outbox_rows: i64,
    pub(super) outbox_bytes: i64,
    pub(super) inbox_rows: i64,
    pub(super) inbox_bytes: i64,
}

pub(super) async fn table_sizes(database: &PgPool) -> BTreeMap<String, TableSizes> {
    let mut sizes = BTreeMap::new();
    for schema in registry::names().filter(|name| measured(name)) {
        let row: Result<(i64, i64, i64, i64), _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {schema}.outbox),
                    pg_total_relation_size('{schema}.outbox'),
                    (SELECT count(*) FROM {schema}.inbox),
                    pg_total_relation_size('{schema}.inbox')"
        )))
        .fetch_one(database)
        .await;
        if let Ok((outbox_rows, outbox_bytes, inbox_rows, inbox_bytes)) = row {
            sizes.insert(
                schema.to_owned(),
                TableSizes {
                    outbox_rows,
                    outbox_bytes,
                    inbox_rows,
                    inbox_bytes,
                },
            );
        }
    }
    sizes
}

/// `orders` orders at `rate`, one minute at a time: what each minute looked like, and the
/// whole soak as one run.
pub(super) async fn soak(
    target: &Target,
    watch: &Watch,
    http: &reqwest::Client,
    rate: f64,
    orders: u64,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<SoakMinute>, Offered)> {
    let minutes = (orders as f64 / rate / 60.0).ceil().max(1.0) as u32;
    let mut report = Vec::new();
    let mut whole: Option<Offered> = None;
    let mut whole_latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut first = 0;
    for minute in 1..=minutes {
        let left = orders - first;
        let seconds = (left as f64 / rate).min(60.0);
        let result = offer(
            target,
            watch,
            http,
            rate,
            Duration::from_secs_f64(seconds),
            first,
            progress,
        )
        .await;
        first += result.sent;
        watch.with(|t| whole_latency.add(&t.latency_us))?;
        whole = Some(match whole {
            None => result.clone(),
            Some(so_far) => so_far.and(&result),
        });
        let rss_mib = target
            .services()
            .into_iter()
            .map(|s| {
                let kib: u64 = s.pids.iter().filter_map(|p| status_kib(*p, "VmRSS")).sum();
                (s.name, round1(kib as f64 / 1024.0))
            })
            .collect();
        let tables = match &target.database {
            Some(database) => table_sizes(database).await,
            None => BTreeMap::new(),
        };
        let line = SoakMinute {
            minute,
            seconds: result.duration_s,
            settled: result.settled,
            p99_ms: result.latency_ms.p99,
            rss_mib,
            tables,
        };
        note(progress, soak_line(&line));
        report.push(line);
    }
    let mut whole = whole.context("the soak ran no minute")?;
    whole.latency_ms = Latency::of(&whole_latency);
    Ok((report, whole))
}

pub(super) fn soak_line(minute: &SoakMinute) -> String {
    let rss: Vec<String> = minute
        .rss_mib
        .iter()
        .map(|(name, mib)| format!("{name} {mib}"))
        .collect();
    let tables: Vec<String> = minute
        .tables
        .iter()
        .map(|(name, t)| {
            format!(
                "{name} {}/{} KiB out, {}/{} KiB in",
                t.outbox_rows,
                t.outbox_bytes / 1024,
                t.inbox_rows,
                t.inbox_bytes / 1024
            )
        })
        .collect();
    format!(
        "minute {:>3}: {} settled, p99 {} ms | RSS MiB: {} | rows/size: {}",
        minute.minute,
        minute.settled,
        minute.p99_ms,
        rss.join(", "),
        tables.join("; ")
    )
}
