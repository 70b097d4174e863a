//! # Sales
//!
//! A listener that only reads, added to the shop without a change to any other service: the
//! example of a late joiner. Started with `REPLAY_FROM=start`, it learns every order the
//! shop's history still holds before it hears new ones (docs/choosing.md, "Easy to add a
//! step?").
//!
//! - **Subscribes to** OrderPlaced (who ordered, where to, how much), OrderConfirmed and
//!   OrderCancelled (how it ended).
//! - **Owns** `sales.orders`; serves `GET /sales`: confirmed orders and revenue per country,
//!   and what each customer spent, for operators.
//! - **Announces** nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{Json, extract::State};
use serde::Serialize;
use service_kit::{
    ApiContext, ApiError, BoundService, Config, Db, HandlerError, Routes, Service, ServiceSpec,
    auth::{OPERATOR_SCOPE, Operator},
    problem::Problem,
};
use shared_events::{OrderCancelled, OrderConfirmed, OrderPlaced, Participant};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8087);

/// Its name: schema, queue and `producer` field. Declared here, not in the shop's list of
/// participants: it announces nothing, so nothing else needs to know it.
pub struct SalesParticipant;

impl Participant for SalesParticipant {
    const NAME: &'static str = "sales";
}

/// What sales hears, and how. This table also declares the queue's bindings, and is what a
/// catch-up from the history reads through.
pub fn routes() -> Routes<Sales> {
    Routes::<Sales>::new()
        .on::<OrderPlaced>(|_, ctx, event| Box::pin(placed(ctx, event)))
        .on::<OrderConfirmed>(|_, ctx, event| Box::pin(ended(ctx, event.order_id, "confirmed")))
        .on::<OrderCancelled>(|_, ctx, event| Box::pin(ended(ctx, event.order_id, "cancelled")))
}

/// Its API: the figures, for operators.
fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::default().routes(routes!(figures))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/sales"),
        routes: routes(),
        state: Sales,
        http: Some(Box::new(|api| router().with_state(api))),
        guards_customer_data: true,
        background: None,
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct Sales;

impl Service for Sales {
    type Participant = SalesParticipant;
}

type Ctx = service_kit::Ctx<SalesParticipant>;

/// An order placed: who, where to, how much. Heard twice (a replay, a redelivery), it is kept
/// once.
async fn placed(ctx: &mut Ctx, event: OrderPlaced) -> Result<(), HandlerError> {
    let placed_at = ctx.occurred_at();
    sqlx::query(
        "INSERT INTO sales.orders (order_id, customer_id, country, total_cents, currency, placed_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(event.order_id)
    .bind(&event.customer_id)
    .bind(&event.shipping_address.country)
    .bind(event.total_cents)
    .bind(&event.currency)
    .bind(placed_at)
    .execute(ctx.db())
    .await?;
    Ok(())
}

/// How an order ended. Before its OrderPlaced it cannot be counted: it waits (parked).
async fn ended(ctx: &mut Ctx, order_id: Uuid, outcome: &str) -> Result<(), HandlerError> {
    let recorded = sqlx::query("UPDATE sales.orders SET outcome = $2 WHERE order_id = $1")
        .bind(order_id)
        .bind(outcome)
        .execute(ctx.db())
        .await?
        .rows_affected();
    if recorded == 0 {
        return Err(HandlerError::Deferred(format!(
            "order {order_id} {outcome} before sales heard it placed"
        )));
    }
    tracing::info!(%order_id, outcome, "order counted");
    Ok(())
}

/// Confirmed orders and their revenue in one country.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct CountrySales {
    /// ISO 3166-1 alpha-2.
    country: String,
    currency: String,
    confirmed_orders: i64,
    revenue_cents: i64,
}

/// What one customer spent on confirmed orders.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct CustomerSpend {
    customer_id: String,
    currency: String,
    confirmed_orders: i64,
    spent_cents: i64,
}

/// The figures, from every order sales has heard of.
#[derive(Serialize, ToSchema)]
struct Figures {
    /// Orders heard of, however they ended (or not yet).
    orders_heard: i64,
    by_country: Vec<CountrySales>,
    by_customer: Vec<CustomerSpend>,
}

/// Sales per country and spend per customer (confirmed orders only): customers' data, for
/// operators only.
#[utoipa::path(get, path = "/sales", tag = "sales",
    security(("bearer" = [OPERATOR_SCOPE])),
    responses(
        (status = 200, description = "Countries and customers, each by name", body = Figures),
        (status = 503, description = "The database does not answer", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn figures(State(db): State<Db>, _operator: Operator) -> Result<Json<Figures>, ApiError> {
    let orders_heard = sqlx::query_scalar("SELECT count(*) FROM sales.orders")
        .fetch_one(&db.pool)
        .await?;
    let by_country = sqlx::query_as(
        "SELECT country, currency, count(*) AS confirmed_orders,
                sum(total_cents)::bigint AS revenue_cents
         FROM sales.orders WHERE outcome = 'confirmed'
         GROUP BY country, currency ORDER BY country, currency",
    )
    .fetch_all(&db.pool)
    .await?;
    let by_customer = sqlx::query_as(
        "SELECT customer_id, currency, count(*) AS confirmed_orders,
                sum(total_cents)::bigint AS spent_cents
         FROM sales.orders WHERE outcome = 'confirmed'
         GROUP BY customer_id, currency ORDER BY customer_id, currency",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(Json(Figures {
        orders_heard,
        by_country,
        by_customer,
    }))
}
