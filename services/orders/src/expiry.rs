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

/// How often due orders are looked for: an order expires within this of its deadline (plus
/// a commit).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Orders expired per transaction, at most.
const BATCH: i64 = 200;

pub fn run(api: ApiContext, shutdown: CancellationToken) -> BackgroundFuture {
    Box::pin(async move {
        // Exported from the start (as 0): "none expired" rather than no data.
        api.metrics.add(EXPIRED, &[], 0);
        let what = "the database (as the deadline sweep sees it)";
        sweep::every(&api.db, SWEEP_INTERVAL, what, &shutdown, || async {
            Ok(expire_due(&api).await? == BATCH as usize)
        })
        .await;
    })
}

/// Cancels a batch of orders past their deadline; returns how many.
async fn expire_due(api: &ApiContext) -> Result<usize, sqlx::Error> {
    let mut work = Work::begin(&api.db, &api.metrics).await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders.orders
         WHERE status IN ('pending', 'paid', 'stock_reserved') AND deadline_at <= now()
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
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
            if let Ok(Some(cancelled)) = order.cancel(Cause::DeadlineExceeded) {
                save_and_announce(&mut work, order_id, &order, Some(cancelled)).await?;
                tracing::info!("order expired at its deadline; cancelled");
                expired += 1;
            }
            Ok::<(), sqlx::Error>(())
        }
        .instrument(span)
        .await?;
    }
    work.commit().await?;
    api.metrics.add(EXPIRED, &[], expired as u64);
    Ok(expired)
}
