//! # Orders
//!
//! - **Serves** the shop's HTTP API: place an order, read orders, list the catalog.
//! - **Subscribes to** every outcome of the saga: PaymentCompleted, StockReserved,
//!   ShipmentBooked (progress), PaymentFailed, StockReservationFailed, ShipmentFailed
//!   (cancel), PaymentRefunded and StockReleased (compensations seen: settled).
//! - **Owns** `orders.products` (the catalog and its prices), `orders.orders`,
//!   `orders.order_items`.
//! - **Announces** OrderPlaced, OrderConfirmed, OrderCancelled.

pub mod api;
pub mod domain;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use domain::{Announcement, Fact, Failure, Order, Status};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec};
use shared_events::{
    OrderCancelled, OrderConfirmed, PaymentCompleted, PaymentFailed, PaymentRefunded,
    ShipmentBooked, ShipmentFailed, StockReleased, StockReservationFailed, StockReserved,
    participants,
};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// What orders reacts to, and how. This table also declares the queue's bindings.
pub fn routes() -> Routes<Orders> {
    Routes::<Orders>::new()
        .on::<PaymentCompleted>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::Paid)))
        .on::<StockReserved>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::StockReserved)))
        .on::<ShipmentBooked>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::ShipmentBooked)))
        .on::<PaymentFailed>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, failed(Failure::PaymentFailed, e.reason)))
        })
        .on::<StockReservationFailed>(|o, ctx, e| {
            Box::pin(o.record(
                ctx,
                e.order_id,
                failed(Failure::StockReservationFailed, e.reason),
            ))
        })
        .on::<ShipmentFailed>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, failed(Failure::ShipmentFailed, e.reason)))
        })
        .on::<PaymentRefunded>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::Refunded)))
        .on::<StockReleased>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::StockReleased)))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/orders"),
        routes: routes(),
        state: Orders,
        http: Some(api::routes),
    };
    service_kit::bind(config, spec).await
}

/// The columns of `orders.orders` that the saga moves.
#[derive(sqlx::FromRow)]
pub(crate) struct Progress {
    status: Status,
    cancelled_by: Option<Failure>,
    cancellation_reason: Option<String>,
    refund_seen: bool,
    release_seen: bool,
}

impl Progress {
    pub(crate) fn order(&self) -> Order {
        Order {
            status: self.status,
            cancelled_by: self.cancelled_by,
            cancellation_reason: self.cancellation_reason.clone(),
            refund_seen: self.refund_seen,
            release_seen: self.release_seen,
        }
    }
}

fn failed(failure: Failure, reason: String) -> Fact {
    Fact::Failed { failure, reason }
}

pub struct Orders;

impl Service for Orders {
    type Participant = participants::Orders;
}

/// Placed → confirmed or cancelled, in seconds (a histogram on `/metrics`).
const SAGA_DURATION: &str = "shop_saga_duration_seconds";

/// A handler's context: the transaction, and orders's own events to announce.
type Ctx = service_kit::Ctx<participants::Orders>;

impl Orders {
    /// Applies a fact to the order (locked, so concurrent facts for one order take turns) and
    /// announces the confirmation or cancellation it leads to.
    async fn record(&self, ctx: &mut Ctx, order_id: Uuid, fact: Fact) -> Result<(), HandlerError> {
        let progress: Option<Progress> = sqlx::query_as(
            "SELECT status, cancelled_by, cancellation_reason, refund_seen, release_seen
             FROM orders.orders WHERE id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(ctx.db())
        .await?;
        let Some(progress) = progress else {
            return Err(HandlerError::Deferred(format!(
                "order {order_id} is unknown here"
            )));
        };
        let mut order = progress.order();
        let before = order.clone();
        let announcement = order.apply(fact.clone());
        if order == before {
            tracing::info!(
                ?fact,
                status = ?order.status,
                "fact changes nothing"
            );
            return Ok(());
        }
        let age_seconds: f64 = sqlx::query_scalar(
            "UPDATE orders.orders
             SET status = $2, cancelled_by = $3, cancellation_reason = $4,
                 refund_seen = $5, release_seen = $6, updated_at = now()
             WHERE id = $1
             RETURNING extract(epoch FROM now() - created_at)::float8",
        )
        .bind(order_id)
        .bind(order.status)
        .bind(order.cancelled_by)
        .bind(&order.cancellation_reason)
        .bind(order.refund_seen)
        .bind(order.release_seen)
        .fetch_one(ctx.db())
        .await?;
        tracing::info!(
            status = ?order.status,
            settled = order.settled(),
            "order updated"
        );
        match announcement {
            Some(Announcement::Confirmed) => {
                ctx.announce(&OrderConfirmed { order_id }).await?;
                ctx.observe_on_commit(SAGA_DURATION, ("outcome", "confirmed"), age_seconds);
            }
            Some(Announcement::Cancelled { reason }) => {
                ctx.announce(&OrderCancelled { order_id, reason }).await?;
                ctx.observe_on_commit(SAGA_DURATION, ("outcome", "cancelled"), age_seconds);
            }
            None => {}
        }
        Ok(())
    }
}
