//! # Orders
//!
//! - **Serves** the shop's HTTP API: place an order, cancel it, read orders, list the catalog.
//! - **Subscribes to** (choreography) every outcome of the saga: PaymentCompleted,
//!   StockReserved, ShipmentBooked (progress), PaymentFailed, StockReservationFailed,
//!   ShipmentFailed (cancel), and each participant's answer to a cancellation: PaymentRefunded
//!   or PaymentVoided, StockReleased or ReservationVoided, ShipmentCancelled or ShipmentVoided
//!   (all three seen: settled).
//! - **Handles** (orchestration) the saga's ConfirmOrder, CancelOrder and SettleOrder: the
//!   same facts, told instead of heard.
//! - **Expires** orders still open at their deadline (`ORDER_DEADLINE_MS`), as if the customer
//!   had cancelled them (choreography; orchestrated, the deadline is the saga's).
//! - **Owns** `orders.products` (the catalog and its prices), `orders.orders` (with each
//!   order's deadline), `orders.order_items`.
//! - **Announces** OrderPlaced, OrderConfirmed, OrderCancelled.

mod admission;
pub mod api;
pub mod domain;
pub mod expiry;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use domain::{Announcement, Cause, Fact, Order, Status};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec, Style};
use shared_events::{
    CancelCause, CancelOrder, ConfirmOrder, OrderCancelled, OrderConfirmed, PaymentCompleted,
    PaymentFailed, PaymentRefunded, PaymentVoided, ReservationVoided, SettleOrder, ShipmentBooked,
    ShipmentCancelled, ShipmentFailed, ShipmentVoided, StockReleased, StockReservationFailed,
    StockReserved, participants,
};
use sqlx::PgConnection;
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// What orders reacts to (or, orchestrated, is told), and how. This table also declares the
/// queue's bindings.
pub fn routes(style: Style) -> Routes<Orders> {
    match style {
        Style::Choreography => reactions(),
        Style::Orchestration => Routes::<Orders>::new()
            // The saga's word that the last step, the shipment, is booked.
            .on::<ConfirmOrder>(|o, ctx, c| {
                Box::pin(o.record(ctx, c.order_id, Fact::ShipmentBooked))
            })
            .on::<CancelOrder>(|o, ctx, c| {
                Box::pin(o.record(ctx, c.order_id, failed(cause_of(c.cause), c.reason)))
            })
            .on::<SettleOrder>(|o, ctx, c| Box::pin(o.record(ctx, c.order_id, Fact::WalkedBack))),
    }
}

fn cause_of(cause: CancelCause) -> Cause {
    match cause {
        CancelCause::PaymentFailed => Cause::PaymentFailed,
        CancelCause::StockReservationFailed => Cause::StockReservationFailed,
        CancelCause::ShipmentFailed => Cause::ShipmentFailed,
        CancelCause::DeadlineExceeded => Cause::DeadlineExceeded,
    }
}

fn reactions() -> Routes<Orders> {
    Routes::<Orders>::new()
        .on::<PaymentCompleted>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::Paid)))
        .on::<StockReserved>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::StockReserved)))
        .on::<ShipmentBooked>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::ShipmentBooked)))
        .on::<PaymentFailed>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, failed(Cause::PaymentFailed, e.reason)))
        })
        .on::<StockReservationFailed>(|o, ctx, e| {
            Box::pin(o.record(
                ctx,
                e.order_id,
                failed(Cause::StockReservationFailed, e.reason),
            ))
        })
        .on::<ShipmentFailed>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, failed(Cause::ShipmentFailed, e.reason)))
        })
        .on::<PaymentRefunded>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::Refunded)))
        .on::<StockReleased>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::StockReleased)))
        .on::<PaymentVoided>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::PaymentVoided)))
        .on::<ReservationVoided>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, Fact::ReservationVoided))
        })
        .on::<ShipmentCancelled>(|o, ctx, e| {
            Box::pin(o.record(ctx, e.order_id, Fact::ShipmentUndone))
        })
        .on::<ShipmentVoided>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::ShipmentUndone)))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/orders"),
        routes: routes(config.style),
        state: Orders,
        http: Some(api::routes),
        guards_customer_data: true,
        // Orchestrated, the saga keeps the deadline.
        background: (config.style == Style::Choreography).then_some(expiry::run),
    };
    service_kit::bind(config, spec).await
}

/// The columns of `orders.orders` that the saga moves.
#[derive(sqlx::FromRow)]
pub(crate) struct Progress {
    status: Status,
    cancelled_by: Option<Cause>,
    cancellation_reason: Option<String>,
    refund_seen: bool,
    payment_voided: bool,
    release_seen: bool,
    reservation_voided: bool,
    shipment_undone: bool,
    walked_back: bool,
}

/// [`Progress`]'s columns, for a `SELECT`.
pub(crate) const PROGRESS_COLUMNS: &str = "status, cancelled_by, cancellation_reason, \
     refund_seen, payment_voided, release_seen, reservation_voided, shipment_undone, walked_back";

impl Progress {
    pub(crate) fn order(&self) -> Order {
        Order {
            status: self.status,
            cancelled_by: self.cancelled_by,
            cancellation_reason: self.cancellation_reason.clone(),
            refund_seen: self.refund_seen,
            payment_voided: self.payment_voided,
            release_seen: self.release_seen,
            reservation_voided: self.reservation_voided,
            shipment_undone: self.shipment_undone,
            walked_back: self.walked_back,
        }
    }
}

/// The order, locked until the transaction ends: facts, cancellations and the deadline for
/// one order take turns, so the first of a confirmation and a cancellation to commit stands.
pub(crate) async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    let progress: Option<Progress> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROGRESS_COLUMNS} FROM orders.orders WHERE id = $1 FOR UPDATE"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(progress.map(|p| p.order()))
}

/// The unit of work orders' own changes commit in (an API call, the deadline sweep); a
/// message handler's [`Ctx`] is one too.
pub(crate) type Work = service_kit::UnitOfWork<participants::Orders>;

/// The one way an order changes: stores the locked order's new state and announces what the
/// change led to (a confirmation or a cancellation, its saga's duration observed on commit).
/// A fact from the saga, a customer's cancellation and the deadline all come through here.
pub(crate) async fn save_and_announce(
    work: &mut Work,
    order_id: Uuid,
    order: &Order,
    announcement: Option<Announcement>,
) -> Result<(), sqlx::Error> {
    let age_seconds = save_order(work.db(), order_id, order).await?;
    match announcement {
        Some(Announcement::Confirmed) => {
            work.announce(&OrderConfirmed { order_id });
            work.observe_on_commit(SAGA_DURATION, ("outcome", "confirmed"), age_seconds);
        }
        Some(Announcement::Cancelled { reason }) => {
            work.announce(&OrderCancelled { order_id, reason });
            work.observe_on_commit(SAGA_DURATION, ("outcome", "cancelled"), age_seconds);
        }
        None => {}
    }
    Ok(())
}

/// Stores the order's progress (and whether it is settled); returns its age in seconds.
async fn save_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    order: &Order,
) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE orders.orders
         SET status = $2, cancelled_by = $3, cancellation_reason = $4, refund_seen = $5,
             payment_voided = $6, release_seen = $7, reservation_voided = $8,
             shipment_undone = $9, walked_back = $11, settled = $10, updated_at = now()
         WHERE id = $1
         RETURNING extract(epoch FROM now() - created_at)::float8",
    )
    .bind(order_id)
    .bind(order.status)
    .bind(order.cancelled_by)
    .bind(&order.cancellation_reason)
    .bind(order.refund_seen)
    .bind(order.payment_voided)
    .bind(order.release_seen)
    .bind(order.reservation_voided)
    .bind(order.shipment_undone)
    .bind(order.settled())
    .bind(order.walked_back)
    .fetch_one(conn)
    .await
}

fn failed(failure: Cause, reason: String) -> Fact {
    Fact::Failed { failure, reason }
}

pub struct Orders;

impl Service for Orders {
    type Participant = participants::Orders;
}

/// Placed → confirmed or cancelled, in seconds (a histogram on `/metrics`).
pub(crate) const SAGA_DURATION: &str = "shop_saga_duration_seconds";

/// A handler's context: the transaction, and orders's own events to announce.
type Ctx = service_kit::Ctx<participants::Orders>;

impl Orders {
    /// Applies a fact to the order (locked, so concurrent facts for one order take turns) and
    /// announces the confirmation or cancellation it leads to.
    async fn record(&self, ctx: &mut Ctx, order_id: Uuid, fact: Fact) -> Result<(), HandlerError> {
        let Some(mut order) = lock_order(ctx.db(), order_id).await? else {
            return Err(HandlerError::Deferred(format!(
                "order {order_id} is unknown here"
            )));
        };
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
        save_and_announce(ctx, order_id, &order, announcement).await?;
        tracing::info!(
            status = ?order.status,
            settled = order.settled(),
            "order updated"
        );
        Ok(())
    }
}
