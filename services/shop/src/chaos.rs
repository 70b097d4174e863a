//! `shop chaos`: the shop under faults, end to end. Starts the five services as processes on a
//! fresh database and namespace, places orders at a steady rate (retrying each POST with its
//! Idempotency-Key, as a real client would), and meanwhile SIGKILLs and restarts services,
//! restarts RabbitMQ and Postgres, and re-publishes events that were already delivered. Then
//! it waits for the shop to settle, audits it and prints a [`Report`].
//!
//! The run reads as its steps: [`ChaosRun::start_services`], [`ChaosRun::place_orders`]
//! alongside [`ChaosRun::inject_faults`], [`ChaosRun::await_settled`], [`ChaosRun::check_orders`].

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use service_kit::{
    Config,
    publisher::{Outgoing, Publisher},
};
use shop::{
    audit,
    harness::{self, EventTap, Sandbox},
    registry,
};
use sqlx::{Connection as _, PgPool};
use tokio::{process::Command, sync::Semaphore};
use uuid::Uuid;

use shop::fleet::{self, Fleet};

use crate::cluster::LocalCluster;

/// Retry delays of the services under test: short, so deferrals resolve within the run.
const RETRY_DELAYS_MS: [u64; 3] = [200, 1_000, 3_000];

/// What half the load buys, one unit per order: its stock decides how many of those orders
/// can be confirmed. Nothing else in the run holds it, so every unit is sold or still there.
const CONFIRMING_SKU: &str = "STICKER-001";

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Orders placed per second.
    #[arg(long, default_value_t = 15.0)]
    pub rate: f64,
    /// Services stopped and restarted during the run (alternately SIGKILL and SIGTERM).
    #[arg(long, default_value_t = 8)]
    pub kills: usize,
    /// Skip `rabbitmqctl stop_app` / `start_app` (it needs the rights to run rabbitmqctl).
    #[arg(long)]
    pub no_broker_restart: bool,
    /// Skip restarting Postgres (it needs the rights to run pg_ctlcluster).
    #[arg(long)]
    pub no_database_restart: bool,
    /// Units of STICKER-001 (which half the orders buy) to seed before the load; the
    /// catalog's seed (1000) if not given. A run may want more than there are: the orders past
    /// the stock must then be cancelled for it, and exactly the stock sold.
    #[arg(long)]
    pub stock: Option<u32>,
    /// Events re-published as duplicate deliveries.
    #[arg(long, default_value_t = 200)]
    pub duplicates: usize,
    /// How long the shop may take to settle after the faults stop.
    #[arg(long, default_value_t = 180)]
    pub settle_seconds: u64,
    /// Processes per service: replicas compete for their service's queue, race on its outbox,
    /// and are stopped one at a time while the others go on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub replicas: u16,
    /// The services' ORDER_DEADLINE_MS: shorter than in production (10 minutes), so an order
    /// stuck by the faults is expired and undone within the run.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    pub deadline_ms: u64,
    /// RabbitMQ nodes: 1 (this machine's broker, restarted once), or 3 (a cluster started on
    /// this machine for the run, on ports 5681–5683: the node leading the queues is lost, later
    /// the node most services are connected to, each brought back).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=3))]
    pub broker_nodes: u16,
    /// Keep the database, queues and logs afterwards for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Prints what happens, stamped with the time since the run started.
#[derive(Clone, Copy)]
struct Journal(Instant);

impl Journal {
    fn note(self, line: impl AsRef<str>) {
        println!(
            "t+{:6.1}s  {}",
            self.0.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}

/// The outcome an order's path must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
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
const CUSTOMER_REQUEST: &str = "customer_request";
const DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// An accepted order: its id, the outcome its path must reach, how many POSTs it took.
#[derive(Debug, Clone, Copy)]
struct Placed {
    order_id: Uuid,
    expected: Expected,
    tries: u32,
}

/// How an order ended, as orders reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ended {
    status: String,
    reason: Option<String>,
}

/// [`CONFIRMING_SKU`]'s stock after the run, as inventory reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StockLevel {
    seeded: i64,
    available: i64,
}

/// The orders judged against their paths and the stock.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    lost: usize,
    wrong_outcome: usize,
    /// Orders that wanted a unit of [`CONFIRMING_SKU`].
    wanted: usize,
    /// Of those, confirmed (each sold one unit) and cancelled for want of stock.
    sold: usize,
    refused_for_stock: usize,
    /// Orders cancelled by their customer, and orders expired at their deadline (any order may
    /// be: the deadline ends a saga the faults stalled).
    cancelled_by_customer: usize,
    expired: usize,
    /// How the stock does not add up, if it does not: first come, first served means exactly
    /// `min(seeded, wanted)` units sold, and the rest still available.
    stock_mismatch: Option<String>,
}

/// Judges each accepted order (`None`: orders does not know it) against its path, and the
/// confirming SKU's sales against its stock. Pure, so its rules are unit-tested.
fn judge(orders: &[(Expected, Option<Ended>)], stock: StockLevel) -> Verdict {
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

/// What the faults step did.
struct Faults {
    /// From the broker coming back to the probe's end, and that end (confirmed, or expired
    /// when the deadline is shorter than the recovery).
    broker_recovery: Option<(Duration, &'static str)>,
    /// Per node lost (a cluster run): which node, why it was chosen, from its loss to the
    /// probe's end, and that end.
    node_losses: Vec<(String, &'static str, Duration, &'static str)>,
    /// The orders placed right after the broker restart or each node loss to time the
    /// recovery: they are in the shop's books beside the load's orders, and judged with them.
    probes: Vec<Placed>,
    database_restarted: bool,
    duplicates_injected: usize,
}

/// What happened, and whether the shop kept its promises.
pub struct Report {
    orders: usize,
    replicas: u16,
    placed: usize,
    retried_posts: u32,
    stops: Vec<(&'static str, usize, usize)>,
    faults: Faults,
    absorbed: BTreeMap<&'static str, i64>,
    settled_in: Duration,
    verdict: Verdict,
    stock: StockLevel,
    audit: audit::Report,
}

impl Report {
    /// Effects applied more than once: violations of the money, stock, shipment and notice
    /// invariants.
    fn applied_twice(&self) -> usize {
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
        let probe = if !self.faults.probes.is_empty() {
            " (the load's orders and the probes placed after the broker faults)"
        } else {
            " (the load's orders)"
        };
        write!(f, "audit{probe}: {}", self.audit)
    }
}

/// What the load does with its `i`th order after placing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Wait,
    /// The customer cancels at once: cancelled (`202`), or too late (`409`: confirmed).
    Cancel,
}

/// The load's `i`th order: half buy the confirming SKU, an eighth are declined, an eighth are
/// cancelled by their customer right after placing them, a quarter go to a country nobody
/// ships to (a BOOK-001, whose 25 units may all be held by such orders still in flight, so the
/// stock reservation may fail first: both are right).
fn order_body(i: usize) -> (Value, Expected, Then) {
    let (sku, method, country, expected, then) = match i % 8 {
        0 | 1 | 4 | 5 => (
            CONFIRMING_SKU,
            "card",
            "NL",
            Expected::ConfirmedWhileStockLasts,
            Then::Wait,
        ),
        2 => (
            "MUG-001",
            "card_declined",
            "GB",
            Expected::Cancelled(&["payment failed"]),
            Then::Wait,
        ),
        6 => (
            "MUG-001",
            "card",
            "GB",
            Expected::ConfirmedOrCancelledByCustomer,
            Then::Cancel,
        ),
        _ => (
            "BOOK-001",
            "card",
            "AQ",
            Expected::Cancelled(&["shipment failed", "stock reservation failed"]),
            Then::Wait,
        ),
    };
    let body = harness::order_body(&format!("chaos-{i}"), sku, 1, method, country);
    (body, expected, then)
}

/// The broker-restart probe: a SKU the load does not buy, so it is confirmed whatever the
/// load has sold.
fn probe_body() -> (Value, Expected) {
    let body = harness::order_body("chaos-probe", "TEE-001", 1, "card", "NL");
    (body, Expected::Confirmed)
}

async fn shell(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: cannot restart Postgres (use --no-database-restart)")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no Postgres cluster in /etc/postgresql")
}

fn retry_delays() -> Vec<Duration> {
    RETRY_DELAYS_MS.map(Duration::from_millis).to_vec()
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<()> {
    let base = Config::from_env(registry::orders().default_addr)?;
    let mut sandbox =
        Sandbox::create(&base.database_url, &base.first_amqp_url(), "shop_chaos").await?;
    let log_dir = std::env::temp_dir().join(&sandbox.namespace);
    std::fs::create_dir_all(&log_dir)?;
    let cluster = match options.broker_nodes {
        1 => None,
        3 => {
            let cluster =
                LocalCluster::start(&log_dir.with_extension("rabbitmq"), options.broker_nodes)
                    .await?;
            // The run's own tools (tap, audit) use the first node; the services all of them.
            sandbox.amqp_url = cluster.nodes[0].amqp_url();
            Some(cluster)
        }
        n => bail!("--broker-nodes {n}: a quorum needs 1 or 3 nodes here"),
    };
    let services_amqp_url = cluster
        .as_ref()
        .map_or_else(|| sandbox.amqp_url.clone(), LocalCluster::amqp_urls);
    // A service whose `<SERVICE>_DATABASE_URL` names another server gets the run's database
    // there (same name), and everything the run reads of it is read there.
    let mut databases = BTreeMap::new();
    let mut other_servers = Vec::new();
    for entry in &shop::SERVICES {
        let server = entry.database_url(&base.database_url);
        let url = if server == base.database_url {
            sandbox.database_url.clone()
        } else {
            if !other_servers.contains(&server) {
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .with_context(|| format!("cannot reach {}'s database server", entry.name))?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {}",
                    sandbox.database
                )))
                .execute(&mut admin)
                .await?;
                let _ = admin.close().await;
                other_servers.push(server.clone());
            }
            service_kit::config::with_database(&server, &sandbox.database)
        };
        databases.insert(entry.name, url);
    }
    let exe = std::env::current_exe().context("cannot find the shop executable")?;
    let fleet = Fleet::new(
        &exe,
        &log_dir,
        vec![
            ("DATABASE_URL", sandbox.database_url.clone()),
            ("AMQP_URL", services_amqp_url),
            ("SHOP_NAMESPACE", sandbox.namespace.clone()),
            (
                "DB_POOL_SIZE",
                fleet::pool_size_per_replica(usize::from(options.replicas)).to_string(),
            ),
            ("OUTBOX_SWEEP_MS", "500".to_owned()),
            (
                "RETRY_DELAYS_MS",
                RETRY_DELAYS_MS.map(|d| d.to_string()).join(","),
            ),
            ("MAX_ATTEMPTS", "30".to_owned()),
            ("ORDER_DEADLINE_MS", options.deadline_ms.to_string()),
        ],
    );
    let mut fleet = fleet;
    for (service, url) in &databases {
        fleet.set_for(service, "DATABASE_URL", url.clone());
    }
    let mut run = ChaosRun {
        sandbox,
        log_dir,
        http: reqwest::Client::new(),
        journal: Journal(Instant::now()),
        fleet,
        stops: BTreeMap::new(),
        cluster,
        databases,
    };
    // Ctrl-C or SIGTERM still stops the services (and keeps the rest for inspection).
    let interrupted = service_kit::shutdown_on_signal();
    let result = tokio::select! {
        result = run.execute(&options) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    run.fleet.stop().await;
    let kept = match &result {
        Ok(report) => {
            print!("{report}");
            options.keep || !report.promises_kept()
        }
        Err(_) => true,
    };
    if let Some(cluster) = run.cluster.take() {
        // Its queues and data go with it, kept or not: nothing else can use those ports.
        cluster.remove().await;
    }
    if kept {
        let sandbox = &run.sandbox;
        println!(
            "kept for inspection: database {}, namespace {}, logs in {} \
             (audit it with SHOP_NAMESPACE={} and DATABASE_URL pointing at database {})",
            sandbox.database,
            sandbox.namespace,
            run.log_dir.display(),
            sandbox.namespace,
            sandbox.database,
        );
    } else {
        for url in run.databases.values() {
            if *url != run.sandbox.database_url {
                drop_database(url).await;
            }
        }
        run.sandbox.cleanup(&[&retry_delays()], &[]).await;
        let _ = std::fs::remove_dir_all(&run.log_dir);
    }
    match result {
        Ok(report) if !report.promises_kept() => bail!(
            "the shop broke its promises under faults (logs in {})",
            run.log_dir.display()
        ),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

struct ChaosRun {
    sandbox: Sandbox,
    log_dir: PathBuf,
    http: reqwest::Client,
    journal: Journal,
    fleet: Fleet,
    /// SIGKILLs and SIGTERMs per service.
    stops: BTreeMap<&'static str, (usize, usize)>,
    /// The RabbitMQ cluster of a `--broker-nodes 3` run.
    cluster: Option<LocalCluster>,
    /// Each service's database (all the sandbox's, unless `<SERVICE>_DATABASE_URL` names
    /// another server).
    databases: BTreeMap<&'static str, String>,
}

impl ChaosRun {
    async fn execute(&mut self, options: &ChaosOptions) -> anyhow::Result<Report> {
        self.journal.note(format!(
            "namespace {}, database {}, logs in {}",
            self.sandbox.namespace,
            self.sandbox.database,
            self.log_dir.display()
        ));
        self.start_services(options.replicas).await?;
        if let Some(units) = options.stock {
            self.seed_stock(units).await?;
        }
        let tap = EventTap::start(&self.sandbox.amqp_url, &self.sandbox.namespace).await?;

        let load = place_orders(
            self.http.clone(),
            self.fleet.orders_urls(),
            self.sandbox.namespace.clone(),
            options,
            self.journal,
        );
        let (placed, faults) = tokio::join!(load, self.inject_faults(options, &tap));
        let faults = faults?;
        self.journal
            .note("load and faults done; waiting for the shop to settle");
        tap.close().await;

        let (audit, settled_in) = self.await_settled(options).await?;
        let judged: Vec<Placed> = placed
            .iter()
            .copied()
            .chain(faults.probes.iter().copied())
            .collect();
        let (mut verdict, stock) = self.check_orders(&judged).await?;
        verdict.lost += options.orders - placed.len();
        let absorbed = self.absorbed_duplicates().await?;
        Ok(Report {
            orders: options.orders,
            replicas: options.replicas,
            placed: placed.len(),
            retried_posts: placed.iter().map(|p| p.tries - 1).sum(),
            stops: registry::names()
                .map(|name| {
                    let (kills, terms) = self.stops.get(name).copied().unwrap_or_default();
                    (name, kills, terms)
                })
                .collect(),
            faults,
            absorbed,
            settled_in,
            verdict,
            stock,
            audit,
        })
    }

    fn orders_url(&self) -> String {
        self.fleet.orders_url()
    }

    /// Step 1: every service of the registry as its own processes (`replicas` each), all ready.
    async fn start_services(&mut self, replicas: u16) -> anyhow::Result<()> {
        self.fleet.start(&self.http, usize::from(replicas)).await?;
        self.journal.note(format!(
            "{} service processes up and ready",
            self.fleet.services.len()
        ));
        Ok(())
    }

    /// Step 3, alongside the load: stops and restarts, a broker and a database restart,
    /// duplicate deliveries, spread evenly over the load.
    async fn inject_faults(
        &mut self,
        options: &ChaosOptions,
        tap: &EventTap,
    ) -> anyhow::Result<Faults> {
        let load_duration = Duration::from_secs_f64(options.orders as f64 / options.rate);
        let steps = options.kills + 2;
        let step = load_duration / u32::try_from(steps + 1).unwrap_or(1);
        let broker_at = steps / 3;
        let database_at = 2 * steps / 3;
        let mut faults = Faults {
            broker_recovery: None,
            node_losses: Vec::new(),
            probes: Vec::new(),
            database_restarted: false,
            duplicates_injected: 0,
        };
        for n in 0..steps {
            tokio::time::sleep(step).await;
            let batch = options.duplicates / steps + usize::from(n < options.duplicates % steps);
            match self.inject_duplicates(tap, batch).await {
                Ok(sent) => faults.duplicates_injected += sent,
                Err(e) => self
                    .journal
                    .note(format!("duplicate injection failed: {e}")),
            }
            if n == broker_at && self.cluster.is_some() {
                self.lose_nodes(&mut faults).await?;
            } else if n == broker_at && !options.no_broker_restart {
                let (recovery, probe) = self.restart_broker().await?;
                faults.broker_recovery = Some(recovery);
                faults.probes.push(probe);
            } else if n == database_at && !options.no_database_restart {
                restart_database(self.journal).await?;
                faults.database_restarted = true;
            } else {
                // Every other stop is a clean SIGTERM while busy: in-flight messages must
                // finish or go back to the queue, never be lost.
                let victim = fastrand::usize(..self.fleet.services.len());
                self.stop_and_restart(victim, n % 2 == 1).await?;
            }
        }
        Ok(faults)
    }

    async fn stop_and_restart(&mut self, victim: usize, graceful: bool) -> anyhow::Result<()> {
        let service = &mut self.fleet.services[victim];
        if let Some(child) = service.child.as_mut() {
            if graceful {
                fleet::terminate(child).await;
            } else {
                let _ = child.kill().await;
            }
        }
        let (name, replica, port, label) =
            (service.name, service.replica, service.port, service.label());
        let (kills, terms) = self.stops.entry(name).or_default();
        let signal = if graceful {
            *terms += 1;
            "SIGTERM"
        } else {
            *kills += 1;
            "SIGKILL"
        };
        self.journal.note(format!("{signal} {label}"));
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..1_500))).await;
        self.fleet.services[victim].child = Some(self.fleet.spawn(name, replica, port)?);
        self.journal.note(format!("restarted {label}"));
        Ok(())
    }

    /// Re-publishes `count` already-seen events (same message ids): duplicate deliveries.
    async fn inject_duplicates(&self, tap: &EventTap, count: usize) -> anyhow::Result<usize> {
        let seen = tap.all();
        if seen.is_empty() {
            return Ok(0);
        }
        let picks: Vec<_> = (0..count)
            .map(|_| &seen[fastrand::usize(..seen.len())])
            .collect();
        let connection =
            Connection::connect(&self.sandbox.amqp_url, ConnectionProperties::default()).await?;
        let publisher = Publisher::open(&connection).await?;
        let exchange = service_kit::topology::exchange_name(&self.sandbox.namespace);
        let messages = picks
            .iter()
            .map(|seen| Outgoing {
                exchange: &exchange,
                routing_key: &seen.routing_key,
                body: &seen.body,
                properties: seen.properties.clone(),
            })
            .collect();
        let sent = publisher
            .publish_all(messages)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        let _ = connection.close(200, "duplicates sent".into()).await;
        Ok(sent)
    }

    /// A cluster run's broker faults: the node leading most of the shop's queues is lost, then
    /// (once it is back) the node most services are connected to; after each, an order is
    /// placed and timed to its end, and the node is brought back.
    async fn lose_nodes(&self, faults: &mut Faults) -> anyhow::Result<()> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        for why in ["leading the queues", "most services on it"] {
            // Chosen when it is lost: after the first loss, the services have moved.
            let node = if why == "leading the queues" {
                cluster.leader_node(&self.sandbox.namespace, 0).await?
            } else {
                cluster.busiest_node(0).await?
            };
            let name = cluster.nodes[node].name.clone();
            cluster.stop_node(node).await?;
            let lost = Instant::now();
            self.journal.note(format!("node {name} stopped ({why})"));
            let (outcome, probe) = self.time_probe(lost, &format!("{name}-{why}")).await?;
            let recovery = lost.elapsed();
            self.journal.note(format!(
                "first order {outcome} {:.1}s after losing {name}",
                recovery.as_secs_f64()
            ));
            faults
                .node_losses
                .push((name.clone(), why, recovery, outcome));
            faults.probes.push(probe);
            cluster.start_node(node).await?;
            self.journal.note(format!("node {name} back"));
        }
        Ok(())
    }

    /// Places the probe order (keyed by `label`) and waits for its end: confirmed, or (with a
    /// deadline shorter than the recovery) expired.
    async fn time_probe(
        &self,
        since: Instant,
        label: &str,
    ) -> anyhow::Result<(&'static str, Placed)> {
        let (body, expected) = probe_body();
        let key = format!("{}-probe-{label}", self.sandbox.namespace);
        let (order_id, tries) = place(&self.http, &self.fleet.orders_urls(), &key, &body).await?;
        let deadline = since + Duration::from_secs(120);
        let outcome = loop {
            let ended = order_ended(&self.http, &self.orders_url(), order_id).await;
            match ended {
                Some(ended) if ended.status == "confirmed" => break "confirmed",
                Some(ended) if ended.reason.as_deref() == Some(DEADLINE_EXCEEDED) => {
                    break "expired at its deadline";
                }
                _ if Instant::now() > deadline => {
                    bail!("no order confirmed within 120 s of the broker fault");
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let probe = Placed {
            order_id,
            expected,
            tries,
        };
        Ok((outcome, probe))
    }

    /// Stops the broker's app, checks every service reports not ready, starts it again and
    /// measures how long until a new order (the probe) is confirmed.
    async fn restart_broker(&self) -> anyhow::Result<((Duration, &'static str), Placed)> {
        shell("rabbitmqctl", &["stop_app"]).await?;
        self.journal.note("RabbitMQ stopped (rabbitmqctl stop_app)");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut not_ready = 0;
        while Instant::now() < deadline {
            not_ready = 0;
            for service in &self.fleet.services {
                if !harness::is_ready(&self.http, &service.url()).await {
                    not_ready += 1;
                }
            }
            if not_ready == self.fleet.services.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.journal.note(format!(
            "/readyz while the broker is down: {not_ready} of {} services not ready",
            self.fleet.services.len()
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        shell("rabbitmqctl", &["start_app"]).await?;
        let back = Instant::now();
        self.journal
            .note("RabbitMQ started (rabbitmqctl start_app)");
        let (outcome, probe) = self.time_probe(back, "broker-restart").await?;
        let recovery = back.elapsed();
        self.journal.note(format!(
            "first order {outcome} {:.1}s after the broker came back",
            recovery.as_secs_f64()
        ));
        Ok(((recovery, outcome), probe))
    }

    /// Step 4: every service ready again, then the auditor until the books balance (or the
    /// settle time runs out).
    async fn await_settled(
        &self,
        options: &ChaosOptions,
    ) -> anyhow::Result<(audit::Report, Duration)> {
        self.fleet.wait_ready(&self.http).await?;
        let mut pools: BTreeMap<&str, PgPool> = BTreeMap::new();
        for url in self.databases.values() {
            if !pools.contains_key(url.as_str()) {
                pools.insert(url, PgPool::connect(url).await?);
            }
        }
        let databases = audit::Databases::per_service(|service| {
            let url = self.database_of(service);
            pools[url.as_str()].clone()
        });
        let started = Instant::now();
        let broker = audit::Broker {
            amqp_url: &self.sandbox.amqp_url,
            namespace: &self.sandbox.namespace,
        };
        let report = audit::audit_until_clean(
            &databases,
            Some(&broker),
            Duration::from_secs(options.settle_seconds),
        )
        .await;
        for pool in pools.values() {
            pool.close().await;
        }
        Ok((report?, started.elapsed()))
    }

    /// Sets [`CONFIRMING_SKU`]'s stock before the load (the run owns its database).
    async fn seed_stock(&self, units: u32) -> anyhow::Result<()> {
        let pool = PgPool::connect(&self.database_of("inventory")).await?;
        harness::set_stock(&pool, &[CONFIRMING_SKU], i32::try_from(units)?).await?;
        pool.close().await;
        self.journal
            .note(format!("{CONFIRMING_SKU}: {units} units in stock"));
        Ok(())
    }

    /// Step 5: every accepted order judged against its path (lost if orders does not know
    /// it), and the confirming SKU's stock.
    async fn check_orders(&self, placed: &[Placed]) -> anyhow::Result<(Verdict, StockLevel)> {
        let mut orders = Vec::with_capacity(placed.len());
        for order in placed {
            let ended = order_ended(&self.http, &self.orders_url(), order.order_id).await;
            orders.push((order.expected, ended));
        }
        let pool = PgPool::connect(&self.database_of("inventory")).await?;
        let (seeded, available): (i32, i32) =
            sqlx::query_as("SELECT seeded, available FROM inventory.stock WHERE sku = $1")
                .bind(CONFIRMING_SKU)
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        let stock = StockLevel {
            seeded: seeded.into(),
            available: available.into(),
        };
        Ok((judge(&orders, stock), stock))
    }

    /// Duplicate deliveries each service's inbox absorbed (it counts them durably).
    async fn absorbed_duplicates(&self) -> anyhow::Result<BTreeMap<&'static str, i64>> {
        let mut absorbed = BTreeMap::new();
        for schema in registry::names() {
            let pool = PgPool::connect(&self.database_of(schema)).await?;
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COALESCE(sum(duplicates), 0)::bigint FROM {schema}.inbox"
            )))
            .fetch_one(&pool)
            .await?;
            pool.close().await;
            absorbed.insert(schema, n);
        }
        Ok(absorbed)
    }

    /// The database that keeps `service`'s schema in this run.
    fn database_of(&self, service: &str) -> String {
        self.databases
            .get(service)
            .cloned()
            .unwrap_or_else(|| self.sandbox.database_url.clone())
    }
}

/// Drops the run's database `url` names, on its own server.
async fn drop_database(url: &str) {
    let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return;
    };
    let Some(database) = options.get_database().map(str::to_owned) else {
        return;
    };
    if let Ok(mut admin) = sqlx::PgConnection::connect_with(&options.database("postgres")).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
        let _ = admin.close().await;
    }
}

/// Step 2: the load, at a steady rate, each order retried with its key until accepted.
async fn place_orders(
    http: reqwest::Client,
    orders_urls: Vec<String>,
    key_prefix: String,
    options: &ChaosOptions,
    journal: Journal,
) -> Vec<Placed> {
    let placed: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(64));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    let mut tasks = Vec::new();
    for i in 0..options.orders {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await;
        let placed = placed.clone();
        let key = format!("{key_prefix}-{i}");
        // Round robin over the orders replicas; a retry goes to the next one.
        let (http, mut orders_urls) = (http.clone(), orders_urls.clone());
        let replicas = orders_urls.len().max(1);
        orders_urls.rotate_left(i % replicas);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (body, mut expected, then) = order_body(i);
            match place(&http, &orders_urls, &key, &body).await {
                Ok((order_id, tries)) => {
                    if then == Then::Cancel {
                        expected = cancel(&http, &orders_urls, order_id).await;
                    }
                    placed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Placed {
                            order_id,
                            expected,
                            tries,
                        });
                }
                Err(e) => journal.note(format!("LOST order {key}: {e}")),
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    let placed = placed.lock().unwrap_or_else(PoisonError::into_inner);
    placed.clone()
}

/// Asks to cancel the order until orders answers (a cancel is idempotent, so retrying is safe);
/// the outcome its answer commits the order to.
async fn cancel(http: &reqwest::Client, orders_urls: &[String], order_id: Uuid) -> Expected {
    for attempt in 0..50 {
        let Some(orders_url) = orders_urls.get(attempt % orders_urls.len().max(1)) else {
            break;
        };
        let response = http
            .post(format!("{orders_url}/orders/{order_id}/cancel"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response.map(|r| r.status().as_u16()) {
            Ok(200 | 202) => return Expected::Cancelled(&[CUSTOMER_REQUEST]),
            Ok(409) => return Expected::Confirmed,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Expected::ConfirmedOrCancelledByCustomer
}

/// POSTs until the order is accepted, with the same key every time, trying the orders
/// replicas in turn; `(order id, tries)`.
async fn place(
    http: &reqwest::Client,
    orders_urls: &[String],
    key: &str,
    body: &Value,
) -> anyhow::Result<(Uuid, u32)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut tries = 0;
    loop {
        let Some(orders_url) = orders_urls.get(tries as usize % orders_urls.len().max(1)) else {
            bail!("no orders replica to place order {key} with");
        };
        tries += 1;
        let response = http
            .post(format!("{orders_url}/orders"))
            .header("idempotency-key", key)
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = response
            && response.status() == 202
            && let Ok(placed) = response.json::<Value>().await
            && let Some(id) = placed["order_id"].as_str().and_then(|id| id.parse().ok())
        {
            return Ok((id, tries));
        }
        if Instant::now() > deadline {
            bail!("order {key} not accepted after {tries} tries");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How orders says the order ended (`None` if it does not know the order).
async fn order_ended(http: &reqwest::Client, orders_url: &str, order_id: Uuid) -> Option<Ended> {
    let response = http
        .get(format!("{orders_url}/orders/{order_id}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let order: Value = response.json().await.ok()?;
    Some(Ended {
        status: order["status"].as_str()?.to_owned(),
        reason: order["cancellation_reason"].as_str().map(str::to_owned),
    })
}

async fn restart_database(journal: Journal) -> anyhow::Result<()> {
    let version = postgres_version()?;
    shell(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )
    .await?;
    journal.note(format!(
        "Postgres {version} restarted (pg_ctlcluster restart -m fast)"
    ));
    Ok(())
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
