//! Retention: sent outbox rows and inbox ids are deleted once they are older than their window,
//! so the tables stop growing (docs/architecture.md, "Retention").
//!
//! Deletes go in small batches of the oldest rows (`SKIP LOCKED`, one short transaction each),
//! so pruning never holds a lock a handler or the relay waits on for long, and replicas of a
//! service may prune side by side.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::{
    db::{self, Db},
    metrics::Metrics,
    outage::Outage,
};

/// Rows deleted per statement: small enough for a short transaction.
const BATCH: i64 = 2_000;

/// How long each kind of row is kept, and how often the pruner looks.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub outbox: Duration,
    pub inbox: Duration,
    pub interval: Duration,
}

/// One table's pruning statement: the oldest `$2` rows older than `$1` seconds.
struct Table {
    name: &'static str,
    delete_batch: &'static str,
    vacuum: &'static str,
}

const OUTBOX: Table = Table {
    name: "outbox",
    delete_batch: "DELETE FROM outbox WHERE id IN (
                       SELECT id FROM outbox
                        WHERE sent_at < now() - make_interval(secs => $1)
                        ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    vacuum: "VACUUM (SKIP_LOCKED) outbox",
};

const INBOX: Table = Table {
    name: "inbox",
    delete_batch: "DELETE FROM inbox WHERE message_id IN (
                       SELECT message_id FROM inbox
                        WHERE received_at < now() - make_interval(secs => $1)
                        ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    vacuum: "VACUUM (SKIP_LOCKED) inbox",
};

/// Prunes both tables every `retention.interval` until `shutdown`. A database that is away is
/// simply tried again next time: nothing depends on pruning being prompt.
pub async fn run(db: Db, retention: Retention, metrics: Metrics, shutdown: CancellationToken) {
    let database = Outage::new("the database (as retention sees it)");
    loop {
        for (table, window) in [(&OUTBOX, retention.outbox), (&INBOX, retention.inbox)] {
            let pruned = prune(&db, table, window, &shutdown).await;
            if pruned.is_ok() {
                database.answered();
            }
            match pruned {
                Ok(0) => {}
                Ok(deleted) => {
                    metrics.add("shop_rows_pruned_total", &[("table", table.name)], deleted);
                    tracing::debug!(table = table.name, deleted, "pruned");
                    // Deleted rows free their space only once vacuumed; autovacuum may be off
                    // or behind, so the table would still grow. A plain VACUUM blocks no writer.
                    if let Err(e) = sqlx::query(table.vacuum).execute(&db.pool).await {
                        tracing::warn!(table = table.name, error = %e, "vacuum after pruning failed");
                    }
                }
                Err(e) if db::is_connection_error(&e) => database.failed(&e),
                Err(e) => tracing::warn!(table = table.name, error = %e, "pruning failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retention.interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Deletes every row of `table` older than `window`, batch by batch; returns how many.
async fn prune(
    db: &Db,
    table: &Table,
    window: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    while !shutdown.is_cancelled() {
        let delete = sqlx::query(table.delete_batch)
            .bind(window.as_secs_f64())
            .bind(BATCH)
            .execute(&db.pool);
        let batch = db.bounded(delete).await?.rows_affected();
        deleted += batch;
        if batch < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    Ok(deleted)
}
