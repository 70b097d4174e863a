//! # Orders
//!
//! - **Serves** the shop's HTTP API: place an order, cancel it, read orders, list the catalog.
//! - **Subscribes to** (choreography) every outcome of the saga: PaymentCompleted,
//!   StockReserved, ShipmentBooked (progress), PaymentFailed, StockReservationFailed,
//!   ShipmentFailed (cancel), and each participant's answer to a cancellation: PaymentRefunded
//!   or PaymentVoided, StockReleased or ReservationVoided, ShipmentCancelled or ShipmentVoided
//!   (all three seen: settled).
//! - **Handles** (orchestration) the saga's ConfirmOrder, CancelOrder and SettleOrder: the
//!   same outcomes, told instead of heard; it still hears PaymentCompleted and StockReserved,
//!   so the customer reads the same statuses in both styles.
//! - **Expires** orders still open at their deadline (`ORDER_DEADLINE_MS`), as if the customer
//!   had cancelled them (choreography). Orders decides each deadline when the order is placed
//!   and sends it in OrderPlaced; orchestrated, the saga keeps it.
//! - **Owns** `orders.products` (the catalog and its prices), `orders.orders` (with each
//!   order's deadline), `orders.order_items`, `orders.status_changes` (each change of an
//!   order's status, with the message that caused it: its timeline's statuses).
//! - **Announces** OrderPlaced, OrderConfirmed, OrderCancelled.

mod admission;
pub mod api;
pub mod domain;
pub mod expiry;
pub mod metrics;
pub mod settings;
mod store;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use domain::{Cause, Fact};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec, Style};
use shared_events::{
    CancelCause, CancelOrder, ConfirmOrder, PaymentCompleted, PaymentFailed, PaymentRefunded,
    PaymentVoided, ReservationVoided, SettleOrder, ShipmentBooked, ShipmentCancelled,
    ShipmentFailed, ShipmentVoided, StockReleased, StockReservationFailed, StockReserved,
    participants,
};
use store::{lock_order, save_and_announce};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

pub use settings::VARIABLES;

/// What orders reacts to (or, orchestrated, is told), and how. This table also declares the
/// queue's bindings.
pub fn routes(style: Style) -> Routes<Orders> {
    match style {
        Style::Choreography => reactions(),
        Style::Orchestration => Routes::<Orders>::new()
            // Progress, heard as in the choreography, so the customer reads the same statuses
            // (`paid`, `stock_reserved`) in both styles; the outcome is still the saga's word.
            .on::<PaymentCompleted>(|o, ctx, e| Box::pin(o.record(ctx, e.order_id, Fact::Paid)))
            .on::<StockReserved>(|o, ctx, e| {
                Box::pin(o.record(ctx, e.order_id, Fact::StockReserved))
            })
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

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Orders as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, Some(api::described()))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let settings = settings::Settings::read(&config)?;
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/orders"),
        routes: routes(config.style),
        state: Orders,
        http: Some(Box::new(move |api| api::routes(api, settings))),
        guards_customer_data: true,
        // Orchestrated, the saga keeps the deadline.
        background: (config.style == Style::Choreography).then_some(expiry::run),
        metrics: metrics::METRICS,
    };
    service_kit::bind(config, spec).await
}

fn failed(failure: Cause, reason: String) -> Fact {
    Fact::Failed { failure, reason }
}

pub struct Orders;

impl Service for Orders {
    type Participant = participants::Orders;
}

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
        save_and_announce(ctx, order_id, &before, &order, announcement).await?;
        tracing::info!(
            status = ?order.status,
            settled = order.settled(),
            "order updated"
        );
        Ok(())
    }
}
