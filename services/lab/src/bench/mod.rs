//! `shop bench`: how fast the saga runs end to end, measured from outside.
//!
//! An open-loop load (orders are sent on schedule whether or not earlier ones have settled, so
//! a shop that falls behind shows it as latency, not as a slower client) against the Orders
//! API; each order's latency from its OrderPlaced to its OrderConfirmed/OrderCancelled as seen
//! on the exchange, in an HDR histogram; each process's CPU and memory from /proc; and, in the
//! same run, the machine's ceilings: bare RabbitMQ and bare Postgres doing one saga step's work
//! at the same concurrency.
//!
//! The run reads as its steps: [`Target`] (start a shop, or find a running one), [`offer`]
//! (one load at one rate), [`saturate`] or [`soak`], [`ceilings`], then the [`Summary`].
//! `--history` measures the shop's history instead ([`measure_history`]).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use service_kit::Config;
use shop::registry;

mod batches;
mod ceilings;
mod compare;
mod figures;
mod history;
mod load;
mod mix;
mod options;
mod processes;
mod report;
mod saturation;
mod target;
mod tracker;

pub use compare::{CompareOptions, run as compare};
pub use options::BenchOptions;

use ceilings::*;
use figures::*;
use history::*;
use load::*;
use mix::*;
use processes::*;
use report::*;
use saturation::*;
use target::*;
use tracker::*;

// ---------------------------------------------------------------------------------------------
// The run and its summary.

pub async fn run(exe: &Path, options: BenchOptions) -> anyhow::Result<()> {
    if options.rate <= 0.0 || options.duration == 0 {
        bail!("--rate and --duration must be positive");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    eprintln!("starting the shop…");
    let mut target = Target::open(exe, &options, &http).await?;
    // Ctrl-C or SIGTERM still stops the services and removes the database and queues.
    let interrupted = service_kit::shutdown_on_signal();
    if options.history {
        let result = tokio::select! {
            result = history_mode(&options, &mut target, &http, &progress) => result,
            () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
        };
        progress.finish_and_clear();
        target.close().await;
        let figures = result?;
        print!("{}", render_history(&figures));
        if options.json {
            println!("{}", serde_json::to_string(&figures)?);
        }
        return Ok(());
    }
    let result = tokio::select! {
        result = measure(&options, &target, &http, &progress) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    progress.finish_and_clear();
    target.close().await;
    let summary = result?;
    print!("{}", render(&summary));
    if options.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

async fn history_mode(
    options: &BenchOptions,
    target: &mut Target,
    http: &reqwest::Client,
    progress: &ProgressBar,
) -> anyhow::Result<HistoryFigures> {
    let (watch, tap) = Watch::start(&target.amqp_url, &target.namespace)
        .await
        .context("cannot watch the shop's exchange")?;
    let figures = measure_history(options, target, &watch, http, progress).await;
    tap.close().await;
    figures
}

async fn measure(
    options: &BenchOptions,
    target: &Target,
    http: &reqwest::Client,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let (watch, tap) = Watch::start(&target.amqp_url, &target.namespace)
        .await
        .context("cannot watch the shop's exchange")?;
    let services = target.services();
    if services.iter().any(|s| s.pids.is_empty()) {
        note(
            progress,
            "some services' processes were not found: their figures read 0",
        );
    }
    let mut groups = services.clone();
    groups.extend(infrastructure());
    groups.push(Measured {
        name: "load_generator".to_owned(),
        pids: vec![std::process::id()],
    });
    let counted_before = Counters::read(target, http).await;
    let usage = Usage::start(groups);

    let (mode, run, saturation_steps, soak_minutes) = if options.saturate {
        let (best, steps) = saturate(target, &watch, http, progress).await;
        let run = best
            .or_else(|| steps.first().cloned())
            .context("no saturation step ran")?;
        ("saturate", run, steps, Vec::new())
    } else if options.soak {
        let (minutes, whole) = soak(
            target,
            &watch,
            http,
            options.rate,
            options.soak_orders,
            progress,
        )
        .await?;
        ("soak", whole, Vec::new(), minutes)
    } else {
        let run = offer(
            target,
            &watch,
            http,
            options.rate,
            Duration::from_secs(options.duration),
            0,
            progress,
        )
        .await;
        ("rate", run, Vec::new(), Vec::new())
    };
    let mut figures = usage.finish(&infrastructure());
    let machine_cpu = usage.machine();
    let counted_after = Counters::read(target, http).await;
    tap.close().await;

    // Transactions and deliveries are counted over every step or minute; at saturation, over
    // the step that set the figure (the earlier, slower steps batch less).
    let settled_total: u64 = if options.soak {
        soak_minutes.iter().map(|m| m.settled).sum()
    } else if options.saturate {
        saturation_steps.iter().map(|s| s.settled).sum()
    } else {
        run.settled
    };
    let (per_order, batch) = match (&counted_before, &counted_after) {
        _ if options.saturate && run.per_order.is_some() => {
            (run.per_order.clone(), run.batch.clone())
        }
        (Some(before), Some(after)) => after.since(before, settled_total),
        _ => (None, BTreeMap::new()),
    };
    let ceiling = if options.no_ceilings {
        None
    } else {
        note(progress, "measuring the machine's ceilings…");
        let database_url = match &target.own {
            Some(shop) => shop.sandbox.database_url.clone(),
            None => Config::from_env(registry::orders().default_addr)?.database_url,
        };
        Some(ceilings(&target.amqp_url, &target.namespace, &database_url).await?)
    };
    let ratio = match (&ceiling, &per_order) {
        (Some(ceiling), Some(per_order)) => Some(Ratios {
            deliveries_of_broker_ceiling: round3(
                run.settled_per_s * per_order.deliveries / ceiling.broker_msgs_per_s,
            ),
            transactions_of_db_ceiling: round3(
                run.settled_per_s * per_order.transactions / ceiling.db_tx_per_s,
            ),
        }),
        _ => None,
    };
    let service_names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let infrastructure_figures = figures
        .extract_if(.., |name, _| !service_names.contains(name))
        .collect();
    Ok(Summary {
        mode,
        mix: mix_description(),
        offered_per_s: run.offered_per_s,
        settled_per_s: run.settled_per_s,
        latency_ms: run.latency_ms.clone(),
        outcomes: run.outcomes.clone(),
        run,
        services: figures,
        infrastructure: infrastructure_figures,
        machine_cpu,
        ceiling,
        per_order,
        batch,
        ratio,
        saturation_steps,
        soak: soak_minutes,
    })
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;

    #[test]
    fn the_mix_is_as_stated_over_every_hundred_orders() {
        let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
        for i in 0..1_000 {
            *counts.entry(kind_of(i)).or_default() += 1;
        }
        for (kind, share) in MIX {
            assert_eq!(counts[&kind], share * 10, "{kind:?}");
        }
    }

    #[test]
    fn minutes_of_a_soak_add_up_to_one_run() {
        let minute = |seconds: f64, settled: u64, kept_up: bool| Offered {
            offered_per_s: 10.0,
            duration_s: seconds,
            sent: settled,
            accepted: settled,
            shed: 0,
            refused: 0,
            settled,
            settled_per_s: settled as f64 / seconds,
            unsettled: 0,
            latency_ms: Latency {
                p50: 1.0,
                p90: 1.0,
                p99: 1.0,
                p999: 1.0,
                max: 1.0,
            },
            outcomes: BTreeMap::from([("confirmed".to_owned(), settled)]),
            kept_up,
            per_order: None,
            batch: BTreeMap::new(),
        };
        let whole = minute(60.0, 600, true).and(&minute(30.0, 300, false));
        assert_eq!((whole.sent, whole.settled), (900, 900));
        assert!((whole.settled_per_s - 10.0).abs() < 0.01);
        assert_eq!(whole.outcomes["confirmed"], 900);
        assert!(!whole.kept_up);
    }

    #[test]
    fn latency_quantiles_come_from_the_histogram_in_milliseconds() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        for micros in 1..=1_000 {
            histogram.record(micros * 1_000).expect("in range");
        }
        let latency = Latency::of(&histogram);
        assert!((latency.p50 - 500.0).abs() < 1.0, "{latency:?}");
        assert!((latency.p99 - 990.0).abs() < 2.0, "{latency:?}");
        assert!((latency.max - 1000.0).abs() < 1.0, "{latency:?}");
    }
}
