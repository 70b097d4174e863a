//! Every saga ends: an order still open at its deadline is cancelled (`deadline_exceeded`)
//! through the same path as a customer's cancellation, so a service that was down and acts
//! late on it undoes what it did. The deadline is a column, not a timer in memory: it survives
//! restarts, and with several orders replicas each due order is locked by exactly one of them
//! (`FOR UPDATE SKIP LOCKED`) and re-checked under that lock.

use std::time::Duration;

use service_kit::{
    ApiContext, BackgroundFuture, CancellationToken, sweep, telemetry::TRACE_TARGET,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::Cause,
    metrics::EXPIRED,
    store::{Work, lock_order, save_and_announce},
};

/// Due orders are looked for every half second, so an order expires within that of its
/// deadline (plus a commit); at most 200 per transaction.
const DEADLINES: sweep::Batches = sweep::Batches {
    interval: Duration::from_millis(500),
    size: 200,
    counter: EXPIRED,
    what: "the database (as the deadline sweep sees it)",
};

pub fn run(api: ApiContext, shutdown: CancellationToken) -> BackgroundFuture {
    sweep::in_batches(api, shutdown, DEADLINES, expire_due)
}

/// Cancels a batch of orders past their deadline; returns how many.
async fn expire_due(api: ApiContext) -> Result<usize, sqlx::Error> {
    let mut work = Work::begin(&api.db, &api.metrics).await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders.orders
         WHERE status IN ('pending', 'paid', 'stock_reserved') AND deadline_at <= now()
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(DEADLINES.size as i64)
    .fetch_all(work.db())
    .await?;
    let mut expired = 0;
    for order_id in due {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "expire",
            otel.name = "expire order",
            %order_id,
        );
        async {
            let Some(mut order) = lock_order(work.db(), order_id).await? else {
                return Ok(());
            };
            let before = order.clone();
            if let Ok(Some(cancelled)) = order.cancel(Cause::DeadlineExceeded) {
                save_and_announce(&mut work, order_id, &before, &order, Some(cancelled)).await?;
                tracing::info!("order expired at its deadline; cancelled");
                expired += 1;
            }
            Ok::<(), sqlx::Error>(())
        }
        .instrument(span)
        .await?;
    }
    work.commit().await?;
    Ok(expired)
}
