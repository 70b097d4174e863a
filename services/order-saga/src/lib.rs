//! # Order saga (orchestrated style only: `SHOP_STYLE=orchestration`)
//!
//! - **Subscribes to** OrderPlaced (start), each step's answer (PaymentCompleted or
//!   PaymentFailed, StockReserved or StockReservationFailed, ShipmentBooked or ShipmentFailed),
//!   each undo's answer (PaymentRefunded or PaymentVoided, StockReleased or ReservationVoided,
//!   ShipmentCancelled or ShipmentVoided) and orders' decisions (OrderConfirmed,
//!   OrderCancelled): the same events the choreography announces.
//! - **Owns** `saga.sagas`: one state machine per order ([`saga`]), with its deadline.
//! - **Sends** commands, each to the one service that handles it: ChargePayment, ReserveStock,
//!   BookShipment, RefundPayment, ReleaseStock, CancelShipment, ConfirmOrder, CancelOrder,
//!   SettleOrder. It announces no event.
//! - **Expires** sagas still running at their deadline, the one orders decided and OrderPlaced
//!   carries (the customer is shown the same): it asks orders to cancel, then walks the steps
//!   back.

pub mod saga;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use saga::{Ask, Input, Phase, STEPS, Saga, Step};
use service_kit::{
    ApiContext, BackgroundFuture, BoundService, CancellationToken, Config, HandlerError, Routes,
    Service, ServiceSpec, Style, UnitOfWork, sweep, telemetry::TRACE_TARGET,
};
use shared_events::{
    BookShipment, CancelOrder, CancelShipment, ChargePayment, ConfirmOrder, OrderCancelled,
    OrderConfirmed, OrderPlaced, PaymentCompleted, PaymentFailed, PaymentRefunded, PaymentVoided,
    RefundPayment, ReleaseStock, ReservationVoided, ReserveStock, SettleOrder, ShipmentBooked,
    ShipmentCancelled, ShipmentFailed, ShipmentVoided, StockReleased, StockReservationFailed,
    StockReserved, participants,
};
use sqlx::{PgConnection, types::Json};
use tracing::Instrument;
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8086);

/// What the saga hears, as [`Input`]s of its state machine. This table also declares the
/// queue's bindings.
pub fn routes() -> Routes<OrderSaga> {
    use Step::*;
    Routes::<OrderSaga>::new()
        .on::<OrderPlaced>(|s, ctx, e| Box::pin(s.start(ctx, e)))
        .on::<PaymentCompleted>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Succeeded(Payment)))
        })
        .on::<PaymentFailed>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Failed(Payment, e.reason)))
        })
        .on::<StockReserved>(|s, ctx, e| Box::pin(s.hear(ctx, e.order_id, Input::Succeeded(Stock))))
        .on::<StockReservationFailed>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Failed(Stock, e.reason)))
        })
        .on::<ShipmentBooked>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Succeeded(Shipment)))
        })
        .on::<ShipmentFailed>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Failed(Shipment, e.reason)))
        })
        .on::<PaymentRefunded>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Undone(Payment)))
        })
        .on::<PaymentVoided>(|s, ctx, e| Box::pin(s.hear(ctx, e.order_id, Input::Undone(Payment))))
        .on::<StockReleased>(|s, ctx, e| Box::pin(s.hear(ctx, e.order_id, Input::Undone(Stock))))
        .on::<ReservationVoided>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Undone(Stock)))
        })
        .on::<ShipmentCancelled>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Undone(Shipment)))
        })
        .on::<ShipmentVoided>(|s, ctx, e| {
            Box::pin(s.hear(ctx, e.order_id, Input::Undone(Shipment)))
        })
        .on::<OrderConfirmed>(|s, ctx, e| Box::pin(s.hear(ctx, e.order_id, Input::OrderConfirmed)))
        .on::<OrderCancelled>(|s, ctx, e| Box::pin(s.hear(ctx, e.order_id, Input::OrderCancelled)))
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it: the endpoints every
/// service has (it has no API of its own).
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Saga as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, None)
}

/// Binds the service's HTTP listener; `run` the result to start it. Refuses to run in the
/// choreographed style, where no service would answer its commands.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    if config.style != Style::Orchestration {
        return Err(service_kit::Error::NotInStyle {
            service: "order-saga",
            style: config.style,
        });
    }
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/saga"),
        routes: routes(),
        state: OrderSaga,
        http: None,
        guards_customer_data: false,
        background: Some(expire),
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct OrderSaga;

/// The variables the saga reads for itself: none beyond the kit's. Even the deadline it keeps
/// is not its own: orders decides it (`ORDER_DEADLINE_MS`) and OrderPlaced carries it.
pub const VARIABLES: &[&str] = &[];

impl Service for OrderSaga {
    type Participant = participants::Saga;
}

/// The unit of work the saga's changes commit in (a handler's [`Ctx`], or the deadline sweep's).
type Work = UnitOfWork<participants::Saga>;
/// A handler's context: the transaction, and the commands the saga sends.
type Ctx = service_kit::Ctx<participants::Saga>;

/// `shop_orders_expired_total`, as orders counts it in the choreography.
const ORDERS_EXPIRED: &str = "shop_orders_expired_total";

impl OrderSaga {
    async fn start(&self, ctx: &mut Ctx, placed: OrderPlaced) -> Result<(), HandlerError> {
        let (saga, first) = Saga::start();
        let created = sqlx::query(
            "INSERT INTO saga.sagas (order_id, phase, steps_taken, placed, deadline_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(placed.order_id)
        .bind(saga.phase)
        .bind(saga.taken as i16)
        .bind(Json(&placed))
        .bind(placed.deadline_at)
        .execute(ctx.db())
        .await?;
        if created.rows_affected() == 0 {
            // A second OrderPlaced for the order (another message id): one saga per order.
            tracing::info!("saga already started; nothing to do");
            return Ok(());
        }
        send(ctx, &placed, first);
        tracing::info!(phase = ?saga.phase, "saga started");
        Ok(())
    }

    async fn hear(&self, ctx: &mut Ctx, order_id: Uuid, input: Input) -> Result<(), HandlerError> {
        let Some((mut saga, placed)) = lock(ctx.db(), order_id).await? else {
            // Its OrderPlaced is still on its way (a retry can reorder a queue).
            return Err(HandlerError::Deferred(format!(
                "no saga for order {order_id} yet"
            )));
        };
        advance(ctx, &mut saga, &placed, input).await?;
        Ok(())
    }
}

/// Applies `input` to the locked saga, stores it and sends what it asks for.
async fn advance(
    work: &mut Work,
    saga: &mut Saga,
    placed: &OrderPlaced,
    input: Input,
) -> Result<(), sqlx::Error> {
    let before = *saga;
    let asked = saga.on(input.clone());
    if *saga == before {
        tracing::info!(?input, phase = ?saga.phase, "changes nothing");
        return Ok(());
    }
    sqlx::query(
        "UPDATE saga.sagas SET phase = $2, steps_taken = $3, steps_to_undo = $4, updated_at = now()
         WHERE order_id = $1",
    )
    .bind(placed.order_id)
    .bind(saga.phase)
    .bind(saga.taken as i16)
    .bind(saga.to_undo as i16)
    .execute(work.db())
    .await?;
    if let Some(ask) = asked {
        send(work, placed, ask);
    }
    tracing::info!(?input, phase = ?saga.phase, "saga moved");
    Ok(())
}

/// The command for what the saga asks.
fn send(work: &mut Work, placed: &OrderPlaced, ask: Ask) {
    let order_id = placed.order_id;
    match ask {
        Ask::Take(Step::Payment) => work.send(&ChargePayment::for_order(placed)),
        Ask::Take(Step::Stock) => work.send(&ReserveStock::for_order(placed)),
        Ask::Take(Step::Shipment) => work.send(&BookShipment::for_order(placed)),
        Ask::Undo(Step::Payment) => work.send(&RefundPayment { order_id }),
        Ask::Undo(Step::Stock) => work.send(&ReleaseStock { order_id }),
        Ask::Undo(Step::Shipment) => work.send(&CancelShipment { order_id }),
        Ask::Confirm => work.send(&ConfirmOrder { order_id }),
        Ask::Cancel { cause, reason } => work.send(&CancelOrder {
            order_id,
            cause,
            reason,
        }),
        Ask::Settle => work.send(&SettleOrder { order_id }),
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    phase: Phase,
    steps_taken: i16,
    steps_to_undo: i16,
    placed: Json<OrderPlaced>,
}

/// The order's saga, locked until the transaction ends: its inputs take turns.
async fn lock(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<(Saga, OrderPlaced)>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT phase, steps_taken, steps_to_undo, placed FROM saga.sagas
         WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| {
        let count = |n: i16| usize::try_from(n).unwrap_or(0).min(STEPS.len());
        let saga = Saga {
            phase: row.phase,
            taken: count(row.steps_taken),
            to_undo: count(row.steps_to_undo),
        };
        (saga, row.placed.0)
    }))
}

/// Due sagas are looked for every half second, so one expires within that of its deadline; at
/// most 200 per transaction.
const DEADLINES: sweep::Batches = sweep::Batches {
    interval: Duration::from_millis(500),
    size: 200,
    counter: ORDERS_EXPIRED,
    what: "the database (as the saga's deadline sweep sees it)",
};

/// Every saga ends: one still running at its deadline is cancelled (`deadline_exceeded`).
/// The deadline is a column, so it survives restarts, and with several replicas each due saga
/// is locked by exactly one (`FOR UPDATE SKIP LOCKED`).
fn expire(api: ApiContext, shutdown: CancellationToken) -> BackgroundFuture {
    sweep::in_batches(api, shutdown, DEADLINES, expire_due)
}

async fn expire_due(api: ApiContext) -> Result<usize, sqlx::Error> {
    let mut work = Work::begin(&api.db, &api.metrics).await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT order_id FROM saga.sagas
         WHERE phase = 'running' AND deadline_at <= now()
         ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(DEADLINES.size as i64)
    .fetch_all(work.db())
    .await?;
    let expired = due.len();
    for order_id in due {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "expire",
            otel.name = "expire saga",
            %order_id,
        );
        async {
            if let Some((mut saga, placed)) = lock(work.db(), order_id).await? {
                advance(&mut work, &mut saga, &placed, Input::DeadlinePassed).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .instrument(span)
        .await?;
    }
    work.commit().await?;
    Ok(expired)
}
