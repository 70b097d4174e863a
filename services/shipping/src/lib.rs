//! # Shipping
//!
//! - **Subscribes to** (choreography) OrderPlaced (remember where the order goes),
//!   StockReserved (book a courier: the goods are set aside and paid for), OrderCancelled
//!   (cancel the booking, or make sure none is ever made, and say which).
//! - **Handles** (orchestration) BookShipment (remember and book) and CancelShipment (the
//!   cancellation's undo): the same decisions.
//! - **Owns** `shipping.destinations`, `shipping.carrier_coverage`, `shipping.shipments`.
//! - **Announces** ShipmentBooked, ShipmentFailed, ShipmentCancelled, ShipmentVoided.

pub mod domain;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use domain::{Booking, ShipmentStatus, Undo};
use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec, Style};
use shared_events::{
    BookShipment, CancelShipment, OrderCancelled, OrderPlaced, ShipmentBooked, ShipmentCancelled,
    ShipmentFailed, ShipmentVoided, ShippingAddress, StockReserved, participants,
};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8083);

/// The environment variables it reads for itself: none beyond the kit's.
pub const VARIABLES: &[&str] = &[];

/// What shipping reacts to (or, orchestrated, is told to do), and how. This table also
/// declares the queue's bindings.
pub fn routes(style: Style) -> Routes<Shipping> {
    match style {
        Style::Choreography => Routes::<Shipping>::new()
            .on::<OrderPlaced>(|shipping, ctx, event| {
                Box::pin(shipping.remember_destination(ctx, event.order_id, event.shipping_address))
            })
            .on::<StockReserved>(|shipping, ctx, event| {
                Box::pin(shipping.book(ctx, event.order_id))
            })
            .on::<OrderCancelled>(|shipping, ctx, event| {
                Box::pin(shipping.undo(ctx, event.order_id))
            }),
        Style::Orchestration => Routes::<Shipping>::new()
            .on::<BookShipment>(|shipping, ctx, command| {
                Box::pin(shipping.remember_and_book(ctx, command))
            })
            .on::<CancelShipment>(|shipping, ctx, command| {
                Box::pin(shipping.undo(ctx, command.order_id))
            }),
    }
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it: the endpoints every
/// service has (it has no API of its own).
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Shipping as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, None)
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/shipping"),
        routes: routes(config.style),
        state: Shipping,
        http: None,
        guards_customer_data: false,
        background: None,
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct Shipping;

impl Service for Shipping {
    type Participant = participants::Shipping;
}

/// A handler's context: the transaction, and shipping's own events to announce.
type Ctx = service_kit::Ctx<participants::Shipping>;

impl Shipping {
    async fn remember_destination(
        &self,
        ctx: &mut Ctx,
        order_id: Uuid,
        address: ShippingAddress,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO shipping.destinations (order_id, name, line1, city, postal_code, country)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(&address.name)
        .bind(&address.line1)
        .bind(&address.city)
        .bind(&address.postal_code)
        .bind(address.country.to_ascii_uppercase())
        .execute(ctx.db())
        .await?;
        Ok(())
    }

    /// The saga's BookShipment carries the address: what OrderPlaced and StockReserved do in
    /// the choreography, in one step.
    async fn remember_and_book(
        &self,
        ctx: &mut Ctx,
        command: BookShipment,
    ) -> Result<(), HandlerError> {
        self.remember_destination(ctx, command.order_id, command.shipping_address)
            .await?;
        self.book(ctx, command.order_id).await
    }

    async fn book(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let already: Option<ShipmentStatus> =
            sqlx::query_scalar("SELECT status FROM shipping.shipments WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(ctx.db())
                .await?;
        if let Some(status) = already {
            // Decided already, or cancelled before it got here: never booked twice or late.
            tracing::info!(
                ?status,
                "shipment already decided for this order; nothing to do"
            );
            return Ok(());
        }
        let destination: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT d.country, c.carrier FROM shipping.destinations d
             LEFT JOIN shipping.carrier_coverage c ON c.country = d.country
             WHERE d.order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(ctx.db())
        .await?;
        let Some((country, carrier)) = destination else {
            // Reserved before we heard where it goes: StockReserved overtook OrderPlaced.
            return Err(HandlerError::Deferred(
                "OrderPlaced not seen yet".to_owned(),
            ));
        };

        let shipment_id = Uuid::now_v7();
        match domain::decide_booking(&country, carrier.as_deref(), shipment_id) {
            Booking::Book {
                carrier,
                tracking_number,
            } => {
                sqlx::query(
                    "INSERT INTO shipping.shipments
                         (order_id, status, shipment_id, carrier, tracking_number)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(order_id)
                .bind(ShipmentStatus::Booked)
                .bind(shipment_id)
                .bind(&carrier)
                .bind(&tracking_number)
                .execute(ctx.db())
                .await?;
                tracing::info!(%carrier, %tracking_number, "shipment booked");
                ctx.announce(&ShipmentBooked {
                    order_id,
                    shipment_id,
                    carrier,
                    tracking_number,
                });
            }
            Booking::Fail { reason } => {
                sqlx::query(
                    "INSERT INTO shipping.shipments (order_id, status, reason)
                     VALUES ($1, $2, $3)",
                )
                .bind(order_id)
                .bind(ShipmentStatus::Failed)
                .bind(&reason)
                .execute(ctx.db())
                .await?;
                tracing::info!(%reason, "shipment failed");
                ctx.announce(&ShipmentFailed { order_id, reason });
            }
        }
        Ok(())
    }

    /// The order was cancelled: a booked shipment is cancelled with the carrier; otherwise
    /// none will ever be booked. Either way shipping says which.
    async fn undo(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let shipment: Option<(ShipmentStatus, Option<Uuid>)> = sqlx::query_as(
            "SELECT status, shipment_id FROM shipping.shipments WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(ctx.db())
        .await?;
        let status = shipment.map(|(status, _)| status);
        match (domain::decide_undo(status), shipment) {
            (Undo::Cancel, Some((_, Some(shipment_id)))) => {
                sqlx::query("UPDATE shipping.shipments SET status = $2 WHERE order_id = $1")
                    .bind(order_id)
                    .bind(ShipmentStatus::Cancelled)
                    .execute(ctx.db())
                    .await?;
                tracing::info!(%shipment_id, "shipment cancelled");
                ctx.announce(&ShipmentCancelled {
                    order_id,
                    shipment_id,
                });
            }
            (Undo::Void { record }, _) => {
                if record {
                    sqlx::query(
                        "INSERT INTO shipping.shipments (order_id, status, reason)
                         VALUES ($1, $2, 'order cancelled before booking')",
                    )
                    .bind(order_id)
                    .bind(ShipmentStatus::Voided)
                    .execute(ctx.db())
                    .await?;
                }
                tracing::info!(record, "cancelled with nothing booked; voided");
                ctx.announce(&ShipmentVoided { order_id });
            }
            (decision, _) => tracing::info!(?decision, "cancellation already answered"),
        }
        Ok(())
    }
}
