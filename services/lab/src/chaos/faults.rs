//! The faults: stops and restarts of services, a broker and a database restart (or lost
//! cluster nodes), and duplicate deliveries, spread over the load.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::{Connection, ConnectionProperties};
use service_kit::publisher::{Outgoing, Publisher};
use shop::fleet;
use sqlx::PgPool;
use tokio::process::Command;

use super::load::*;
use super::network;
use super::network::*;
use super::options::*;
use super::report::*;
use super::run::*;
use super::verdict::*;
use crate::harness::{self, EventTap};

impl ChaosRun {
    /// Step 3, alongside the load: stops and restarts, a broker and a database restart,
    /// duplicate deliveries, spread evenly over the load.
    pub(super) async fn inject_faults(
        &mut self,
        options: &ChaosOptions,
        tap: &EventTap,
    ) -> anyhow::Result<Faults> {
        let load_duration = Duration::from_secs_f64(options.orders as f64 / options.rate);
        let network_faults = if options.network_faults {
            network::SCHEDULE.as_slice()
        } else {
            &[]
        };
        let steps = options.kills + 2 + network_faults.len();
        let hold = Duration::from_secs(options.fault_seconds);
        // A network fault lasts its hold and its recovery: the other steps share what is left
        // of the load, so every fault happens under load (given a load long enough).
        let network_busy =
            (hold + network::RECOVERY_ALLOWANCE) * u32::try_from(network_faults.len()).unwrap_or(0);
        let step =
            load_duration.saturating_sub(network_busy) / u32::try_from(steps + 1).unwrap_or(1);
        let broker_at = steps / 3;
        let database_at = 2 * steps / 3;
        // Spread between the others, each on a step of its own: a taken step passes it on to
        // the next free one (there are enough: the restarts and the faults are all counted).
        let mut network_at = Vec::with_capacity(network_faults.len());
        for i in 0..network_faults.len() {
            let mut at = (2 * i + 1) * steps / (2 * network_faults.len());
            while at == broker_at || at == database_at || network_at.contains(&at) {
                at = (at + 1) % steps;
            }
            network_at.push(at);
        }
        let mut faults = Faults {
            broker_recovery: None,
            node_losses: Vec::new(),
            probes: Vec::new(),
            database_restarted: false,
            duplicates_injected: 0,
            network: Vec::new(),
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
            if let Some(i) = network_at.iter().position(|&at| at == n) {
                let (observed, probe) = self.network_fault(network_faults[i], hold).await?;
                faults.network.push(observed);
                faults.probes.push(probe);
            } else if n == broker_at && self.cluster.is_some() {
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
                let victim = fastrand::usize(..self.shop.fleet.services.len());
                self.stop_and_restart(victim, n % 2 == 1).await?;
            }
        }
        Ok(faults)
    }

    pub(super) async fn stop_and_restart(
        &mut self,
        victim: usize,
        graceful: bool,
    ) -> anyhow::Result<()> {
        let service = &mut self.shop.fleet.services[victim];
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
        self.shop.fleet.services[victim].child = Some(self.shop.fleet.spawn(name, replica, port)?);
        self.journal.note(format!("restarted {label}"));
        Ok(())
    }

    /// Re-publishes `count` already-seen events (same message ids): duplicate deliveries.
    pub(super) async fn inject_duplicates(
        &self,
        tap: &EventTap,
        count: usize,
    ) -> anyhow::Result<usize> {
        let seen = tap.all();
        if seen.is_empty() {
            return Ok(0);
        }
        let picks: Vec<_> = (0..count)
            .map(|_| &seen[fastrand::usize(..seen.len())])
            .collect();
        let connection =
            Connection::connect(&self.shop.sandbox.amqp_url, ConnectionProperties::default())
                .await?;
        let publisher = Publisher::open(&connection, &self.shop.sandbox.amqp_url).await?;
        let exchange = service_kit::topology::exchange_name(&self.shop.sandbox.namespace);
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
    pub(super) async fn lose_nodes(&self, faults: &mut Faults) -> anyhow::Result<()> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        for why in ["leading the queues", "most services on it"] {
            // Chosen when it is lost: after the first loss, the services have moved.
            let node = if why == "leading the queues" {
                cluster.leader_node(&self.shop.sandbox.namespace, 0).await?
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
    pub(super) async fn time_probe(
        &self,
        since: Instant,
        label: &str,
    ) -> anyhow::Result<(&'static str, Placed)> {
        let (body, expected) = probe_body();
        let key = format!("{}-probe-{label}", self.shop.sandbox.namespace);
        let token = harness::token_for(&self.shop.issuer, &body)?;
        let orders_urls = self.shop.fleet.orders_urls();
        let (order_id, tries) = place(&self.http, &orders_urls, &key, &body, &token).await?;
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
    pub(super) async fn restart_broker(
        &self,
    ) -> anyhow::Result<((Duration, &'static str), Placed)> {
        shell("rabbitmqctl", &["stop_app"]).await?;
        self.journal.note("RabbitMQ stopped (rabbitmqctl stop_app)");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut not_ready = 0;
        while Instant::now() < deadline {
            not_ready = 0;
            for service in &self.shop.fleet.services {
                if !fleet::is_ready(&self.http, &service.url()).await {
                    not_ready += 1;
                }
            }
            if not_ready == self.shop.fleet.services.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.journal.note(format!(
            "/readyz while the broker is down: {not_ready} of {} services not ready",
            self.shop.fleet.services.len()
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
}

pub(super) async fn shell(program: &str, args: &[&str]) -> anyhow::Result<()> {
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

pub(super) fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: cannot restart Postgres (use --no-database-restart)")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no Postgres cluster in /etc/postgresql")
}

pub(super) async fn restart_database(journal: Journal) -> anyhow::Result<()> {
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

/// A network fault (`--network-faults`), injected through the service's proxy.
impl ChaosRun {
    /// Injects `fault` for `hold` (a reset is instant), watching the service's readiness, heals
    /// it and times a new order to its end.
    pub(super) async fn network_fault(
        &self,
        fault: NetworkFault,
        hold: Duration,
    ) -> anyhow::Result<(Observed, Placed)> {
        let proxy = self
            .proxies
            .as_ref()
            .and_then(|proxies| proxies.0.get(&(fault.service, fault.dependency)))
            .context("no proxy in front of that service")?;
        let hold = match fault.kind {
            Kind::Silent => {
                proxy.silence();
                hold
            }
            Kind::Slow => {
                proxy.slow(LATENCY);
                hold
            }
            Kind::Reset => {
                proxy.reset();
                Duration::ZERO
            }
        };
        let started = Instant::now();
        self.journal.note(format!("network fault: {fault}"));
        let urls: Vec<String> = self
            .shop
            .fleet
            .services
            .iter()
            .filter(|s| s.name == fault.service)
            .map(|s| s.url())
            .collect();
        let mut noticed = None;
        while started.elapsed() < hold {
            if noticed.is_none() {
                for url in &urls {
                    if !fleet::is_ready(&self.http, url).await {
                        noticed = Some(started.elapsed());
                        self.journal.note(format!(
                            "{} reports not ready {:.1}s into the fault",
                            fault.service,
                            started.elapsed().as_secs_f64()
                        ));
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proxy.heal();
        let healed = Instant::now();
        self.journal.note(format!("healed: {fault}"));
        let orders = PgPool::connect(&self.shop.databases["orders"]).await?;
        let label = fault.to_string().replace(' ', "-");
        let (settled, probed) = tokio::join!(settled_since(&orders, healed), async {
            let probed = self.time_probe(healed, &label).await;
            (probed, healed.elapsed())
        });
        orders.close().await;
        let settled = settled?;
        let (probed, recovered) = probed;
        let (outcome, probe) = probed?;
        self.journal.note(format!(
            "every earlier order settled {:.1}s after the heal",
            settled.as_secs_f64()
        ));
        let observed = Observed {
            fault,
            held: hold,
            noticed,
            settled,
            recovered,
            outcome,
        };
        Ok((observed, probe))
    }
}
