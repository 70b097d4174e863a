//! One chaos run: the shop it started, and its steps in order (start, load alongside faults,
//! wait for the shop to settle, check every order, count absorbed duplicates, a late joiner
//! catching up from the history through a broker fault).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use shop::{audit, registry};
use sqlx::PgPool;

use super::load::*;
use super::network;
use super::options::*;
use super::report::*;
use super::verdict::*;
use crate::{
    cluster::LocalCluster,
    harness::{self, EventTap},
    process_shop::ProcessShop,
};

pub(super) struct ChaosRun {
    /// The services, their sandbox, databases and logs.
    pub(super) shop: ProcessShop,
    pub(super) http: reqwest::Client,
    pub(super) journal: Journal,
    /// SIGKILLs and SIGTERMs per service.
    pub(super) stops: BTreeMap<&'static str, (usize, usize)>,
    /// The RabbitMQ cluster of a `--broker-nodes 3` run.
    pub(super) cluster: Option<LocalCluster>,
    /// The proxies of a `--network-faults` run.
    pub(super) proxies: Option<network::Proxies>,
}

impl ChaosRun {
    pub(super) async fn execute(&mut self, options: &ChaosOptions) -> anyhow::Result<Report> {
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
        self.journal.note(format!(
            "audited after {:.1}s; judging every order",
            settled_in.as_secs_f64()
        ));
        let judged: Vec<Placed> = placed
            .iter()
            .copied()
            .chain(faults.probes.iter().copied())
            .collect();
        let (mut verdict, stock) = self.check_orders(&judged).await?;
        verdict.lost += options.orders - placed.len();
        let absorbed = self.absorbed_duplicates().await?;
        let late_joiner = if options.no_late_joiner {
            None
        } else {
            Some(self.late_joiner(options).await?)
        };
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
            late_joiner,
        })
    }

    /// The first orders replica's API (the load spreads over all of them).
    pub(super) fn orders_url(&self) -> String {
        self.shop
            .orders_urls()
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Step 1: every service of the registry as its own processes (`replicas` each), all ready.
    pub(super) async fn start_services(&mut self) -> anyhow::Result<()> {
        self.shop.start(&self.http, |_| true).await?;
        self.journal.note(format!(
            "{} service processes up and ready",
            self.shop.fleet.services.len()
        ));
        Ok(())
    }

    /// Step 4: every service ready again, then the auditor until the books balance (or the
    /// settle time runs out).
    pub(super) async fn await_settled(
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
    pub(super) async fn seed_stock(&self, units: u32) -> anyhow::Result<()> {
        let pool = PgPool::connect(&self.database_of("inventory")).await?;
        harness::set_stock(&pool, &[CONFIRMING_SKU], i32::try_from(units)?).await?;
        pool.close().await;
        self.journal
            .note(format!("{CONFIRMING_SKU}: {units} units in stock"));
        Ok(())
    }

    /// Step 5: every accepted order judged against its path (lost if orders does not know
    /// it), and the confirming SKU's stock.
    pub(super) async fn check_orders(
        &self,
        placed: &[Placed],
    ) -> anyhow::Result<(Verdict, StockLevel)> {
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
    pub(super) async fn absorbed_duplicates(&self) -> anyhow::Result<BTreeMap<&'static str, i64>> {
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
    pub(super) fn database_of(&self, service: &str) -> String {
        self.shop
            .databases
            .get(service)
            .cloned()
            .unwrap_or_else(|| self.shop.sandbox.database_url.clone())
    }
}
