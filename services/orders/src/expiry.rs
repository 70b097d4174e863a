//! Every saga ends: an order still open at its deadline is cancelled (`deadline_exceeded`)
//! through the same path as a customer's cancellation, so a service that was down and acts
//! late on it undoes what it did. The deadline is a column, not a timer in memory: it survives
//! restarts, and with several orders replicas each due order is locked by exactly one of them
//! (`FOR UPDATE SKIP LOCKED`) and re-checked under that lock.

use std::time::Duration;

use service_kit::{ApiContext, BackgroundFuture, CancellationToken, telemetry::TRACE_TARGET};
use shared_events::{OrderCancelled, participants};
use tokio::time::MissedTickBehavior;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    SAGA_DURATION,
    domain::{Announcement, Cause},
    lock_order, save_order,
};

/// How often due orders are looked for: an order expires within this of its deadline (plus
/// a commit).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Orders expired per transaction, at most.
const BATCH: i64 = 200;
pub(crate) const ORDERS_EXPIRED: &str = "shop_orders_expired_total";

type Outbox = service_kit::Outbox<participants::Orders>;

pub fn run(api: ApiContext, shutdown: CancellationToken) -> BackgroundFuture {
    Box::pin(async move {
        // Exported from the start (as 0): "none expired" rather than no data.
        api.metrics.add(ORDERS_EXPIRED, &[], 0);
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            loop {
                match expire_due(&api).await {
                    Ok(expired) if expired < BATCH as usize => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot expire orders past their deadline; retrying");
                        break;
                    }
                }
            }
        }
    })
}

/// Cancels a batch of orders past their deadline; returns how many.
async fn expire_due(api: &ApiContext) -> Result<usize, sqlx::Error> {
    let mut tx = api.db.begin().await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders.orders
         WHERE status IN ('pending', 'paid', 'stock_reserved') AND deadline_at <= now()
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut announced = Vec::with_capacity(due.len());
    let mut ages = Vec::with_capacity(due.len());
    for order_id in due {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "expire",
            otel.name = "expire order",
            %order_id,
        );
        async {
            let Some(mut order) = lock_order(&mut tx, order_id).await? else {
                return Ok(());
            };
            if let Ok(Some(Announcement::Cancelled { reason })) =
                order.cancel(Cause::DeadlineExceeded)
            {
                ages.push(save_order(&mut tx, order_id, &order).await?);
                tracing::info!("order expired at its deadline; cancelled");
                let cancelled = OrderCancelled { order_id, reason };
                announced.push(Outbox::append(&mut tx, &cancelled, None).await?);
            }
            Ok::<(), sqlx::Error>(())
        }
        .instrument(span)
        .await?;
    }
    let expired = announced.len();
    api.db.commit(tx, announced).await?;
    api.metrics.add(ORDERS_EXPIRED, &[], expired as u64);
    for age in ages {
        api.metrics
            .observe(SAGA_DURATION, &[("outcome", "cancelled")], age);
    }
    Ok(expired)
}
