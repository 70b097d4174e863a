//! Step 7, a late joiner: once the shop has settled, the console loses its schema and starts
//! again with `REPLAY_FROM=start`, one event per transaction. Once it has applied some of the
//! history, the run takes the console's batch lock (as a replica of it would: a real lock in
//! Postgres, held from outside), so the catch-up is certainly still under way, and restarts
//! the broker (a cluster run: loses the node most services are on); then lets go of the lock
//! and brings the broker back. The console must end up with every event the shop announced,
//! each once: its view rebuilt from the history alone.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use shared_events::CATALOG;
use shop::{fleet, registry};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use super::faults::shell;
use super::options::ChaosOptions;
use super::report::LateJoiner;
use super::run::ChaosRun;

/// How long the catch-up may take to begin, and to finish after the fault.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(300);

/// The console's replay row: whether it has read anything, and whether it is done.
async fn replay_state(pool: &PgPool) -> (bool, bool) {
    let row: Option<(Option<i64>, bool)> = sqlx::query_as(
        "SELECT next_offset, finished_at IS NOT NULL FROM console.replay WHERE requested = 'start'",
    )
    .fetch_optional(pool)
    .await
    .unwrap_or(None);
    row.map_or((false, false), |(next, finished)| {
        (next.is_some(), finished)
    })
}

/// Drops the console's schema, which waits for every lock on its tables: a session still
/// holding one (none should, with the console stopped) is named rather than waited for.
async fn drop_console_schema(console: &PgPool) -> anyhow::Result<()> {
    let mut tx = console.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '30s'")
        .execute(&mut *tx)
        .await?;
    if let Err(e) = sqlx::query("DROP SCHEMA console CASCADE")
        .execute(&mut *tx)
        .await
    {
        drop(tx);
        let holders: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT a.application_name, coalesce(a.state, ''), left(a.query, 80)
               FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               JOIN pg_class c ON c.oid = l.relation
              WHERE c.relnamespace = 'console'::regnamespace AND l.granted
                AND a.pid <> pg_backend_pid()",
        )
        .fetch_all(console)
        .await
        .unwrap_or_default();
        anyhow::bail!(
            "the console's schema could not be dropped ({e}); holding its tables: {holders:?}"
        );
    }
    tx.commit().await?;
    Ok(())
}

impl ChaosRun {
    pub(super) async fn late_joiner(
        &mut self,
        options: &ChaosOptions,
    ) -> anyhow::Result<LateJoiner> {
        let console = PgPool::connect(&self.database_of("console")).await?;
        for index in 0..self.shop.fleet.services.len() {
            let service = &mut self.shop.fleet.services[index];
            if service.name == "console"
                && let Some(child) = service.child.as_mut()
            {
                fleet::terminate(child).await;
            }
        }
        drop_console_schema(&console).await?;
        self.journal
            .note("late joiner: the console stopped and its schema dropped");
        for (variable, value) in [("REPLAY_FROM", "start"), ("CONSUMER_BATCH_MAX", "1")] {
            self.shop
                .fleet
                .set_for("console", variable, value.to_owned());
        }
        // Connected before the console starts, so the lock is taken as soon as it is wanted.
        let mut holder = PgConnection::connect(&self.database_of("console")).await?;
        let started = Instant::now();
        for index in 0..self.shop.fleet.services.len() {
            let service = &self.shop.fleet.services[index];
            if service.name == "console" {
                let (replica, port) = (service.replica, service.port);
                self.shop.fleet.services[index].child =
                    Some(self.shop.fleet.spawn("console", replica, port)?);
            }
        }
        self.journal
            .note("late joiner: the console started again with REPLAY_FROM=start");

        let deadline = Instant::now() + CATCH_UP_PATIENCE;
        while !replay_state(&console).await.0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the console's catch-up never began"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The kit's batch lock (`Db::begin_batch`): the console's next batch waits for it.
        sqlx::query("SELECT pg_advisory_lock(hashtext('console.batches'))")
            .execute(&mut holder)
            .await?;
        let interrupted = !replay_state(&console).await.1;
        let fault = self.interrupt(options, holder).await?;
        while !replay_state(&console).await.1 {
            anyhow::ensure!(Instant::now() < deadline, "the console never caught up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed();
        self.journal.note(format!(
            "late joiner: caught up in {:.1}s",
            took.as_secs_f64()
        ));
        let announced = self.announced_events().await?;
        let heard: BTreeSet<Uuid> =
            sqlx::query_scalar::<_, Uuid>("SELECT message_id FROM console.events")
                .fetch_all(&console)
                .await?
                .into_iter()
                .collect();
        console.close().await;
        let history_replicas = match &self.cluster {
            Some(cluster) => {
                let history = service_kit::history::history_name(&self.shop.sandbox.namespace);
                Some(cluster.members_of(&history, 0).await?)
            }
            None => None,
        };
        Ok(LateJoiner {
            interrupted: interrupted && !fault.is_empty(),
            fault,
            announced: announced.len(),
            heard: announced.intersection(&heard).count(),
            history_replicas,
            took,
        })
    }

    /// Stops the broker (a cluster: the node most services are on) while the catch-up is held
    /// by the batch lock in `holder`, lets go of the lock and brings the broker back; says what
    /// it did, or nothing when no fault may be made.
    async fn interrupt(
        &self,
        options: &ChaosOptions,
        holder: PgConnection,
    ) -> anyhow::Result<String> {
        let fault = if let Some(cluster) = &self.cluster {
            let node = cluster.busiest_node(0).await?;
            let name = cluster.nodes[node].name.clone();
            cluster.stop_node(node).await?;
            self.journal
                .note(format!("late joiner: node {name} stopped mid-catch-up"));
            Some((format!("node {name} lost"), Some(node)))
        } else if options.no_broker_restart {
            None
        } else {
            shell("rabbitmqctl", &["stop_app"]).await?;
            self.journal
                .note("late joiner: RabbitMQ stopped mid-catch-up");
            Some(("broker restarted".to_owned(), None))
        };
        // Closing the session lets go of the lock: the catch-up goes on (once connected).
        holder.close().await?;
        let Some((fault, node)) = fault else {
            return Ok(String::new());
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        match (&self.cluster, node) {
            (Some(cluster), Some(node)) => cluster.start_node(node).await?,
            _ => shell("rabbitmqctl", &["start_app"]).await?,
        }
        self.journal.note("late joiner: the broker is whole again");
        Ok(fault)
    }

    /// Every event the shop's services announced (their outboxes; commands are not history).
    async fn announced_events(&self) -> anyhow::Result<BTreeSet<Uuid>> {
        let events: Vec<&str> = CATALOG.iter().map(|event| event.event_type).collect();
        let mut announced = BTreeSet::new();
        for service in registry::names_in(self.shop.fleet.style()) {
            let pool = PgPool::connect(&self.database_of(service)).await?;
            let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT message_id FROM {service}.outbox WHERE event_type = ANY($1)"
            )))
            .bind(&events)
            .fetch_all(&pool)
            .await?;
            pool.close().await;
            announced.extend(ids);
        }
        Ok(announced)
    }
}
