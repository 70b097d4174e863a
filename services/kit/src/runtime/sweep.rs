//! Work a service does on its own schedule (a deadline sweep), done the same way everywhere:
//! every `interval` it runs passes until one finds less than a full batch; each pass is bounded
//! by `DB_TIMEOUT_MS`, and the database's absence is logged once per outage, not per tick.

use std::{future::Future, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{
    runtime::{db::Db, outage::Outage},
    service::{ApiContext, BackgroundFuture},
};

/// A sweep of due items in batches (orders', the saga's deadlines).
#[derive(Debug, Clone, Copy)]
pub struct Batches {
    pub interval: Duration,
    /// Items one pass takes at most; a full pass is followed by another at once.
    pub size: usize,
    /// The counter of items handled, exported at 0 from the start ("none yet", not no data).
    pub counter: &'static str,
    /// The database as this sweep sees it, for the outage log.
    pub what: &'static str,
}

/// A service's background work: `pass` (which handles up to `batches.size` due items in a unit
/// of work of its own and says how many) run [`every`] `batches.interval`, its items counted.
pub fn in_batches<F, Fut>(
    api: ApiContext,
    shutdown: CancellationToken,
    batches: Batches,
    pass: F,
) -> BackgroundFuture
where
    F: Fn(ApiContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<usize, sqlx::Error>> + Send,
{
    Box::pin(async move {
        api.metrics.add(batches.counter, &[], 0);
        every(
            &api.db,
            batches.interval,
            batches.what,
            &shutdown,
            || async {
                let handled = pass(api.clone()).await?;
                api.metrics.add(batches.counter, &[], handled as u64);
                Ok(handled >= batches.size)
            },
        )
        .await;
    })
}

/// Runs `pass` every `interval` until `shutdown`; a pass answering `true` (a full batch: more
/// may be waiting) runs again at once. `what` names the database as this sweep sees it.
pub async fn every<F, Fut>(
    db: &Db,
    interval: Duration,
    what: &'static str,
    shutdown: &CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, sqlx::Error>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let database = Outage::new(what);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            match db.bounded(pass()).await {
                Ok(more) => {
                    database.answered();
                    if !more {
                        break;
                    }
                }
                // Waits for the next tick; the outage is logged once, not per tick.
                Err(e) => {
                    database.failed(&e);
                    break;
                }
            }
        }
    }
}
