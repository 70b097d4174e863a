//! # Inventory
//!
//! - **Subscribes to** (choreography) OrderPlaced (remember what the order contains),
//!   PaymentCompleted (reserve it, all or nothing), ShipmentFailed (release what was reserved),
//!   OrderCancelled (release what is held, or make sure nothing ever is, and say which).
//! - **Handles** (orchestration) ReserveStock (remember and reserve) and ReleaseStock (the
//!   cancellation's undo): the same decisions.
//! - **Owns** `inventory.stock`, `inventory.order_items`, `inventory.reservations`; serves
//!   `GET /stock` so stock can be watched from outside.
//! - **Announces** StockReserved, StockReservationFailed, StockReleased, ReservationVoided.

pub mod domain;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use axum::{Json, extract::State};
use domain::{Release, ReservationStatus, Undo};
use serde::Serialize;
use service_kit::{
    ApiError, BoundService, Config, Db, HandlerError, Routes, Service, ServiceSpec, Style,
};
use shared_events::{
    OrderCancelled, OrderLine, OrderPlaced, PaymentCompleted, ReleaseStock, ReservationVoided,
    ReserveStock, ShipmentFailed, StockLine, StockReleased, StockReservationFailed, StockReserved,
    participants,
};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8082);

/// The environment variables it reads for itself: none beyond the kit's.
pub const VARIABLES: &[&str] = &[];

/// What inventory reacts to (or, orchestrated, is told to do), and how. This table also
/// declares the queue's bindings.
pub fn routes(style: Style) -> Routes<Inventory> {
    match style {
        Style::Choreography => Routes::<Inventory>::new()
            .on::<OrderPlaced>(|inventory, ctx, event| {
                Box::pin(inventory.remember_items(ctx, event.order_id, event.items))
            })
            .on::<PaymentCompleted>(|inventory, ctx, event| {
                Box::pin(inventory.reserve(ctx, event.order_id))
            })
            .on::<ShipmentFailed>(|inventory, ctx, event| {
                Box::pin(inventory.release(ctx, event.order_id))
            })
            .on::<OrderCancelled>(|inventory, ctx, event| {
                Box::pin(inventory.undo(ctx, event.order_id))
            }),
        Style::Orchestration => Routes::<Inventory>::new()
            .on::<ReserveStock>(|inventory, ctx, command| {
                Box::pin(inventory.remember_and_reserve(ctx, command))
            })
            .on::<ReleaseStock>(|inventory, ctx, command| {
                Box::pin(inventory.undo(ctx, command.order_id))
            }),
    }
}

/// Its API: the stock, for anyone to watch.
fn router() -> OpenApiRouter<Db> {
    OpenApiRouter::default().routes(routes!(stock))
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Inventory as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, Some(router().into_openapi()))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/inventory"),
        routes: routes(config.style),
        state: Inventory,
        http: Some(Box::new(|api| router().with_state(api.db))),
        guards_customer_data: false,
        background: None,
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct Inventory;

impl Service for Inventory {
    type Participant = participants::Inventory;
}

/// A handler's context: the transaction, and inventory's own events to announce.
type Ctx = service_kit::Ctx<participants::Inventory>;

impl Inventory {
    async fn remember_items(
        &self,
        ctx: &mut Ctx,
        order_id: Uuid,
        items: Vec<OrderLine>,
    ) -> Result<(), HandlerError> {
        for line in domain::quantities_by_sku(&items) {
            sqlx::query(
                "INSERT INTO inventory.order_items (order_id, sku, quantity) VALUES ($1, $2, $3)
                 ON CONFLICT (order_id, sku) DO NOTHING",
            )
            .bind(order_id)
            .bind(&line.sku)
            .bind(quantity(&line)?)
            .execute(ctx.db())
            .await?;
        }
        Ok(())
    }

    /// The saga's ReserveStock carries the lines: what OrderPlaced and PaymentCompleted do in
    /// the choreography, in one step.
    async fn remember_and_reserve(
        &self,
        ctx: &mut Ctx,
        command: ReserveStock,
    ) -> Result<(), HandlerError> {
        self.remember_items(ctx, command.order_id, command.items)
            .await?;
        self.reserve(ctx, command.order_id).await
    }

    async fn reserve(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        if let Some(status) = reservation_status(ctx.db(), order_id).await? {
            // Decided already, or cancelled before it got here: never reserved twice or late.
            tracing::info!(
                ?status,
                "reservation already decided for this order; nothing to do"
            );
            return Ok(());
        }
        let wanted = order_items(ctx.db(), order_id).await?;
        if wanted.is_empty() {
            // Paid before we heard what was ordered: the queues are per service, so this can
            // overtake OrderPlaced. Wait for it.
            return Err(HandlerError::Deferred(
                "OrderPlaced not seen yet".to_owned(),
            ));
        }
        let skus: Vec<&str> = wanted.iter().map(|l| l.sku.as_str()).collect();
        // Rows locked in SKU order, so concurrent reservations never deadlock.
        let available: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i32)>(
            "SELECT sku, available FROM inventory.stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(ctx.db())
        .await?
        .into_iter()
        .map(|(sku, n)| (sku, i64::from(n)))
        .collect();

        match domain::decide_reservation(&wanted, &available) {
            Ok(()) => {
                move_stock(ctx.db(), &wanted, Direction::Reserve).await?;
                record_reservation(ctx.db(), order_id, ReservationStatus::Reserved, None).await?;
                tracing::info!(lines = wanted.len(), "stock reserved");
                ctx.announce(&StockReserved {
                    order_id,
                    items: wanted,
                });
            }
            Err(shortage) => {
                let reason = shortage.reason();
                record_reservation(ctx.db(), order_id, ReservationStatus::Failed, Some(&reason))
                    .await?;
                tracing::info!(%reason, "reservation failed");
                ctx.announce(&StockReservationFailed { order_id, reason });
            }
        }
        Ok(())
    }

    async fn release(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let status = locked_reservation_status(ctx.db(), order_id).await?;
        match domain::decide_release(status) {
            Release::Due => give_back(ctx, order_id).await,
            Release::ReservationNotSeenYet => Err(HandlerError::Deferred(
                "no reservation recorded for this order yet".to_owned(),
            )),
            decision => {
                tracing::info!(?decision, "nothing to release");
                Ok(())
            }
        }
    }

    /// The order was cancelled: whatever inventory holds for it goes back, and it says so.
    async fn undo(&self, ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
        let status = locked_reservation_status(ctx.db(), order_id).await?;
        match domain::decide_undo(status) {
            Undo::Release => give_back(ctx, order_id).await,
            Undo::Void { record } => {
                if record {
                    record_reservation(ctx.db(), order_id, ReservationStatus::Voided, None).await?;
                }
                tracing::info!(record, "cancelled with nothing reserved; voided");
                ctx.announce(&ReservationVoided { order_id });
                Ok(())
            }
            Undo::AlreadyAnswered => {
                tracing::info!(?status, "cancellation already answered");
                Ok(())
            }
        }
    }
}

/// Releases the stock held for the order (its row is locked by the caller).
async fn give_back(ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
    let held = order_items(ctx.db(), order_id).await?;
    move_stock(ctx.db(), &held, Direction::Release).await?;
    sqlx::query(
        "UPDATE inventory.reservations SET status = $2, updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(ReservationStatus::Released)
    .execute(ctx.db())
    .await?;
    tracing::info!(lines = held.len(), "stock released");
    ctx.announce(&StockReleased {
        order_id,
        items: held,
    });
    Ok(())
}

fn quantity(line: &StockLine) -> Result<i32, HandlerError> {
    i32::try_from(line.quantity)
        .map_err(|_| HandlerError::Rejected(format!("quantity {} out of range", line.quantity)))
}

async fn order_items(
    db: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<StockLine>, HandlerError> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT sku, quantity FROM inventory.order_items WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(sku, quantity)| {
            let quantity = u32::try_from(quantity)
                .map_err(|_| HandlerError::Rejected(format!("stored quantity {quantity} < 0")))?;
            Ok(StockLine { sku, quantity })
        })
        .collect()
}

/// What was decided about the order's reservation, if anything.
async fn reservation_status(
    db: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReservationStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM inventory.reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db)
        .await
}

/// [`reservation_status`], its row locked: a release and a cancellation of one order take
/// turns.
async fn locked_reservation_status(
    db: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReservationStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM inventory.reservations WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_optional(db)
        .await
}

async fn record_reservation(
    db: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inventory.reservations (order_id, status, reason) VALUES ($1, $2, $3)",
    )
    .bind(order_id)
    .bind(status)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

enum Direction {
    Reserve,
    Release,
}

/// Moves quantities between `available` and `reserved`. The table's CHECK constraints make a
/// negative count impossible even if a decision were wrong.
async fn move_stock(
    db: &mut PgConnection,
    lines: &[StockLine],
    direction: Direction,
) -> Result<(), HandlerError> {
    let sql = match direction {
        Direction::Reserve => {
            "UPDATE inventory.stock SET available = available - $2, reserved = reserved + $2
             WHERE sku = $1"
        }
        Direction::Release => {
            "UPDATE inventory.stock SET available = available + $2, reserved = reserved - $2
             WHERE sku = $1"
        }
    };
    for line in lines {
        sqlx::query(sql)
            .bind(&line.sku)
            .bind(quantity(line)?)
            .execute(&mut *db)
            .await?;
    }
    Ok(())
}

/// One SKU's stock.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct StockLevel {
    sku: String,
    available: i32,
    reserved: i32,
}

/// Every SKU with what is available and what is held by reservations.
#[utoipa::path(get, path = "/stock", tag = "inventory",
    responses((status = 200, description = "By SKU", body = Vec<StockLevel>)))]
async fn stock(State(db): State<Db>) -> Result<Json<Vec<StockLevel>>, ApiError> {
    let levels =
        sqlx::query_as("SELECT sku, available, reserved FROM inventory.stock ORDER BY sku")
            .fetch_all(&db.pool)
            .await?;
    Ok(Json(levels))
}
