//! # Payment
//!
//! - **Subscribes to** OrderPlaced (charge the order), StockReservationFailed and
//!   ShipmentFailed (refund it: a later step failed, so the money goes back).
//! - **Owns** `payment.payments`: one row per order, charged, declined or refunded.
//! - **Announces** PaymentCompleted, PaymentFailed, PaymentRefunded.

pub mod domain;

use std::net::{Ipv4Addr, SocketAddr};

use domain::{Charge, PaymentStatus, Refund};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec};
use shared_events::{
    OrderPlaced, PaymentCompleted, PaymentFailed, PaymentRefunded, ShipmentFailed,
    StockReservationFailed, participants,
};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// What payment reacts to, and how. This table also declares the queue's bindings.
pub fn routes() -> Routes<Payment> {
    Routes::<Payment>::new()
        .on::<OrderPlaced>(|payment, ctx, event| Box::pin(payment.charge(ctx, event)))
        .on::<StockReservationFailed>(|payment, ctx, event| {
            Box::pin(payment.refund(ctx, event.order_id))
        })
        .on::<ShipmentFailed>(|payment, ctx, event| Box::pin(payment.refund(ctx, event.order_id)))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/payment"),
        routes: routes(),
        state: Payment,
        http: None,
    };
    service_kit::bind(config, spec).await
}

pub struct Payment;

impl Service for Payment {
    type Participant = participants::Payment;
}

/// A handler's context: the transaction, and payment's own events to announce.
type Ctx = service_kit::Ctx<participants::Payment>;

impl Payment {
    async fn charge(&self, ctx: &mut Ctx, order: OrderPlaced) -> Result<(), HandlerError> {
        let existing: Option<PaymentStatus> =
            sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
                .bind(order.order_id)
                .fetch_optional(ctx.db())
                .await?;
        if let Some(status) = existing {
            // A second OrderPlaced for the same order (another message id) never charges twice.
            tracing::warn!(?status, "order already has a payment; nothing to do");
            return Ok(());
        }
        let payment_id = Uuid::now_v7();
        match domain::decide_charge(&order.payment_method, order.total_cents) {
            Charge::Approved => {
                sqlx::query(
                    "INSERT INTO payment.payments
                         (order_id, payment_id, status, amount_cents, payment_method, charged_at)
                     VALUES ($1, $2, $3, $4, $5, now())",
                )
                .bind(order.order_id)
                .bind(payment_id)
                .bind(PaymentStatus::Charged)
                .bind(order.total_cents)
                .bind(&order.payment_method)
                .execute(ctx.db())
                .await?;
                tracing::info!(amount_cents = order.total_cents, "charged");
                ctx.announce(&PaymentCompleted {
                    order_id: order.order_id,
                    payment_id,
                    amount_cents: order.total_cents,
                })
                .await?;
            }
            Charge::Declined { reason } => {
                sqlx::query(
                    "INSERT INTO payment.payments
                         (order_id, payment_id, status, amount_cents, payment_method, decline_reason)
                     VALUES ($1, $2, $3, 0, $4, $5)",
                )
                .bind(order.order_id)
                .bind(payment_id)
                .bind(PaymentStatus::Declined)
                .bind(&order.payment_method)
                .bind(&reason)
                .execute(ctx.db())
                .await?;
                tracing::info!(%reason, "declined");
                ctx.announce(&PaymentFailed {
                    order_id: order.order_id,
                    reason,
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn refund(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let payment: Option<(Uuid, PaymentStatus, i64)> = sqlx::query_as(
            "SELECT payment_id, status, amount_cents FROM payment.payments
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(ctx.db())
        .await?;
        let status = payment.map(|(_, status, _)| status);
        match (domain::decide_refund(status), payment) {
            (Refund::Due, Some((payment_id, _, amount_cents))) => {
                sqlx::query(
                    "UPDATE payment.payments SET status = $2, refunded_at = now()
                     WHERE order_id = $1",
                )
                .bind(order_id)
                .bind(PaymentStatus::Refunded)
                .execute(ctx.db())
                .await?;
                tracing::info!(amount_cents, "refunded");
                ctx.announce(&PaymentRefunded {
                    order_id,
                    payment_id,
                    amount_cents,
                })
                .await?;
                Ok(())
            }
            (Refund::ChargeNotSeenYet, _) | (Refund::Due, None) => Err(HandlerError::Deferred(
                "no payment recorded for this order yet".to_owned(),
            )),
            (decision, _) => {
                tracing::info!(?decision, "nothing to refund");
                Ok(())
            }
        }
    }
}
