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
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use service_kit::Config;
use shop::registry;

use crate::{
    cluster::LocalCluster,
    harness::{self},
    process_shop::{self, ProcessShop},
};

/// Retry delays of the services under test: short, so deferrals resolve within the run.
const RETRY_DELAYS_MS: [u64; 3] = [200, 1_000, 3_000];

mod faults;
mod late_joiner;
mod load;
mod network;
mod options;
mod report;
mod run;
mod verdict;

pub use options::ChaosOptions;
use options::Journal;
use run::ChaosRun;

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
