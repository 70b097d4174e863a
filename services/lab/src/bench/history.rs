//! `shop bench --history`: what the shop's history costs the live path and what it gives a
//! late joiner, on one shop in one session. Rounds of the same load alternate between the
//! history unbound from the events exchange and bound to it (settled/s, p50, p99 each); then the
//! history is read back (events, orders, bytes per order; on disk too when the broker keeps its
//! data on this machine); then two listeners that never ran catch up from its start: the console
//! (a process, as deployed) and sales (the example projection, in this process).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context;
use indicatif::ProgressBar;
use lapin::{Connection, ConnectionProperties, options::QueueBindOptions, types::FieldTable};
use serde_json::Value;
use service_kit::{
    CancellationToken, Config,
    history::{self, ReplayFrom},
    topology,
};
use shop::fleet;

use super::load::*;
use super::options::*;
use super::processes::note;
use super::target::*;
use super::tracker::*;

/// Rounds of load, alternating: unbound, bound, unbound, bound.
const ROUNDS: u64 = 4;
/// How often a catching-up listener is asked how far it got.
const POLL: Duration = Duration::from_millis(20);
/// How long a catch-up may take.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, serde::Serialize)]
pub(super) struct HistoryFigures {
    pub(super) offered_per_s: f64,
    pub(super) seconds_per_round: u64,
    pub(super) rounds: Vec<LiveRound>,
    pub(super) stored: Stored,
    pub(super) catch_ups: Vec<CatchUp>,
}

/// One round of the live load.
#[derive(Debug, serde::Serialize)]
pub(super) struct LiveRound {
    pub(super) history_bound: bool,
    pub(super) settled_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) unsettled: u64,
}

/// What the history holds after the rounds (only the bound rounds' events).
#[derive(Debug, serde::Serialize)]
pub(super) struct Stored {
    pub(super) events: u64,
    pub(super) orders: u64,
    /// The events' bodies (the CloudEvents JSON), without AMQP properties or the log's framing.
    pub(super) body_bytes_per_order: f64,
    /// The stream's files, when the broker keeps them on this machine.
    pub(super) disk_bytes: Option<u64>,
    pub(super) disk_bytes_per_order: Option<f64>,
}

/// A listener that never ran, caught up from the start of the history.
#[derive(Debug, serde::Serialize)]
pub(super) struct CatchUp {
    pub(super) listener: &'static str,
    /// History events read, and of those handled through its routes.
    pub(super) events_read: u64,
    pub(super) handled: u64,
    /// From connected to the broker to caught up.
    pub(super) seconds: f64,
    pub(super) events_per_s: f64,
}

pub(super) async fn measure_history(
    options: &BenchOptions,
    target: &mut Target,
    watch: &Watch,
    http: &reqwest::Client,
    progress: &ProgressBar,
) -> anyhow::Result<HistoryFigures> {
    let connection = Connection::connect(&target.amqp_url, ConnectionProperties::default())
        .await
        .context("cannot reach the broker")?;
    let channel = connection.create_channel().await?;
    let stream = history::history_name(&target.namespace);
    let exchange = topology::exchange_name(&target.namespace);
    let mut rounds = Vec::new();
    let mut first = 0;
    for round in 0..ROUNDS {
        let history_bound = round % 2 == 1;
        if history_bound {
            channel
                .queue_bind(
                    stream.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        } else {
            channel
                .queue_unbind(
                    stream.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    FieldTable::default(),
                )
                .await?;
        }
        note(
            progress,
            format!(
                "round {} of {ROUNDS}: the history {}",
                round + 1,
                if history_bound { "bound" } else { "unbound" }
            ),
        );
        let duration = Duration::from_secs(options.duration);
        let run = offer(target, watch, http, options.rate, duration, first, progress).await;
        first += run.sent;
        rounds.push(LiveRound {
            history_bound,
            settled_per_s: run.settled_per_s,
            p50_ms: run.latency_ms.p50,
            p99_ms: run.latency_ms.p99,
            unsettled: run.unsettled,
        });
    }
    note(progress, "reading the history back…");
    let stored = stored(&connection, &stream).await?;
    let _ = connection.close(200, "measured".into()).await;
    note(progress, "the console catching up from the start…");
    let console = catch_up_console(target, http).await?;
    note(progress, "sales catching up from the start…");
    let sales = catch_up_sales(target, http).await?;
    Ok(HistoryFigures {
        offered_per_s: options.rate,
        seconds_per_round: options.duration,
        rounds,
        stored,
        catch_ups: vec![console, sales],
    })
}

/// Reads the history from its start to its end: events, orders, bytes.
async fn stored(connection: &Connection, stream: &str) -> anyhow::Result<Stored> {
    let (mut bytes, mut orders) = (0_u64, BTreeSet::new());
    let events = history::read_to_end(connection, stream, |_, delivery| {
        bytes += delivery.data.len() as u64;
        if let Some(order) = delivery.properties.correlation_id() {
            orders.insert(order.to_string());
        }
    })
    .await?;
    let orders = (orders.len() as u64).max(1);
    let disk_bytes = disk_bytes(stream);
    Ok(Stored {
        events,
        orders,
        body_bytes_per_order: round1(bytes as f64 / orders as f64),
        disk_bytes,
        disk_bytes_per_order: disk_bytes.map(|disk| round1(disk as f64 / orders as f64)),
    })
}

/// The size of the stream's files, if the broker keeps its data here (RabbitMQ names a stream's
/// folder after its vhost and name, each character outside `[a-zA-Z0-9]` written `_`).
fn disk_bytes(stream: &str) -> Option<u64> {
    let tame = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let wanted = format!("__{}_", tame(stream));
    let mut total = None;
    for node in std::fs::read_dir("/var/lib/rabbitmq/mnesia")
        .ok()?
        .flatten()
    {
        let Ok(streams) = std::fs::read_dir(node.path().join("stream")) else {
            continue;
        };
        for folder in streams.flatten() {
            if !tame(&folder.file_name().to_string_lossy()).starts_with(&wanted) {
                continue;
            }
            for file in std::fs::read_dir(folder.path()).ok()?.flatten() {
                let size = file.metadata().map_or(0, |m| m.len());
                total = Some(total.unwrap_or(0) + size);
            }
        }
    }
    total
}

/// Starts a console process that never ran (its schema dropped first) with `REPLAY_FROM=start`
/// and times its catch-up.
async fn catch_up_console(target: &mut Target, http: &reqwest::Client) -> anyhow::Result<CatchUp> {
    let shop = target
        .own
        .as_mut()
        .context("--history starts a shop of its own")?;
    if let Some(database) = &target.database {
        sqlx::query("DROP SCHEMA IF EXISTS console CASCADE")
            .execute(database)
            .await?;
    }
    shop.fleet
        .set_for("console", "REPLAY_FROM", ReplayFrom::Start.to_string());
    let port = fleet::free_port()?;
    let mut child = shop.fleet.spawn("console", 0, port)?;
    let caught_up = timed_catch_up(http, &format!("http://127.0.0.1:{port}"), "console").await;
    fleet::terminate(&mut child).await;
    caught_up
}

/// Runs sales (the example projection, never run before) in this process with
/// `REPLAY_FROM=start` and times its catch-up.
async fn catch_up_sales(target: &Target, http: &reqwest::Client) -> anyhow::Result<CatchUp> {
    let shop = target
        .own
        .as_ref()
        .context("--history starts a shop of its own")?;
    let mut config = Config::defaults(([127, 0, 0, 1], 0).into());
    config.amqp_url = target.amqp_url.clone();
    config.database_url = shop.sandbox.database_url.clone();
    config.namespace = target.namespace.clone();
    config.replay_from = ReplayFrom::Start;
    // Its API is not called here.
    config.auth_disabled = true;
    let bound = sales::bind(config).await?;
    let url = format!("http://{}", bound.local_addr());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bound.run(shutdown.clone()));
    let caught_up = timed_catch_up(http, &url, "sales").await;
    shutdown.cancel();
    running.await??;
    caught_up
}

/// Asks `/readyz` until the catch-up is done, timing it from the first answer that says the
/// broker is connected (the catch-up begins right after).
async fn timed_catch_up(
    http: &reqwest::Client,
    url: &str,
    listener: &'static str,
) -> anyhow::Result<CatchUp> {
    let deadline = Instant::now() + CATCH_UP_PATIENCE;
    let mut connected = None;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "{listener} did not catch up");
        let readiness: Value = match http.get(format!("{url}/readyz")).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if readiness["broker"] == true && connected.is_none() {
            connected = Some(Instant::now());
        }
        let replay = &readiness["replay"];
        if replay["caught_up"] == true
            && let Some(since) = connected
        {
            let seconds = since.elapsed().as_secs_f64();
            let handled = replay["handled"].as_u64().unwrap_or_default();
            let events_read = handled + replay["skipped"].as_u64().unwrap_or_default();
            return Ok(CatchUp {
                listener,
                events_read,
                handled,
                seconds: round3(seconds),
                events_per_s: round1(events_read as f64 / seconds.max(0.001)),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn render_history(figures: &HistoryFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n==== shop bench (history) ====\nlive path, {:.0} orders/s offered, {} s a round:",
        figures.offered_per_s, figures.seconds_per_round
    );
    for round in &figures.rounds {
        let _ = writeln!(
            out,
            "  history {:<8} {:>6.1} settled/s   p50 {:>7.1} ms   p99 {:>7.1} ms{}",
            if round.history_bound {
                "bound"
            } else {
                "unbound"
            },
            round.settled_per_s,
            round.p50_ms,
            round.p99_ms,
            if round.unsettled > 0 {
                format!("   ({} unsettled)", round.unsettled)
            } else {
                String::new()
            }
        );
    }
    let stored = &figures.stored;
    let _ = writeln!(
        out,
        "history:  {} events of {} orders; bodies {:.0} bytes per order{}",
        stored.events,
        stored.orders,
        stored.body_bytes_per_order,
        match (stored.disk_bytes, stored.disk_bytes_per_order) {
            (Some(disk), Some(per_order)) =>
                format!("; on disk {disk} bytes, {per_order:.0} per order"),
            _ => "; on disk: not on this machine".to_owned(),
        }
    );
    for catch_up in &figures.catch_ups {
        let _ = writeln!(
            out,
            "catch-up: {:<8} {} events read ({} handled) in {:.2} s: {:.0} events/s",
            catch_up.listener,
            catch_up.events_read,
            catch_up.handled,
            catch_up.seconds,
            catch_up.events_per_s
        );
    }
    out
}
