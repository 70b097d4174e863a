//! The order's row: read with its progress, locked for a change, saved with the event the
//! change led to. Handlers, the API and the deadline sweep all change an order through here.

use shared_events::{OrderCancelled, OrderConfirmed, participants};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::{Announcement, Cause, Order, Status},
    metrics::SAGA_DURATION,
};

/// The columns of `orders.orders` that the saga moves.
#[derive(sqlx::FromRow)]
pub(crate) struct Progress {
    pub(crate) status: Status,
    cancelled_by: Option<Cause>,
    pub(crate) cancellation_reason: Option<String>,
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

/// The one way an order changes: stores the locked order's new state (`before` is what it
/// was), logs a change of its status or settling, and announces what the change led to (a
/// confirmation or a cancellation, its saga's duration observed on commit). A fact from the
/// saga, a customer's cancellation and the deadline all come through here.
pub(crate) async fn save_and_announce(
    work: &mut Work,
    order_id: Uuid,
    before: &Order,
    order: &Order,
    announcement: Option<Announcement>,
) -> Result<(), sqlx::Error> {
    // The outcome (for the saga's duration) and the announcement's message id.
    let announced = announcement.map(|announcement| match announcement {
        Announcement::Confirmed => ("confirmed", work.announce(&OrderConfirmed { order_id })),
        Announcement::Cancelled { reason } => (
            "cancelled",
            work.announce(&OrderCancelled { order_id, reason }),
        ),
    });
    let shown = |order: &Order| (order.status, order.settled());
    // The change's cause: the message being handled, or else (the customer, the deadline) the
    // cancellation it announced.
    let cause = if shown(before) == shown(order) {
        None
    } else {
        work.cause().or(announced.map(|(_, message_id)| message_id))
    };
    let age_seconds = save_order(work.db(), order_id, order, cause).await?;
    if let Some((outcome, _)) = announced {
        work.observe_on_commit(SAGA_DURATION, ("outcome", outcome), age_seconds);
    }
    Ok(())
}

/// Appends the order's status (or settling) to `orders.status_changes`, caused by the message
/// `cause`: its timeline shows the status beside that message.
pub(crate) async fn log_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    cause: Uuid,
    status: Status,
    settled: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders.status_changes (order_id, message_id, status, settled)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(cause)
    .bind(status)
    .bind(settled)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the order's progress (and whether it is settled), and with a `cause` logs the change
/// in the same statement (one round trip); returns the order's age in seconds.
async fn save_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    order: &Order,
    cause: Option<Uuid>,
) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH saved AS (
             UPDATE orders.orders
             SET status = $2, cancelled_by = $3, cancellation_reason = $4, refund_seen = $5,
                 payment_voided = $6, release_seen = $7, reservation_voided = $8,
                 shipment_undone = $9, walked_back = $11, settled = $10, updated_at = now()
             WHERE id = $1
             RETURNING extract(epoch FROM now() - created_at)::float8 AS age
         ), logged AS (
             INSERT INTO orders.status_changes (order_id, message_id, status, settled)
             SELECT $1, $12, $2, $10 WHERE $12::uuid IS NOT NULL
         )
         SELECT age FROM saved",
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
    .bind(cause)
    .fetch_one(conn)
    .await
}
