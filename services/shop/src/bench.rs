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

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use service_kit::Config;
use shop::{
    harness::{self, EventTap, Sandbox, Seen},
    registry,
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::mpsc;
use uuid::Uuid;

use shop::fleet::Fleet;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Orders offered per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Find the highest rate the shop settles without falling behind (within 8 minutes).
    #[arg(long, conflicts_with = "soak")]
    pub saturate: bool,
    /// A long steady run at --rate: table sizes, memory and p99 each minute.
    #[arg(long)]
    pub soak: bool,
    /// Orders in the soak.
    #[arg(long, default_value_t = 50_000)]
    pub soak_orders: u64,
    /// The Orders API of a running shop to load instead of starting one (its events are read
    /// from AMQP_URL and SHOP_NAMESPACE; its processes found by name).
    #[arg(long)]
    pub url: Option<String>,
    /// Skip measuring the machine's ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Print one JSON object on the last line of stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Processes per service of the shop it starts (orders are spread over the orders
    /// replicas; CPU and memory are reported per service, replicas summed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4), conflicts_with = "url")]
    pub replicas: u16,
}

/// The services the benchmark runs: the shop, without the console (an observer that handles
/// every event again; run it beside the shop to see what it costs).
fn measured(name: &str) -> bool {
    name != <shared_events::participants::Console as shared_events::Participant>::NAME
}

/// Transactions (Postgres) and deliveries (RabbitMQ) in flight at once in the ceilings: what
/// one service runs at most with the default settings (`DB_POOL_SIZE`).
const CONCURRENCY: usize = 10;

/// How long each ceiling is measured.
const CEILING_TIME: Duration = Duration::from_secs(4);

/// After the load stops, how long the shop may take to settle what is in flight.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Units seeded of every SKU the load buys, so stock never runs out by accident.
const PLENTY: i32 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// The load and its mix.

/// What one order of the load is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Confirmed,
    CardDeclined,
    OutOfStock,
    Unshippable,
}

/// The mix, in hundredths: most orders go through, the rest take each compensation path.
const MIX: [(Kind, u64); 4] = [
    (Kind::Confirmed, 85),
    (Kind::CardDeclined, 7),
    (Kind::Unshippable, 5),
    (Kind::OutOfStock, 3),
];

/// SKUs of the confirmed orders, in turn (each seeded with [`PLENTY`]).
const SKUS: [&str; 4] = ["MUG-001", "TEE-001", "BOOK-001", "STICKER-001"];

/// The SKU whose stock is set to zero, for the out-of-stock share of the mix.
const SOLD_OUT_SKU: &str = "HOODIE-001";

fn kind_of(i: u64) -> Kind {
    let mut slot = i % 100;
    for (kind, share) in MIX {
        if slot < share {
            return kind;
        }
        slot -= share;
    }
    Kind::Confirmed
}

fn order_body(i: u64) -> Value {
    let sku = SKUS[usize::try_from(i % 4).unwrap_or(0)];
    let (sku, method, country) = match kind_of(i) {
        Kind::Confirmed => (sku, "card", "NL"),
        Kind::CardDeclined => (sku, "card_declined", "GB"),
        Kind::Unshippable => (sku, "card", "AQ"),
        Kind::OutOfStock => (SOLD_OUT_SKU, "card", "DE"),
    };
    harness::order_body(&format!("bench-{i}"), sku, 1, method, country)
}

fn mix_description() -> String {
    MIX.iter()
        .map(|(kind, share)| format!("{share}% {}", outcome_name(*kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Confirmed => "confirmed",
        Kind::CardDeclined => "cancelled: payment failed",
        Kind::OutOfStock => "cancelled: stock reservation failed",
        Kind::Unshippable => "cancelled: shipment failed",
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the exchange.

/// Orders seen placed and settled on the exchange, and their latencies.
struct Tracker {
    placed_at: HashMap<Uuid, Instant>,
    latency_us: Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
    settled: u64,
    last_settled: Option<Instant>,
}

impl Tracker {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            placed_at: HashMap::new(),
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            outcomes: BTreeMap::new(),
            settled: 0,
            last_settled: None,
        })
    }

    fn observe(&mut self, seen: &Seen) {
        let order_id = seen.envelope.correlation_id;
        match seen.envelope.event_type.as_str() {
            "OrderPlaced" => {
                self.placed_at.insert(order_id, seen.received_at);
            }
            terminal @ ("OrderConfirmed" | "OrderCancelled") => {
                let Some(placed) = self.placed_at.remove(&order_id) else {
                    return;
                };
                let micros = seen
                    .received_at
                    .saturating_duration_since(placed)
                    .as_micros();
                let _ = self
                    .latency_us
                    .record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                let outcome = if terminal == "OrderConfirmed" {
                    "confirmed".to_owned()
                } else {
                    let reason = seen.envelope.payload["reason"].as_str().unwrap_or("");
                    let stage = reason.split(':').next().unwrap_or(reason);
                    format!("cancelled: {stage}")
                };
                *self.outcomes.entry(outcome).or_default() += 1;
                self.settled += 1;
                self.last_settled = Some(seen.received_at);
            }
            _ => {}
        }
    }

    /// Starts a new measurement (orders still in flight keep their start times).
    fn reset(&mut self) {
        self.latency_us.reset();
        self.outcomes.clear();
        self.settled = 0;
        self.last_settled = None;
    }

    fn in_flight(&self) -> usize {
        self.placed_at.len()
    }
}

/// The tracker, fed by a tap on the shop's exchange.
#[derive(Clone)]
struct Watch {
    tracker: Arc<Mutex<Tracker>>,
}

impl Watch {
    async fn start(amqp_url: &str, namespace: &str) -> anyhow::Result<(Self, EventTap)> {
        let (sender, mut events) = mpsc::unbounded_channel();
        let tap = EventTap::forward(amqp_url, namespace, sender).await?;
        let watch = Self {
            tracker: Arc::new(Mutex::new(Tracker::new()?)),
        };
        let tracker = watch.tracker.clone();
        tokio::spawn(async move {
            while let Some(seen) = events.recv().await {
                tracker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .observe(&seen);
            }
        });
        Ok((watch, tap))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tracker) -> T) -> T {
        f(&mut self.tracker.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

// ---------------------------------------------------------------------------------------------
// The processes: CPU and memory from /proc.

/// A process group measured together (one service, or all of RabbitMQ's or Postgres's).
#[derive(Debug, Clone)]
struct Measured {
    name: String,
    pids: Vec<u32>,
}

/// CPU ticks used so far by each process (utime + stime).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A line of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// RabbitMQ's and Postgres's processes, by command name.
fn infrastructure() -> Vec<Measured> {
    let pids = all_pids();
    let named = |names: &[&str]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|pid| comm(*pid).is_some_and(|c| names.contains(&c.as_str())))
            .collect()
    };
    vec![
        Measured {
            name: "rabbitmq".to_owned(),
            pids: named(&["beam.smp", "erl_child_setup", "epmd", "inet_gethost"]),
        },
        Measured {
            name: "postgres".to_owned(),
            pids: named(&["postgres"]),
        },
    ]
}

/// A running shop's service processes: `shop service <name>` or a service's own binary.
fn find_services() -> Vec<Measured> {
    let pids = all_pids();
    registry::names()
        .filter(|name| measured(name))
        .map(|name| Measured {
            name: name.to_owned(),
            pids: pids
                .iter()
                .copied()
                .filter(|pid| {
                    cmdline(*pid).is_some_and(|args| {
                        let exe = args.first().map(|a| a.rsplit('/').next().unwrap_or(a));
                        exe == Some(name)
                            || (exe == Some("shop")
                                && args.get(1).map(String::as_str) == Some("service")
                                && args.get(2).map(String::as_str) == Some(name))
                    })
                })
                .collect(),
        })
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use of each group between [`Usage::start`] and [`Usage::finish`].
struct Usage {
    groups: Vec<Measured>,
    started: Instant,
    ticks: Vec<HashMap<u32, u64>>,
    machine: Vec<u64>,
}

/// The whole machine's time over the window, in % of all its cores (`busy` = 100 − idle).
#[derive(Debug, Clone, serde::Serialize)]
struct MachineCpu {
    busy_pct: f64,
    user_pct: f64,
    system_pct: f64,
    softirq_pct: f64,
    iowait_pct: f64,
    steal_pct: f64,
}

/// The `cpu` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal, …
fn machine_ticks() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, serde::Serialize)]
struct ProcessFigures {
    /// Of one core (a group of processes may exceed 100).
    cpu_pct: f64,
    rss_mib: f64,
    /// The process's high-water mark (for a group of several: its RSS now).
    peak_rss_mib: f64,
}

impl Usage {
    fn start(groups: Vec<Measured>) -> Self {
        let ticks = groups
            .iter()
            .map(|g| {
                g.pids
                    .iter()
                    .filter_map(|pid| Some((*pid, cpu_ticks(*pid)?)))
                    .collect()
            })
            .collect();
        Self {
            groups,
            started: Instant::now(),
            ticks,
            machine: machine_ticks(),
        }
    }

    fn machine(&self) -> MachineCpu {
        let now = machine_ticks();
        let delta: Vec<f64> = now
            .iter()
            .zip(&self.machine)
            .map(|(after, before)| after.saturating_sub(*before) as f64)
            .collect();
        let total: f64 = delta.iter().sum::<f64>().max(1.0);
        let pct = |i: usize| round1(delta.get(i).copied().unwrap_or(0.0) / total * 100.0);
        MachineCpu {
            busy_pct: round1(100.0 - pct(3)),
            user_pct: round1(pct(0) + pct(1)),
            system_pct: pct(2),
            softirq_pct: round1(pct(5) + pct(6)),
            iowait_pct: pct(4),
            steal_pct: pct(7),
        }
    }

    /// Per group: CPU % (100 = one core) over the window, memory now and at its peak.
    /// `born` are groups found again now: a process that started during the window (a new
    /// database connection's backend) counts all its time.
    fn finish(&self, born: &[Measured]) -> BTreeMap<String, ProcessFigures> {
        let hz = clock_ticks_per_second();
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        self.groups
            .iter()
            .zip(&self.ticks)
            .map(|(group, before)| {
                let mut pids = group.pids.clone();
                for later in born.iter().filter(|b| b.name == group.name) {
                    for pid in &later.pids {
                        if !pids.contains(pid) {
                            pids.push(*pid);
                        }
                    }
                }
                let group = Measured {
                    name: group.name.clone(),
                    pids,
                };
                let used: u64 = group
                    .pids
                    .iter()
                    .filter_map(|pid| {
                        Some(cpu_ticks(*pid)?.saturating_sub(*before.get(pid).unwrap_or(&0)))
                    })
                    .sum();
                let kib = |field| -> Vec<u64> {
                    group
                        .pids
                        .iter()
                        .filter_map(|pid| status_kib(*pid, field))
                        .collect()
                };
                // Shared memory (Postgres's buffers) is in every process's RSS: count it once.
                let private: u64 =
                    kib("RssAnon").iter().sum::<u64>() + kib("RssFile").iter().sum::<u64>();
                let rss = private + kib("RssShmem").into_iter().max().unwrap_or(0);
                let peak = match kib("VmHWM").as_slice() {
                    [one] => *one,
                    _ => rss,
                };
                let figures = ProcessFigures {
                    cpu_pct: round1(used as f64 / hz / seconds * 100.0),
                    rss_mib: round1(rss as f64 / 1024.0),
                    peak_rss_mib: round1(peak as f64 / 1024.0),
                };
                (group.name.clone(), figures)
            })
            .collect()
    }
}

/// A line of progress on stderr, above the bar (which indicatif hides when stderr is not a
/// terminal, and its `println` with it).
fn note(progress: &ProgressBar, line: impl AsRef<str>) {
    if progress.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        progress.println(line);
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

// ---------------------------------------------------------------------------------------------
// The target: a shop of our own, or a running one.

struct Target {
    /// Every orders replica's API; orders go round robin.
    orders_urls: Vec<String>,
    amqp_url: String,
    namespace: String,
    /// Our own shop's database (sizes, commit counts); none for a running shop.
    database: Option<PgPool>,
    own: Option<(Sandbox, Fleet)>,
}

impl Target {
    /// Starts the five services on a fresh database and namespace, with the stock set for the
    /// mix, or finds the running shop at `url`.
    async fn open(options: &BenchOptions, http: &reqwest::Client) -> anyhow::Result<Self> {
        let base = Config::from_env(registry::orders().default_addr)?;
        if let Some(url) = &options.url {
            return Ok(Self {
                orders_urls: vec![url.trim_end_matches('/').to_owned()],
                amqp_url: base.first_amqp_url(),
                namespace: base.namespace,
                database: None,
                own: None,
            });
        }
        let sandbox =
            Sandbox::create(&base.database_url, &base.first_amqp_url(), "shop_bench").await?;
        shop::provision::declare_topologies_of(
            &sandbox.amqp_url,
            &sandbox.namespace,
            &base.retry_delays,
            measured,
        )
        .await?;
        let log_dir = std::env::temp_dir().join(&sandbox.namespace);
        std::fs::create_dir_all(&log_dir)?;
        let replicas = usize::from(options.replicas);
        let mut env = vec![
            ("DATABASE_URL", sandbox.database_url.clone()),
            ("AMQP_URL", sandbox.amqp_url.clone()),
            ("SHOP_NAMESPACE", sandbox.namespace.clone()),
        ];
        if replicas > 1 {
            env.push((
                "DB_POOL_SIZE",
                shop::fleet::pool_size_per_replica(replicas).to_string(),
            ));
        }
        if options.soak {
            // Windows short enough to be reached within the soak's first minutes, and still
            // within the rule: the inbox (120 s) outlasts the retry schedule (36 s with these
            // delays and 10 attempts) plus the dead-letter age (60 s).
            env.extend([
                ("RETRY_DELAYS_MS", "250,1000,5000".to_owned()),
                ("OUTBOX_RETENTION_SECS", "60".to_owned()),
                ("DEAD_LETTER_MAX_AGE_SECS", "60".to_owned()),
                ("INBOX_RETENTION_SECS", "120".to_owned()),
                ("PRUNE_INTERVAL_SECS", "10".to_owned()),
            ]);
        }
        let exe = std::env::current_exe().context("cannot find the shop executable")?;
        let mut fleet = Fleet::new(&exe, &log_dir, env);
        fleet.start_only(http, replicas, measured).await?;
        let database = PgPoolOptions::new()
            .max_connections(CONCURRENCY as u32 + 2)
            .connect(&sandbox.database_url)
            .await?;
        harness::set_stock(&database, &SKUS, PLENTY).await?;
        harness::set_stock(&database, &[SOLD_OUT_SKU], 0).await?;
        anyhow::ensure!(!fleet.orders_urls().is_empty(), "no orders process started");
        Ok(Self {
            orders_urls: fleet.orders_urls(),
            amqp_url: sandbox.amqp_url.clone(),
            namespace: sandbox.namespace.clone(),
            database: Some(database),
            own: Some((sandbox, fleet)),
        })
    }

    fn services(&self) -> Vec<Measured> {
        match &self.own {
            Some((_, fleet)) => registry::names()
                .filter(|name| measured(name))
                .map(|name| Measured {
                    name: name.to_owned(),
                    pids: fleet
                        .services
                        .iter()
                        .filter(|s| s.name == name)
                        .filter_map(|s| s.pid())
                        .collect(),
                })
                .collect(),
            None => find_services(),
        }
    }

    async fn close(self) {
        if let Some(database) = &self.database {
            database.close().await;
        }
        if let Some((sandbox, mut fleet)) = self.own {
            fleet.stop().await;
            sandbox
                .cleanup(&[&service_kit::config::default_retry_delays()], &[])
                .await;
            let _ = std::fs::remove_dir_all(fleet.log_dir());
        }
    }

    /// Committed transactions in our own shop's database so far.
    async fn commits(&self) -> Option<i64> {
        let database = self.database.as_ref()?;
        sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(database)
        .await
        .ok()
    }

    /// Deliveries handled by all services so far, and of those the ones parked and the ones
    /// sent to a retry queue (their `shop_messages_total` counters; a parked message's later
    /// application is not a delivery).
    async fn deliveries(&self, http: &reqwest::Client) -> Option<(u64, u64, u64)> {
        let own = self.own.as_ref()?;
        let (mut total, mut parked, mut retried) = (0, 0, 0);
        for service in &own.1.services {
            let text = http
                .get(format!("{}/metrics", service.url()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            for line in text
                .lines()
                .filter(|l| l.starts_with("shop_messages_total"))
            {
                let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
                if line.contains("outcome=\"unparked\"") {
                    continue;
                }
                total += n;
                if line.contains("outcome=\"parked\"") {
                    parked += n;
                }
                if line.contains("outcome=\"retried\"") {
                    retried += n;
                }
            }
        }
        Some((total, parked, retried))
    }
}

// ---------------------------------------------------------------------------------------------
// One load at one rate.

/// What one load did.
#[derive(Debug, Clone, serde::Serialize)]
struct Offered {
    offered_per_s: f64,
    duration_s: f64,
    sent: u64,
    accepted: u64,
    /// Answered `503 overloaded`: shed by admission control (`MAX_PENDING_ORDERS`).
    shed: u64,
    /// Any other answer, or none.
    refused: u64,
    settled: u64,
    settled_per_s: f64,
    /// Orders not settled within [`DRAIN_TIME`] after the load stopped.
    unsettled: u64,
    latency_ms: Latency,
    outcomes: BTreeMap<String, u64>,
    /// Whether the shop kept up: settled (nearly) all it was offered, at the rate offered.
    kept_up: bool,
}

impl Offered {
    /// Two loads one after the other, as one.
    fn and(mut self, next: &Self) -> Self {
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
        self
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
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

/// Sends `rate` orders per second for `duration` on schedule (open loop), then waits for what
/// is in flight to settle. Order numbers start at `first` so loads never reuse a key.
async fn offer(
    target: &Target,
    watch: &Watch,
    http: &reqwest::Client,
    rate: f64,
    duration: Duration,
    first: u64,
    progress: &ProgressBar,
) -> Offered {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    watch.with(Tracker::reset);
    let (accepted, shed, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    progress.set_length(total);
    progress.set_position(0);
    let start = Instant::now();
    let mut sends = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let orders_url = &target.orders_urls[(i as usize) % target.orders_urls.len()];
        let (http, url) = (http.clone(), format!("{orders_url}/orders"));
        let (accepted, shed, refused) = (accepted.clone(), shed.clone(), refused.clone());
        sends.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&order_body(first + i))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 202 => accepted.fetch_add(1, Ordering::Relaxed),
                Ok(r) if r.status() == 503 => shed.fetch_add(1, Ordering::Relaxed),
                _ => refused.fetch_add(1, Ordering::Relaxed),
            };
        }));
        if i % 50 == 0 {
            let (settled, in_flight) = watch.with(|t| (t.settled, t.in_flight()));
            progress.set_position(i);
            progress.set_message(format!(
                "{rate:.0}/s offered, {settled} settled, {in_flight} in flight"
            ));
        }
    }
    futures_util::future::join_all(sends).await;
    let load_time = start.elapsed();
    progress.set_position(total);
    let accepted = accepted.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + DRAIN_TIME;
    while watch.with(|t| t.settled) < accepted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.with(|t| {
        let busy_for = t
            .last_settled
            .map_or(load_time, |last| last.saturating_duration_since(start))
            .max(load_time);
        let settled_per_s = t.settled as f64 / busy_for.as_secs_f64().max(0.001);
        let latency = Latency::of(&t.latency_us);
        Offered {
            offered_per_s: rate,
            duration_s: round1(load_time.as_secs_f64()),
            sent: total,
            accepted,
            shed: shed.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            settled: t.settled,
            settled_per_s: round1(settled_per_s),
            unsettled: accepted.saturating_sub(t.settled),
            kept_up: accepted == total
                && t.settled == accepted
                && settled_per_s >= 0.95 * rate
                && latency.p99 < 1_000.0,
            latency_ms: latency,
            outcomes: t.outcomes.clone(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The machine's ceilings.

#[derive(Debug, Clone, serde::Serialize)]
struct Ceilings {
    concurrency: usize,
    broker_msgs_per_s: f64,
    db_tx_per_s: f64,
}

/// Bare RabbitMQ (persistent messages through one quorum queue, published with confirms and
/// consumed with acks, `CONCURRENCY` in flight) and bare Postgres (one saga step per
/// transaction: insert an inbox row, update a row, insert an outbox row, commit; `CONCURRENCY`
/// connections), each for [`CEILING_TIME`].
async fn ceilings(amqp_url: &str, namespace: &str, database_url: &str) -> anyhow::Result<Ceilings> {
    Ok(Ceilings {
        concurrency: CONCURRENCY,
        broker_msgs_per_s: round1(broker_ceiling(amqp_url, namespace).await?),
        db_tx_per_s: round1(database_ceiling(database_url).await?),
    })
}

async fn broker_ceiling(amqp_url: &str, namespace: &str) -> anyhow::Result<f64> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("{namespace}.bench-ceiling");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(
            u16::try_from(CONCURRENCY).unwrap_or(10),
            BasicQosOptions::default(),
        )
        .await?;
    let mut deliveries = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let counter = consumed.clone();
    let consuming = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; 600];
    let start = Instant::now();
    let mut confirms = futures_util::stream::FuturesUnordered::new();
    while start.elapsed() < CEILING_TIME {
        while confirms.len() < CONCURRENCY {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            confirms.push(confirm);
        }
        if let Some(confirmed) = confirms.next().await {
            confirmed?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = consumed.load(Ordering::Relaxed) as f64 / elapsed;
    consuming.abort();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "ceiling measured".into()).await;
    Ok(rate)
}

async fn database_ceiling(database_url: &str) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(CONCURRENCY).unwrap_or(10))
        .connect(database_url)
        .await?;
    let setup = [
        "DROP SCHEMA IF EXISTS bench_ceiling CASCADE",
        "CREATE SCHEMA bench_ceiling",
        "CREATE TABLE bench_ceiling.inbox (message_id UUID PRIMARY KEY, received_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE TABLE bench_ceiling.state (id INT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO bench_ceiling.state SELECT g, 0 FROM generate_series(0, 9999) g",
        "CREATE TABLE bench_ceiling.outbox (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL UNIQUE, envelope JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), sent_at TIMESTAMPTZ)",
    ];
    for sql in setup {
        sqlx::query(sql).execute(&pool).await?;
    }
    let envelope =
        json!({ "type": "StockReserved", "version": 1, "payload": { "padding": "x".repeat(300) } });
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..CONCURRENCY).map(|worker| {
        let (pool, done, envelope) = (pool.clone(), done.clone(), envelope.clone());
        tokio::spawn(async move {
            let mut row = worker;
            while start.elapsed() < CEILING_TIME {
                let step = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO bench_ceiling.inbox (message_id) VALUES ($1)")
                        .bind(Uuid::new_v4())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE bench_ceiling.state SET n = n + 1 WHERE id = $1")
                        .bind(i32::try_from(row % 10_000).unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO bench_ceiling.outbox (message_id, envelope) VALUES ($1, $2)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(&envelope)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                };
                if step.await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                row += CONCURRENCY;
            }
        })
    });
    futures_util::future::join_all(workers).await;
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let _ = sqlx::query("DROP SCHEMA bench_ceiling CASCADE")
        .execute(&pool)
        .await;
    pool.close().await;
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Saturation and the soak.

/// Offers rising rates (×1.3 from 50/s) until the shop falls behind, then narrows the gap
/// twice; each step 20 s of load. Stops stepping after 6 minutes, so it ends within 8.
async fn saturate(
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
        let result = offer(target, watch, http, rate, STEP, first, progress).await;
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
        if result.kept_up {
            best = Some(result.clone());
        } else {
            failed_at = Some(rate);
        }
        steps.push(result);
        // Let what is left in flight finish before the next step.
        let settle_deadline = Instant::now() + DRAIN_TIME;
        while watch.with(|t| t.in_flight()) > 0 && Instant::now() < settle_deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
struct SoakMinute {
    minute: u32,
    /// Seconds of load in this minute (the last may be shorter).
    seconds: f64,
    settled: u64,
    p99_ms: f64,
    rss_mib: BTreeMap<String, f64>,
    /// Per service: outbox and inbox rows and bytes.
    tables: BTreeMap<String, TableSizes>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct TableSizes {
    outbox_rows: i64,
    outbox_bytes: i64,
    inbox_rows: i64,
    inbox_bytes: i64,
}

async fn table_sizes(database: &PgPool) -> BTreeMap<String, TableSizes> {
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
async fn soak(
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

fn soak_line(minute: &SoakMinute) -> String {
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

// ---------------------------------------------------------------------------------------------
// The run and its summary.

#[derive(Debug, serde::Serialize)]
struct Summary {
    mode: &'static str,
    mix: String,
    offered_per_s: f64,
    settled_per_s: f64,
    latency_ms: Latency,
    outcomes: BTreeMap<String, u64>,
    run: Offered,
    /// The shop's own services.
    services: BTreeMap<String, ProcessFigures>,
    /// RabbitMQ, Postgres and this load generator, apart from the shop.
    infrastructure: BTreeMap<String, ProcessFigures>,
    /// The whole machine over the same window (softirq: mostly loopback networking).
    machine_cpu: MachineCpu,
    ceiling: Option<Ceilings>,
    /// Per settled order, measured (our own shop only).
    per_order: Option<PerOrder>,
    ratio: Option<Ratios>,
    saturation_steps: Vec<Offered>,
    soak: Vec<SoakMinute>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PerOrder {
    transactions: f64,
    deliveries: f64,
    /// Deliveries parked: an event handled before the one it depends on had committed.
    parked: f64,
    /// Deliveries sent to a retry queue (a transient failure).
    retried: f64,
}

/// The shop's work per second as a share of what bare RabbitMQ and Postgres manage.
#[derive(Debug, Clone, serde::Serialize)]
struct Ratios {
    deliveries_of_broker_ceiling: f64,
    transactions_of_db_ceiling: f64,
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
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
    let target = Target::open(&options, &http).await?;
    // Ctrl-C or SIGTERM still stops the services and removes the database and queues.
    let interrupted = service_kit::shutdown_on_signal();
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
    let commits_before = target.commits().await;
    let deliveries_before = target.deliveries(http).await;
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
    let commits = match (commits_before, target.commits().await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let deliveries = match (deliveries_before, target.deliveries(http).await) {
        (Some(before), Some(after)) => Some((
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
            after.2.saturating_sub(before.2),
        )),
        _ => None,
    };
    tap.close().await;

    // Transactions and deliveries were counted over every step or minute, not just `run`.
    let settled_total: u64 = if options.saturate {
        saturation_steps.iter().map(|s| s.settled).sum()
    } else if options.soak {
        soak_minutes.iter().map(|m| m.settled).sum()
    } else {
        run.settled
    };
    let per_order = match (commits, deliveries) {
        (Some(commits), Some(deliveries)) if settled_total > 0 => Some(PerOrder {
            transactions: round1(commits as f64 / settled_total as f64),
            deliveries: round1(deliveries.0 as f64 / settled_total as f64),
            parked: round3(deliveries.1 as f64 / settled_total as f64),
            retried: round3(deliveries.2 as f64 / settled_total as f64),
        }),
        _ => None,
    };
    let ceiling = if options.no_ceilings {
        None
    } else {
        note(progress, "measuring the machine's ceilings…");
        let database_url = match &target.own {
            Some((sandbox, _)) => sandbox.database_url.clone(),
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
        ratio,
        saturation_steps,
        soak: soak_minutes,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn render(summary: &Summary) -> String {
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
            "per settled order:   {} transactions, {} deliveries, {} parked, {} sent to a retry queue",
            per_order.transactions, per_order.deliveries, per_order.parked, per_order.retried
        );
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

#[cfg(test)]
mod tests {
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
    fn cpu_ticks_are_read_past_a_command_name_with_spaces() {
        let ticks = cpu_ticks(std::process::id());
        assert!(ticks.is_some());
        assert!(status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
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
