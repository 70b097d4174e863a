//! Reading orders: one order (`GET /orders/{id}`), the most recent (`GET /orders`), one
//! order's timeline as orders saw it, and the catalog (`GET /products`). A customer sees only
//! their own orders; another's is a `404`, exactly as one that does not exist.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, Db, auth::Caller, problem::Problem, requests};
use shared_events::{OrderLine, ShippingAddress};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::state::{TAG, ensure_visible, order_not_found};
use crate::{
    domain::Status,
    store::{PROGRESS_COLUMNS, Progress},
};

#[derive(sqlx::FromRow)]
pub(super) struct OrderRow {
    id: Uuid,
    customer_id: String,
    total_cents: i64,
    payment_method: String,
    shipping_address: sqlx::types::Json<ShippingAddress>,
    cancellation_note: Option<String>,
    deadline_at: DateTime<Utc>,
    #[sqlx(flatten)]
    progress: Progress,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl OrderRow {
    fn settled(&self) -> bool {
        self.progress.order().settled()
    }
}

/// An order as its customer (or an operator) sees it.
#[derive(Serialize, ToSchema)]
pub(super) struct OrderView {
    order_id: Uuid,
    customer_id: String,
    status: Status,
    /// Every participant has answered: nothing more will happen to it.
    settled: bool,
    /// What cancelled it (e.g. `payment_failed`, `customer_request`, `deadline_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation_reason: Option<String>,
    /// The customer's own words, when they cancelled and gave a reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation_note: Option<String>,
    /// When the order is cancelled if it is still open.
    deadline_at: DateTime<Utc>,
    items: Vec<OrderLine>,
    total_cents: i64,
    payment_method: String,
    shipping_address: ShippingAddress,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// An order's columns for [`OrderRow`] (its progress: [`PROGRESS_COLUMNS`]).
fn order_columns() -> String {
    format!(
        "id, customer_id, total_cents, payment_method, shipping_address, cancellation_note,
         deadline_at, created_at, updated_at, {PROGRESS_COLUMNS}"
    )
}

/// One order: its status, items, total, and whether it is settled.
#[utoipa::path(get, path = "/orders/{id}", tag = TAG, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not the caller's (the same answer)",
            body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get_order(
    State(db): State<Db>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order_id = requests::order_id(&id)?;
    let view = order_view(&db, order_id)
        .await?
        .filter(|view| caller.may_act_for(&view.customer_id));
    Ok(Json(view.ok_or_else(|| order_not_found(order_id))?))
}

pub(super) async fn order_view(db: &Db, order_id: Uuid) -> Result<Option<OrderView>, ApiError> {
    let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM orders.orders WHERE id = $1",
        order_columns()
    )))
    .bind(order_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let items: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT sku, quantity, unit_price_cents FROM orders.order_items
         WHERE order_id = $1 ORDER BY line",
    )
    .bind(order_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(Some(OrderView {
        order_id,
        settled: row.settled(),
        status: row.progress.status,
        cancellation_reason: row.progress.cancellation_reason,
        cancellation_note: row.cancellation_note,
        deadline_at: row.deadline_at,
        items: items
            .into_iter()
            .map(|(sku, quantity, unit_price_cents)| OrderLine {
                sku,
                quantity: u32::try_from(quantity).unwrap_or(0),
                unit_price_cents,
            })
            .collect(),
        customer_id: row.customer_id,
        total_cents: row.total_cents,
        payment_method: row.payment_method,
        shipping_address: row.shipping_address.0,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// How many, most recent first (default 50; clamped to 1 to 500).
    limit: Option<i64>,
}

/// An order in a list.
#[derive(Serialize, ToSchema)]
pub(super) struct OrderSummary {
    order_id: Uuid,
    customer_id: String,
    status: Status,
    settled: bool,
    total_cents: i64,
    created_at: DateTime<Utc>,
}

/// The caller's most recent orders first (an operator's: everyone's).
#[utoipa::path(get, path = "/orders", tag = TAG, security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "Most recent first", body = Vec<OrderSummary>),
        (status = 400, description = "A query that does not parse", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn list_orders(
    State(db): State<Db>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<OrderSummary>>, ApiError> {
    let query = requests::query(query)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    // An operator sees every order; a customer their own.
    let only = (!caller.operator).then(|| caller.subject.clone().unwrap_or_default());
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM orders.orders WHERE $2::text IS NULL OR customer_id = $2
         ORDER BY created_at DESC, id DESC LIMIT $1",
        order_columns()
    )))
    .bind(limit)
    .bind(only)
    .fetch_all(&db.pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| OrderSummary {
                order_id: row.id,
                settled: row.settled(),
                customer_id: row.customer_id,
                status: row.progress.status,
                total_cents: row.total_cents,
                created_at: row.created_at,
            })
            .collect(),
    ))
}

/// A product of the catalog.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(super) struct Product {
    sku: String,
    name: String,
    price_cents: i64,
}

/// The catalog: what can be ordered, at what price.
#[utoipa::path(get, path = "/products", tag = TAG,
    responses((status = 200, description = "Every product, by SKU", body = Vec<Product>,
        example = json!([{"sku": "MUG-001", "name": "Mug", "price_cents": 1200}]))))]
pub(super) async fn list_products(State(db): State<Db>) -> Result<Json<Vec<Product>>, ApiError> {
    let products =
        sqlx::query_as("SELECT sku, name, price_cents FROM orders.products ORDER BY sku")
            .fetch_all(&db.pool)
            .await?;
    Ok(Json(products))
}

/// One message of an order's story, as orders saw it.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(super) struct TimelineEntry {
    occurred_at: DateTime<Utc>,
    #[sqlx(rename = "event_type")]
    #[serde(rename = "type")]
    event_type: String,
    producer: String,
    message_id: Uuid,
    causation_id: Option<Uuid>,
    /// `announced` by orders, or `received` from another service.
    orders_role: String,
    /// For a received event, the broker user that published it, as the broker vouched (none
    /// for orders' own announcements, nor for events received before this was recorded).
    published_by: Option<String>,
    /// What the order became once this message was handled (a received one) or announced
    /// (its placing, the customer's or the deadline's cancellation): present only on a message
    /// that changed its status or settled it. The same statuses, in the same order, in both
    /// styles for the same story.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settled: Option<bool>,
}

/// The story of one order as orders saw it: each message with the status it led to.
///
/// Orders hears every outcome (or, orchestrated, every progress and the saga's word) and
/// announces the rest, so its inbox and outbox hold the whole story.
#[utoipa::path(get, path = "/orders/{id}/timeline", tag = TAG, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Oldest first", body = Vec<TimelineEntry>),
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not the caller's (the same answer)",
            body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn timeline(
    State(db): State<Db>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    let order_id = requests::order_id(&id)?;
    ensure_visible(&mut *db.pool.acquire().await?, &caller, order_id).await?;
    let entries: Vec<TimelineEntry> = sqlx::query_as(
        "SELECT m.*, c.status, c.settled
         FROM (SELECT occurred_at, event_type, producer, message_id, causation_id,
                      'received' AS orders_role, published_by
               FROM orders.inbox WHERE correlation_id = $1
               UNION ALL
               SELECT (envelope->>'time')::timestamptz, event_type, 'orders', message_id,
                      causation_id, 'announced', NULL
               FROM orders.outbox WHERE correlation_id = $1) m
         LEFT JOIN orders.status_changes c ON c.order_id = $1 AND c.message_id = m.message_id
         ORDER BY m.occurred_at, c.id, m.message_id",
    )
    .bind(order_id)
    .fetch_all(&db.pool)
    .await?;
    if entries.is_empty() {
        return Err(order_not_found(order_id));
    }
    Ok(Json(entries))
}
