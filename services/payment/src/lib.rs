//! # Payment
//!
//! - **Subscribes to** (choreography) OrderPlaced (charge the order), StockReservationFailed
//!   and ShipmentFailed (refund it: a later step failed, so the money goes back),
//!   OrderCancelled (refund a charge, or make sure none is ever made, and say which).
//! - **Handles** (orchestration) ChargePayment and RefundPayment, the same two decisions.
//! - **Owns** `payment.payments`: one row per order, charged, declined, refunded or voided.
//! - **Announces** PaymentCompleted, PaymentFailed, PaymentRefunded, PaymentVoided.

pub mod domain;

use std::net::{Ipv4Addr, SocketAddr};

use domain::{Charge, PaymentStatus, Refund, Undo};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec, Style};
use shared_events::{
    ChargePayment, OrderCancelled, OrderPlaced, PaymentCompleted, PaymentFailed, PaymentRefunded,
    PaymentVoided, RefundPayment, ShipmentFailed, StockReservationFailed, participants,
};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// The environment variables it reads for itself: none beyond the kit's.
pub const VARIABLES: &[&str] = &[];

/// What payment reacts to (or, orchestrated, is told to do), and how. This table also
/// declares the queue's bindings.
pub fn routes(style: Style) -> Routes<Payment> {
    match style {
        Style::Choreography => Routes::<Payment>::new()
            .on::<OrderPlaced>(|payment, ctx, event| {
                Box::pin(payment.charge(ctx, ChargePayment::for_order(&event)))
            })
            .on::<StockReservationFailed>(|payment, ctx, event| {
                Box::pin(payment.refund(ctx, event.order_id))
            })
            .on::<ShipmentFailed>(|payment, ctx, event| {
                Box::pin(payment.refund(ctx, event.order_id))
            })
            .on::<OrderCancelled>(|payment, ctx, event| {
                Box::pin(payment.undo(ctx, event.order_id))
            }),
        Style::Orchestration => Routes::<Payment>::new()
            .on::<ChargePayment>(|payment, ctx, command| Box::pin(payment.charge(ctx, command)))
            .on::<RefundPayment>(|payment, ctx, command| {
                Box::pin(payment.undo(ctx, command.order_id))
            }),
    }
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it: the endpoints every
/// service has (it has no API of its own).
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Payment as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, None)
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/payment"),
        routes: routes(config.style),
        state: Payment,
        http: None,
        guards_customer_data: false,
        background: None,
        metrics: &[],
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
    async fn charge(&self, ctx: &mut Ctx, order: ChargePayment) -> Result<(), HandlerError> {
        let existing: Option<PaymentStatus> =
            sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
                .bind(order.order_id)
                .fetch_optional(ctx.db())
                .await?;
        if let Some(status) = existing {
            // Cancelled before it got here, or a second OrderPlaced for the same order
            // (another message id): never charged, never charged twice.
            tracing::info!(
                ?status,
                "order already has a payment decision; not charging"
            );
            return Ok(());
        }
        let payment_id = Uuid::now_v7();
        match domain::decide_charge(&order.payment_method, order.total_cents, &order.currency) {
            Charge::Approved => {
                sqlx::query(
                    "INSERT INTO payment.payments
                         (order_id, payment_id, status, amount_cents, payment_method, currency,
                          charged_at)
                     VALUES ($1, $2, $3, $4, $5, $6, now())",
                )
                .bind(order.order_id)
                .bind(payment_id)
                .bind(PaymentStatus::Charged)
                .bind(order.total_cents)
                .bind(&order.payment_method)
                .bind(&order.currency)
                .execute(ctx.db())
                .await?;
                tracing::info!(amount_cents = order.total_cents, currency = %order.currency, "charged");
                ctx.announce(&PaymentCompleted {
                    order_id: order.order_id,
                    payment_id,
                    amount_cents: order.total_cents,
                });
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
                });
            }
        }
        Ok(())
    }

    async fn refund(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let payment = payment_of(ctx, order_id).await?;
        let status = payment.as_ref().map(|p| p.status);
        match (domain::decide_refund(status), payment) {
            (Refund::Due, Some(payment)) => give_back(ctx, order_id, &payment).await,
            (Refund::ChargeNotSeenYet, _) | (Refund::Due, None) => Err(HandlerError::Deferred(
                "no payment recorded for this order yet".to_owned(),
            )),
            (decision, _) => {
                tracing::info!(?decision, "nothing to refund");
                Ok(())
            }
        }
    }

    /// The order was cancelled: whatever payment did, undo it, and say what that was.
    async fn undo(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let payment = payment_of(ctx, order_id).await?;
        let status = payment.as_ref().map(|p| p.status);
        match (domain::decide_undo(status), payment) {
            (Undo::Refund, Some(payment)) => give_back(ctx, order_id, &payment).await,
            (Undo::Void { record }, _) => {
                if record {
                    sqlx::query(
                        "INSERT INTO payment.payments
                             (order_id, payment_id, status, amount_cents, payment_method)
                         VALUES ($1, $2, $3, 0, '')",
                    )
                    .bind(order_id)
                    .bind(Uuid::now_v7())
                    .bind(PaymentStatus::Voided)
                    .execute(ctx.db())
                    .await?;
                }
                tracing::info!(record, "cancelled before any charge; voided");
                ctx.announce(&PaymentVoided { order_id });
                Ok(())
            }
            (decision, _) => {
                tracing::info!(?decision, "cancellation already answered");
                Ok(())
            }
        }
    }
}

/// A recorded payment, as a refund or a cancellation reads it.
#[derive(sqlx::FromRow)]
struct Charged {
    payment_id: Uuid,
    status: PaymentStatus,
    amount_cents: i64,
}

/// The order's payment, locked: a refund and a cancellation of one order take turns.
async fn payment_of(ctx: &mut Ctx, order_id: Uuid) -> Result<Option<Charged>, sqlx::Error> {
    sqlx::query_as(
        "SELECT payment_id, status, amount_cents FROM payment.payments
         WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(ctx.db())
    .await
}

async fn give_back(ctx: &mut Ctx, order_id: Uuid, payment: &Charged) -> Result<(), HandlerError> {
    let amount_cents = payment.amount_cents;
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
        payment_id: payment.payment_id,
        amount_cents,
    });
    Ok(())
}
