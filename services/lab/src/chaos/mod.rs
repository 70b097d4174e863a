//! `shop chaos`: the shop under faults, end to end. Starts the six services as processes on a
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
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use service_kit::{
    Config, Style,
    publisher::{Outgoing, Publisher},
};
use shop::{audit, fleet, issuer::DevIssuer, registry};
use sqlx::PgPool;
use tokio::{process::Command, sync::Semaphore};
use uuid::Uuid;

use crate::{
    cluster::LocalCluster,
    harness::{self, EventTap},
    process_shop::{self, ProcessShop},
};

/// Retry delays of the services under test: short, so deferrals resolve within the run.
const RETRY_DELAYS_MS: [u64; 3] = [200, 1_000, 3_000];

/// What half the load buys, one unit per order: its stock decides how many of those orders
/// can be confirmed. Nothing else in the run holds it, so every unit is sold or still there.
const CONFIRMING_SKU: &str = "STICKER-001";

mod faults;
mod load;
mod network;
mod report;
mod verdict;

use load::*;
use report::*;
use verdict::*;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// How the services coordinate: `choreography` (events) or `orchestration` (the saga).
    #[arg(long, default_value_t = Style::Choreography)]
    pub style: Style,
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
    /// Put a proxy in front of every service's broker and database connections and, one
    /// service at a time under the load, make one silent, slow or reset, then heal it (see
    /// docs/operations.md). Not with `--broker-nodes 3`.
    #[arg(long)]
    pub network_faults: bool,
    /// How long a silent or slow network fault lasts.
    #[arg(long, default_value_t = 10)]
    pub fault_seconds: u64,
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

pub async fn run(exe: &Path, options: ChaosOptions) -> anyhow::Result<()> {
    let base = Config::from_env(registry::orders().default_addr)?;
    let mut shop = ProcessShop::create(process_shop::Options {
        exe: exe.to_owned(),
        prefix: "shop_chaos",
        admin_database_url: base.database_url.clone(),
        amqp_url: base.first_amqp_url(),
        retry_delays: RETRY_DELAYS_MS.map(Duration::from_millis).to_vec(),
        replicas: usize::from(options.replicas),
        style: options.style,
        settings: vec![
            ("OUTBOX_SWEEP_MS", "500".to_owned()),
            ("MAX_ATTEMPTS", "30".to_owned()),
            ("ORDER_DEADLINE_MS", options.deadline_ms.to_string()),
        ],
    })
    .await?;
    let cluster = match options.broker_nodes {
        1 => None,
        3 => {
            let started = LocalCluster::start(
                &shop.log_dir.with_extension("rabbitmq"),
                options.broker_nodes,
            )
            .await;
            let cluster = match started {
                Ok(cluster) => cluster,
                Err(e) => {
                    shop.remove().await;
                    return Err(e);
                }
            };
            // The run's own tools (tap, audit) use the first node; the services all of them.
            shop.sandbox.amqp_url = cluster.nodes[0].amqp_url();
            shop.fleet.set("AMQP_URL", cluster.amqp_urls());
            Some(cluster)
        }
        n => {
            shop.remove().await;
            bail!("--broker-nodes {n}: a quorum needs 1 or 3 nodes here")
        }
    };
    let proxies = if options.network_faults {
        let put = match cluster {
            Some(_) => Err(anyhow::anyhow!(
                "--network-faults runs on this machine's broker, not --broker-nodes 3"
            )),
            None => network::Proxies::put_in_front(&mut shop).await,
        };
        match put {
            Ok(proxies) => Some(proxies),
            Err(e) => {
                shop.remove().await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let http = match harness::operator_client(&shop.issuer) {
        Ok(http) => http,
        Err(e) => {
            shop.remove().await;
            return Err(e.into());
        }
    };
    let mut run = ChaosRun {
        shop,
        http,
        journal: Journal(Instant::now()),
        stops: BTreeMap::new(),
        cluster,
        proxies,
    };
    // Ctrl-C or SIGTERM still stops the services (and keeps the rest for inspection).
    let interrupted = service_kit::shutdown_on_signal();
    let result = tokio::select! {
        result = run.execute(&options) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
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
    let log_dir = run.shop.log_dir.clone();
    if kept {
        println!("{}", run.shop.keep().await);
    } else {
        run.shop.remove().await;
    }
    match result {
        Ok(report) if !report.promises_kept() => bail!(
            "the shop broke its promises under faults (logs in {})",
            log_dir.display()
        ),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

struct ChaosRun {
    /// The services, their sandbox, databases and logs.
    shop: ProcessShop,
    http: reqwest::Client,
    journal: Journal,
    /// SIGKILLs and SIGTERMs per service.
    stops: BTreeMap<&'static str, (usize, usize)>,
    /// The RabbitMQ cluster of a `--broker-nodes 3` run.
    cluster: Option<LocalCluster>,
    /// The proxies of a `--network-faults` run.
    proxies: Option<network::Proxies>,
}

impl ChaosRun {
    async fn execute(&mut self, options: &ChaosOptions) -> anyhow::Result<Report> {
        self.journal.note(format!(
            "namespace {}, database {}, logs in {}",
            self.shop.sandbox.namespace,
            self.shop.sandbox.database,
            self.shop.log_dir.display()
        ));
        self.start_services().await?;
        if let Some(units) = options.stock {
            self.seed_stock(units).await?;
        }
        let tap =
            EventTap::start(&self.shop.sandbox.amqp_url, &self.shop.sandbox.namespace).await?;

        let load = place_orders(
            self.http.clone(),
            self.shop.issuer.clone(),
            self.shop.fleet.orders_urls(),
            self.shop.sandbox.namespace.clone(),
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
            stops: registry::names_in(self.shop.fleet.style())
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

    /// The first orders replica's API (the load spreads over all of them).
    fn orders_url(&self) -> String {
        self.shop
            .orders_urls()
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Step 1: every service of the registry as its own processes (`replicas` each), all ready.
    async fn start_services(&mut self) -> anyhow::Result<()> {
        self.shop.start(&self.http, |_| true).await?;
        self.journal.note(format!(
            "{} service processes up and ready",
            self.shop.fleet.services.len()
        ));
        Ok(())
    }

    /// Step 4: every service ready again, then the auditor until the books balance (or the
    /// settle time runs out).
    async fn await_settled(
        &self,
        options: &ChaosOptions,
    ) -> anyhow::Result<(audit::Report, Duration)> {
        self.shop.fleet.wait_ready(&self.http).await?;
        let mut pools: BTreeMap<&str, PgPool> = BTreeMap::new();
        for url in self.shop.databases.values() {
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
            amqp_url: &self.shop.sandbox.amqp_url,
            namespace: &self.shop.sandbox.namespace,
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
        for schema in registry::names_in(self.shop.fleet.style()) {
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
        self.shop
            .databases
            .get(service)
            .cloned()
            .unwrap_or_else(|| self.shop.sandbox.database_url.clone())
    }
}
