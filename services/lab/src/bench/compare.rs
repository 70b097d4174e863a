//! `shop compare`: the two styles on one workload, measured in one run (docs/choosing.md).
//!
//! Each round starts a fresh shop of each style in turn (the first style alternates between
//! rounds, so the machine's drift hits both alike) and measures it the way `shop bench` does:
//! latency at a fixed rate, settled orders/s when offered far more than it can settle, messages
//! (events and commands apart) and transactions per order, CPU and memory per service, and the
//! time from a broker restart to the next order confirmed. What each service knows, and the
//! lines each style alone needs, are read from the code.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use service_kit::Style;
use shop::registry;

use super::load::*;
use super::mix::*;
use super::options::*;
use super::processes::*;
use super::target::*;
use super::tracker::*;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareOptions {
    /// Rounds; each measures both styles, the first of them alternating.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub rounds: u32,
    /// The fixed rate latency is measured at (orders/s).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of load at the fixed rate.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// The rate offered to find the settled orders/s at saturation: beyond either style's.
    #[arg(long, default_value_t = 300.0)]
    pub overload_rate: f64,
    /// Seconds of overload.
    #[arg(long, default_value_t = 15)]
    pub overload_seconds: u64,
    /// Skip the broker restart (`rabbitmqctl stop_app` / `start_app` needs the rights).
    #[arg(long)]
    pub no_broker_restart: bool,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// One style's figures in one round.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    style: &'static str,
    round: u32,
    settled_per_s_at_saturation: f64,
    p50_ms: f64,
    p99_ms: f64,
    events_per_order: f64,
    commands_per_order: f64,
    transactions_per_order: f64,
    deliveries_per_order: f64,
    /// Per service: CPU (% of one core) and RSS (MiB) at the fixed rate.
    services: BTreeMap<String, ProcessFigures>,
    /// From `rabbitmqctl start_app` returning to the first new order confirmed.
    broker_restart_to_confirmed_s: Option<f64>,
}

pub async fn run(exe: &Path, options: CompareOptions) -> anyhow::Result<()> {
    if options.rate <= 0.0 || options.duration == 0 || options.overload_rate <= options.rate {
        bail!("--rate and --duration must be positive, --overload-rate above --rate");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let interrupted = service_kit::shutdown_on_signal();
    let mut samples = Vec::new();
    for round in 0..options.rounds {
        let mut styles = Style::ALL;
        if round % 2 == 1 {
            styles.reverse();
        }
        for style in styles {
            note(
                &progress,
                format!("round {} of {}: {style}", round + 1, options.rounds),
            );
            let bench = BenchOptions {
                style,
                rate: options.rate,
                duration: options.duration,
                saturate: false,
                soak: false,
                history: false,
                soak_orders: 0,
                url: None,
                no_ceilings: true,
                json: false,
                replicas: 1,
            };
            let target = Target::open(exe, &bench, &http).await?;
            let measured = tokio::select! {
                sample = measure(&options, style, round, &target, &http, &progress) => sample,
                () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
            };
            target.close().await;
            samples.push(measured?);
        }
    }
    progress.finish_and_clear();
    print!("{}", render(&options, &samples));
    if options.json {
        println!("{}", json!({ "samples": samples, "code": code_figures() }));
    }
    Ok(())
}

async fn measure(
    options: &CompareOptions,
    style: Style,
    round: u32,
    target: &Target,
    http: &reqwest::Client,
    progress: &ProgressBar,
) -> anyhow::Result<Sample> {
    let (watch, tap) = Watch::start(&target.amqp_url, &target.namespace)
        .await
        .context("cannot watch the shop's exchanges")?;
    let usage = Usage::start(target.services());
    let before = Counters::read(target, http).await;
    let messages_before = messages(target, style).await?;
    let steady = offer(
        target,
        &watch,
        http,
        options.rate,
        Duration::from_secs(options.duration),
        0,
        progress,
    )
    .await;
    let services = usage.finish(&[]);
    let after = Counters::read(target, http).await;
    let messages_after = messages(target, style).await?;
    let (per_order, _) = match (&before, &after) {
        (Some(before), Some(after)) => after.since(before, steady.settled),
        _ => (None, BTreeMap::new()),
    };
    let per =
        |after: i64, before: i64| round1((after - before) as f64 / (steady.settled.max(1)) as f64);
    note(
        progress,
        format!(
            "{style}: {:.0}/s p50 {} ms p99 {} ms; overloading at {:.0}/s…",
            options.rate, steady.latency_ms.p50, steady.latency_ms.p99, options.overload_rate
        ),
    );
    let overload = offer(
        target,
        &watch,
        http,
        options.overload_rate,
        Duration::from_secs(options.overload_seconds),
        steady.sent,
        progress,
    )
    .await;
    tap.close().await;
    let restart = if options.no_broker_restart {
        None
    } else {
        note(progress, format!("{style}: restarting the broker…"));
        Some(broker_restart_to_confirmed(target, http, steady.sent + overload.sent).await?)
    };
    Ok(Sample {
        style: style.name(),
        round: round + 1,
        settled_per_s_at_saturation: overload.settled_per_s,
        p50_ms: steady.latency_ms.p50,
        p99_ms: steady.latency_ms.p99,
        events_per_order: per(messages_after.0, messages_before.0),
        commands_per_order: per(messages_after.1, messages_before.1),
        transactions_per_order: per_order.as_ref().map_or(0.0, |p| p.transactions),
        deliveries_per_order: per_order.as_ref().map_or(0.0, |p| p.deliveries),
        services,
        broker_restart_to_confirmed_s: restart,
    })
}

/// Messages written to the outboxes of the shop's services (those of `style` it runs) so far:
/// (events, commands).
async fn messages(target: &Target, style: Style) -> anyhow::Result<(i64, i64)> {
    let database = target.database.as_ref().context("not our own shop")?;
    let mut counts = (0, 0);
    for service in registry::names_in(style).filter(|name| measured(name)) {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT event_type, count(*) FROM {service}.outbox GROUP BY event_type"
        )))
        .fetch_all(database)
        .await?;
        for (message_type, n) in rows {
            match shared_events::message_info(&message_type) {
                Some(info) if info.is_command() => counts.1 += n,
                _ => counts.0 += n,
            }
        }
    }
    Ok(counts)
}

/// Restarts the broker, then places an order every 100 ms until one is confirmed; the time
/// from the broker back to that confirmation.
async fn broker_restart_to_confirmed(
    target: &Target,
    http: &reqwest::Client,
    first: u64,
) -> anyhow::Result<f64> {
    rabbitmqctl("stop_app").await?;
    rabbitmqctl("start_app").await?;
    let back = Instant::now();
    let orders_url = target.orders_urls.first().context("no orders process")?;
    let mut placed: Vec<(String, String)> = Vec::new();
    let mut i = first;
    while back.elapsed() < Duration::from_secs(120) {
        if kind_of(i) == Kind::Confirmed {
            let token = target.tokens[usize::try_from(i % CUSTOMERS).unwrap_or(0)].clone();
            let accepted = http
                .post(format!("{orders_url}/orders"))
                .bearer_auth(&token)
                .json(&order_body(i))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = accepted
                && response.status() == 202
                && let Ok(body) = response.json::<Value>().await
                && let Some(id) = body["order_id"].as_str()
            {
                placed.push((id.to_owned(), token));
            }
        }
        i += 1;
        for (id, token) in &placed {
            let order = http
                .get(format!("{orders_url}/orders/{id}"))
                .bearer_auth(token)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = order
                && let Ok(body) = response.json::<Value>().await
                && body["status"] == "confirmed"
            {
                return Ok(round1(back.elapsed().as_secs_f64()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no order confirmed within 120 s of the broker's restart")
}

async fn rabbitmqctl(command: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("rabbitmqctl")
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("cannot run rabbitmqctl")?;
    if !status.success() {
        bail!("rabbitmqctl {command} failed: {status}");
    }
    Ok(())
}

/// The messages one service handles, and those it sends.
#[derive(Debug, serde::Serialize)]
struct Knows {
    handles: Vec<&'static str>,
    sends: Vec<&'static str>,
}

/// What each service knows, per style, and the lines only one style needs, from the code.
#[derive(Debug, serde::Serialize)]
struct CodeFigures {
    /// Per style, per service.
    knows: BTreeMap<&'static str, BTreeMap<&'static str, Knows>>,
    /// Per style: code lines (no blank, comment or test lines) that only that style runs.
    lines: BTreeMap<&'static str, Vec<(&'static str, usize)>>,
}

fn code_figures() -> CodeFigures {
    let knows = Style::ALL
        .iter()
        .map(|style| {
            let services = shop::SERVICES
                .iter()
                .filter(|service| service.runs_in(*style))
                .map(|service| {
                    let handles = (service.subscriptions)(*style)
                        .iter()
                        .map(|m| m.event_type)
                        .collect();
                    let sends = shared_events::CATALOG
                        .iter()
                        .chain(shared_events::COMMANDS)
                        .filter(|m| m.producer == service.name)
                        .map(|m| m.event_type)
                        .collect();
                    (service.name, Knows { handles, sends })
                })
                .collect();
            (style.name(), services)
        })
        .collect();
    let lines = BTreeMap::from([
        (
            Style::Choreography.name(),
            vec![(
                "services/orders/src/expiry.rs",
                code_lines(include_str!("../../../orders/src/expiry.rs")),
            )],
        ),
        (
            Style::Orchestration.name(),
            vec![
                (
                    "services/order-saga/src/saga.rs",
                    code_lines(include_str!("../../../order-saga/src/saga.rs")),
                ),
                (
                    "services/order-saga/src/lib.rs",
                    code_lines(include_str!("../../../order-saga/src/lib.rs")),
                ),
                (
                    "migrations/saga/0001_saga.sql",
                    code_lines(include_str!("../../../../migrations/saga/0001_saga.sql")),
                ),
                (
                    "migrations/saga/0002_placed_carries_deadline.sql",
                    code_lines(include_str!(
                        "../../../../migrations/saga/0002_placed_carries_deadline.sql"
                    )),
                ),
            ],
        ),
    ]);
    CodeFigures { knows, lines }
}

/// Lines of code before the unit tests, without blank lines and comments.
fn code_lines(source: &str) -> usize {
    source
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//") && !line.starts_with("--"))
        .count()
}

/// The samples as one table: each figure per style, every round's value, then the code.
fn render(options: &CompareOptions, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nshop compare: {} round(s), {}/s for {} s, overload {}/s for {} s, mix {}\n",
        options.rounds,
        options.rate,
        options.duration,
        options.overload_rate,
        options.overload_seconds,
        mix_description()
    );
    let of = |style: Style| -> Vec<&Sample> {
        samples.iter().filter(|s| s.style == style.name()).collect()
    };
    let (choreography, orchestration) = (of(Style::Choreography), of(Style::Orchestration));
    let row = |out: &mut String, name: &str, figure: &dyn Fn(&Sample) -> Option<f64>| {
        let cell = |samples: &[&Sample]| {
            samples
                .iter()
                .map(|s| figure(s).map_or("-".to_owned(), |v| format!("{v}")))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            cell(&choreography),
            cell(&orchestration)
        );
    };
    out.push_str("| figure (each round) | choreography | orchestration |\n|---|---|---|\n");
    row(&mut out, "settled orders/s at saturation", &|s| {
        Some(s.settled_per_s_at_saturation)
    });
    row(&mut out, &format!("p50 ms at {}/s", options.rate), &|s| {
        Some(s.p50_ms)
    });
    row(&mut out, &format!("p99 ms at {}/s", options.rate), &|s| {
        Some(s.p99_ms)
    });
    row(&mut out, "events per order", &|s| Some(s.events_per_order));
    row(&mut out, "commands per order", &|s| {
        Some(s.commands_per_order)
    });
    row(&mut out, "deliveries per order", &|s| {
        Some(s.deliveries_per_order)
    });
    row(&mut out, "transactions per order", &|s| {
        Some(s.transactions_per_order)
    });
    row(
        &mut out,
        "broker restart → next order confirmed, s",
        &|s| s.broker_restart_to_confirmed_s,
    );
    let mut names: Vec<&String> = samples.iter().flat_map(|s| s.services.keys()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        row(&mut out, &format!("{name}: CPU % of a core"), &|s| {
            s.services.get(name).map(|f| f.cpu_pct)
        });
        row(&mut out, &format!("{name}: RSS MiB"), &|s| {
            s.services.get(name).map(|f| f.rss_mib)
        });
    }
    let code = code_figures();
    out.push_str("\nWhat each service knows (handles; sends), from the code:\n\n");
    out.push_str("| service | choreography | orchestration |\n|---|---|---|\n");
    for service in shop::SERVICES.iter() {
        let cell = |style: Style| {
            code.knows[style.name()].get(service.name).map_or(
                "(does not run)".to_owned(),
                |knows| {
                    format!(
                        "{} ({}); {} ({})",
                        knows.handles.len(),
                        knows.handles.join(", "),
                        knows.sends.len(),
                        knows.sends.join(", ")
                    )
                },
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            service.name,
            cell(Style::Choreography),
            cell(Style::Orchestration)
        );
    }
    out.push_str("\nCode only one style runs (lines without blanks, comments, tests):\n\n");
    for (style, files) in &code.lines {
        let total: usize = files.iter().map(|(_, n)| n).sum();
        let listed: Vec<String> = files.iter().map(|(f, n)| format!("{f} {n}")).collect();
        let _ = writeln!(out, "- {style}: {total} ({})", listed.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_lines_leave_out_blanks_comments_and_tests() {
        let source = "//! doc\nfn a() {}\n\n// why\nfn b() {}\n#[cfg(test)]\nmod tests {}\n";
        assert_eq!(code_lines(source), 2);
    }

    #[test]
    fn each_style_knows_what_its_route_tables_say() {
        let code = code_figures();
        let saga = &code.knows["orchestration"]["saga"];
        assert!(saga.sends.contains(&"ChargePayment"), "{saga:?}");
        assert!(!code.knows["choreography"].contains_key("saga"));
        let payment = &code.knows["choreography"]["payment"];
        assert!(payment.handles.contains(&"OrderPlaced"), "{payment:?}");
        assert!(code.lines["orchestration"].iter().all(|(_, n)| *n > 0));
    }
}
