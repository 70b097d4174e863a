//! The target: a shop of our own, or a running one.

use std::{collections::BTreeMap, path::Path, time::Duration};

use service_kit::Config;
use shop::{
    issuer::{self, DevIssuer, IssuerError},
    registry,
};
use sqlx::{PgPool, postgres::PgPoolOptions};

use super::batches::*;
use super::figures::*;
use super::mix::*;
use super::options::*;
use super::processes::*;
use crate::{
    harness::{self},
    process_shop::{self, ProcessShop},
};

pub(super) struct Target {
    /// Every orders replica's API; orders go round robin.
    pub(super) orders_urls: Vec<String>,
    pub(super) amqp_url: String,
    pub(super) namespace: String,
    /// Our own shop's database (sizes, commit counts); none for a running shop.
    pub(super) database: Option<PgPool>,
    pub(super) own: Option<ProcessShop>,
    /// The load's customers' tokens (customer `i` at index `i`): signed by our own shop's
    /// issuer, or for a running shop with the development key `shop up` serves.
    pub(super) tokens: Vec<String>,
}

/// A token for each of the load's customers.
fn tokens(issuer: &DevIssuer) -> Result<Vec<String>, IssuerError> {
    (0..CUSTOMERS)
        .map(|i| issuer.token(&customer(i), false, Duration::from_secs(24 * 3600)))
        .collect()
}

impl Target {
    /// Starts the services the benchmark measures on a fresh database and namespace, with the
    /// stock set for the mix, or finds the running shop at `url`.
    pub(super) async fn open(
        exe: &Path,
        options: &BenchOptions,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let base = Config::from_env(registry::orders().default_addr)?;
        if let Some(url) = &options.url {
            return Ok(Self {
                orders_urls: vec![url.trim_end_matches('/').to_owned()],
                amqp_url: base.first_amqp_url(),
                namespace: base.namespace,
                database: None,
                own: None,
                tokens: tokens(&DevIssuer::load_or_create(&issuer::default_key_path())?)?,
            });
        }
        let mut settings = Vec::new();
        let mut retry_delays = base.retry_delays.clone();
        if options.soak {
            // Windows short enough to be reached within the soak's first minutes, and still
            // within the rule: the inbox (120 s) outlasts the retry schedule (36 s with these
            // delays and 10 attempts) plus the dead-letter age (60 s).
            retry_delays = [250, 1_000, 5_000].map(Duration::from_millis).to_vec();
            settings.extend([
                ("OUTBOX_RETENTION_SECS", "60".to_owned()),
                ("DEAD_LETTER_MAX_AGE_SECS", "60".to_owned()),
                ("INBOX_RETENTION_SECS", "120".to_owned()),
                ("PRUNE_INTERVAL_SECS", "10".to_owned()),
            ]);
        }
        let replicas = usize::from(options.replicas);
        if replicas == 1 {
            // One process per service gets the services' own default pool.
            settings.push(("DB_POOL_SIZE", base.db_pool_size.to_string()));
        }
        let mut shop = ProcessShop::create(process_shop::Options {
            exe: exe.to_owned(),
            prefix: "shop_bench",
            admin_database_url: base.database_url.clone(),
            amqp_url: base.first_amqp_url(),
            retry_delays,
            replicas,
            style: options.style,
            settings,
        })
        .await?;
        let opened = async {
            shop.start(http, measured).await?;
            let database = PgPoolOptions::new()
                .max_connections(CONCURRENCY as u32 + 2)
                .connect(&shop.sandbox.database_url)
                .await?;
            harness::set_stock(&database, &SKUS, PLENTY).await?;
            harness::set_stock(&database, &[SOLD_OUT_SKU], 0).await?;
            anyhow::ensure!(!shop.orders_urls().is_empty(), "no orders process started");
            Ok((database, tokens(&shop.issuer)?))
        }
        .await;
        match opened {
            Ok((database, tokens)) => Ok(Self {
                orders_urls: shop.orders_urls(),
                amqp_url: shop.sandbox.amqp_url.clone(),
                namespace: shop.sandbox.namespace.clone(),
                database: Some(database),
                tokens,
                own: Some(shop),
            }),
            Err(e) => {
                shop.remove().await;
                Err(e)
            }
        }
    }

    pub(super) fn services(&self) -> Vec<Measured> {
        match &self.own {
            Some(shop) => registry::names_in(shop.fleet.style())
                .filter(|name| measured(name))
                .map(|name| Measured {
                    name: name.to_owned(),
                    pids: shop
                        .fleet
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

    pub(super) async fn close(self) {
        if let Some(database) = &self.database {
            database.close().await;
        }
        if let Some(shop) = self.own {
            shop.remove().await;
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

    /// Every service process's `/metrics`, by service name.
    async fn metrics(&self, http: &reqwest::Client) -> Option<Vec<(String, String)>> {
        let own = self.own.as_ref()?;
        let mut texts = Vec::new();
        for service in &own.fleet.services {
            let text = http
                .get(format!("{}/metrics", service.url()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            texts.push((service.name.to_owned(), text));
        }
        Some(texts)
    }

    /// Deliveries handled by all services so far, and of those the ones parked and the ones
    /// sent to a retry queue (their `shop_messages_total` counters; a parked message's later
    /// application is not a delivery); and each service's batch sizes so far.
    async fn deliveries(
        &self,
        http: &reqwest::Client,
    ) -> Option<((u64, u64, u64), BTreeMap<String, BatchHistogram>)> {
        let (mut total, mut parked, mut retried) = (0, 0, 0);
        let mut batches: BTreeMap<String, BatchHistogram> = BTreeMap::new();
        for (service, text) in self.metrics(http).await? {
            batches.entry(service).or_default().add(&text);
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
        Some(((total, parked, retried), batches))
    }
}

/// What the shop had done so far, read before and after a stretch of load.
pub(super) struct Counters {
    commits: i64,
    /// Deliveries, of which parked, of which retried.
    deliveries: (u64, u64, u64),
    batches: BTreeMap<String, BatchHistogram>,
}

impl Counters {
    /// `None` for a shop that is not our own (its database and metrics are not ours to read).
    pub(super) async fn read(target: &Target, http: &reqwest::Client) -> Option<Self> {
        let commits = target.commits().await?;
        let (deliveries, batches) = target.deliveries(http).await?;
        Some(Self {
            commits,
            deliveries,
            batches,
        })
    }

    /// Per settled order (`settled` of them) and per service's batches, since `before`.
    pub(super) fn since(
        &self,
        before: &Self,
        settled: u64,
    ) -> (Option<PerOrder>, BTreeMap<String, BatchFigures>) {
        let batch = self
            .batches
            .iter()
            .filter_map(|(service, histogram)| {
                let earlier = before.batches.get(service).cloned().unwrap_or_default();
                Some((service.clone(), histogram.since(&earlier)?))
            })
            .collect();
        if settled == 0 {
            return (None, batch);
        }
        let per = |n: u64| n as f64 / settled as f64;
        let delta = |after: u64, before: u64| after.saturating_sub(before);
        let per_order = PerOrder {
            transactions: round1(per(
                u64::try_from(self.commits - before.commits).unwrap_or(0)
            )),
            deliveries: round1(per(delta(self.deliveries.0, before.deliveries.0))),
            parked: round3(per(delta(self.deliveries.1, before.deliveries.1))),
            retried: round3(per(delta(self.deliveries.2, before.deliveries.2))),
        };
        (Some(per_order), batch)
    }
}
