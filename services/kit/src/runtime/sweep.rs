//! Work a service does on its own schedule (a deadline sweep), done the same way everywhere:
//! every `interval` it runs passes until one finds less than a full batch; each pass is bounded
//! by `DB_TIMEOUT_MS`, and the database's absence is logged once per outage, not per tick.

use std::{future::Future, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::runtime::{db::Db, outage::Outage};

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
