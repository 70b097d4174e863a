//! The Orders HTTP API (docs/architecture.md, "The HTTP APIs"). Bad input is answered with a 4xx JSON error and never
//! reaches the database or the broker; a good order is written with its OrderPlaced event in
//! one transaction.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRef, Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::{
    ApiContext, ApiError, Db, Metrics,
    auth::{Auth, Caller},
    requests,
};
use shared_events::{OrderLine, OrderPlaced, ShippingAddress};
use uuid::Uuid;

use crate::{
    admission::Admission,
    domain::{
        self, Announcement, CancelRefused, Cause, CustomerRefused, Invalid, PlaceOrder,
        RequestedItem, Status,
    },
    metrics::{CANCEL_REQUESTS, SHED},
    store::{PROGRESS_COLUMNS, Progress, Work, lock_order, save_and_announce},
};

/// Orders are small; anything bigger is a mistake or an attack.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The API's state: the database, the admission bound, the deadline and the counters.
#[derive(Clone)]
struct Api {
    auth: Auth,
    db: Db,
    admission: Admission,
    body_limit: BodyLimit,
    deadline: Deadline,
    metrics: Metrics,
}

/// `ORDER_DEADLINE_MS`: how long an order may stay open after it is placed.
#[derive(Clone, Copy)]
struct Deadline(std::time::Duration);

impl FromRef<Api> for Deadline {
    fn from_ref(api: &Api) -> Self {
        api.deadline
    }
}

impl FromRef<Api> for Auth {
    fn from_ref(api: &Api) -> Self {
        api.auth.clone()
    }
}

impl FromRef<Api> for Metrics {
    fn from_ref(api: &Api) -> Self {
        api.metrics.clone()
    }
}

/// `HTTP_MAX_BODY_BYTES`, for the `413` message.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

impl FromRef<Api> for BodyLimit {
    fn from_ref(api: &Api) -> Self {
        api.body_limit
    }
}

impl FromRef<Api> for Db {
    fn from_ref(api: &Api) -> Self {
        api.db.clone()
    }
}

impl FromRef<Api> for Admission {
    fn from_ref(api: &Api) -> Self {
        api.admission.clone()
    }
}

/// How long a shed client is asked to wait before trying again.
const RETRY_AFTER_SECS: u32 = 1;

pub fn routes(api: ApiContext) -> Router {
    // Exported from the start (as 0), so a dashboard shows "none shed" rather than no data.
    api.metrics.add(SHED, &[], 0);
    let body_limit = api.config.http_max_body_bytes;
    let state = Api {
        auth: api.auth,
        db: api.db,
        body_limit: BodyLimit(body_limit),
        deadline: Deadline(api.config.order_deadline),
        metrics: api.metrics.clone(),
        admission: Admission::new(api.config.max_pending_orders, api.metrics),
    };
    Router::new()
        .route("/orders", get(list_orders).post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/orders/{id}/timeline", get(timeline))
        .route("/products", get(list_products))
        // The limit is enforced by `Bytes` below, which reports it as our JSON error.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn unprocessable(invalid: Invalid) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        invalid.code,
        invalid.message,
    )
}

#[derive(Deserialize)]
struct PlaceOrderBody {
    /// Optional with a token (the order is the caller's; a different one is refused).
    customer_id: Option<String>,
    items: Vec<ItemBody>,
    #[serde(default = "default_payment_method")]
    payment_method: String,
    shipping_address: ShippingAddress,
}

#[derive(Deserialize)]
struct ItemBody {
    sku: String,
    quantity: i64,
}

fn default_payment_method() -> String {
    "card".to_owned()
}

#[derive(Serialize)]
struct Placed {
    order_id: Uuid,
    status: Status,
}

/// `POST /orders`
async fn place_order(
    State(db): State<Db>,
    State(admission): State<Admission>,
    State(BodyLimit(body_limit)): State<BodyLimit>,
    State(Deadline(deadline)): State<Deadline>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse_request(&caller, &headers, body, body_limit)?;
    let request = domain::validate(request).map_err(unprocessable)?;
    let idempotency_key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(&request);

    let mut work = Work::begin(&db, &admission.metrics).await?;
    if let Some(key) = &idempotency_key
        && let Some(replay) = find_by_key(work.db(), key, &fingerprint).await?
    {
        return Ok(replay);
    }
    let pending = admission.pending(work.db()).await?;
    if pending >= admission.max_pending {
        admission.metrics.inc(SHED, &[]);
        tracing::warn!(pending, "shedding a new order: the saga backlog is full");
        let mut shed = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{pending} orders are still being settled (the bound is {}); nothing was \
                 written: retry after {RETRY_AFTER_SECS} s (the same Idempotency-Key is fine)",
                admission.max_pending
            ),
        )
        .into_response();
        shed.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return Ok(shed);
    }

    let skus: Vec<&str> = request.items.iter().map(|i| i.sku.as_str()).collect();
    let catalog: BTreeMap<String, i64> =
        sqlx::query_as("SELECT sku, price_cents FROM orders.products WHERE sku = ANY($1)")
            .bind(&skus)
            .fetch_all(work.db())
            .await?
            .into_iter()
            .collect();
    let (lines, total_cents) = domain::price(&request, &catalog).map_err(unprocessable)?;

    let order_id = Uuid::now_v7();
    requests::record_order(order_id);
    let inserted = sqlx::query(
        "INSERT INTO orders.orders (id, customer_id, status, total_cents, payment_method,
                                    shipping_address, idempotency_key, request, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(order_id)
    .bind(&request.customer_id)
    .bind(Status::Pending)
    .bind(total_cents)
    .bind(&request.payment_method)
    .bind(sqlx::types::Json(&request.shipping_address))
    .bind(&idempotency_key)
    .bind(&fingerprint)
    .bind(deadline.as_secs_f64())
    .execute(work.db())
    .await?
    .rows_affected();
    if inserted == 0 {
        // A concurrent request with the same key committed first: answer with its order.
        drop(work);
        let mut tx = db.begin().await?;
        let key = idempotency_key.as_deref().unwrap_or_default();
        return match find_by_key(&mut tx, key, &fingerprint).await? {
            Some(replay) => Ok(replay),
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a request with this Idempotency-Key is in progress; retry",
            )),
        };
    }
    for (line_no, line) in (1_i32..).zip(&lines) {
        sqlx::query(
            "INSERT INTO orders.order_items (order_id, line, sku, quantity, unit_price_cents)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(order_id)
        .bind(line_no)
        .bind(&line.sku)
        .bind(i64::from(line.quantity))
        .bind(line.unit_price_cents)
        .execute(work.db())
        .await?;
    }
    let placed = OrderPlaced {
        order_id,
        customer_id: request.customer_id.clone(),
        items: lines,
        total_cents,
        payment_method: request.payment_method.clone(),
        shipping_address: request.shipping_address.clone(),
        currency: domain::CURRENCY.to_owned(),
    };
    work.announce(&placed);
    work.commit().await?;
    admission.accepted();
    tracing::info!(%order_id, total_cents, "order placed");
    Ok(accepted(order_id, Status::Pending, false))
}

fn parse_request(
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    body_limit: usize,
) -> Result<PlaceOrder, ApiError> {
    requests::require_json(headers, "send the order as Content-Type: application/json")?;
    let body = requests::body(body, body_limit)?;
    let parsed: PlaceOrderBody = requests::json(&body)?;
    let customer_id = domain::customer_of(caller.subject.as_deref(), parsed.customer_id.as_deref())
        .map_err(|refused| match refused {
            CustomerRefused::NotTheCaller => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "customer_id is not the caller's: an order is placed for the token's subject",
            ),
            CustomerRefused::Missing => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "missing field `customer_id`",
            ),
        })?;
    Ok(PlaceOrder {
        customer_id,
        items: parsed
            .items
            .into_iter()
            .map(|i| RequestedItem {
                sku: i.sku,
                quantity: i.quantity,
            })
            .collect(),
        payment_method: parsed.payment_method,
        shipping_address: parsed.shipping_address,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(key.to_owned())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

/// The normalized request, stored with the order: the same key must come with the same order.
fn fingerprint(request: &PlaceOrder) -> serde_json::Value {
    serde_json::json!({
        "customer_id": request.customer_id,
        "items": request.items.iter().map(|i| serde_json::json!([i.sku, i.quantity])).collect::<Vec<_>>(),
        "payment_method": request.payment_method,
        "shipping_address": request.shipping_address,
    })
}

async fn find_by_key(
    tx: &mut sqlx::PgConnection,
    key: &str,
    fingerprint: &serde_json::Value,
) -> Result<Option<Response>, ApiError> {
    let existing: Option<(Uuid, Status, serde_json::Value)> =
        sqlx::query_as("SELECT id, status, request FROM orders.orders WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(tx)
            .await?;
    match existing {
        None => Ok(None),
        Some((_, _, stored)) if &stored != fingerprint => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different order",
        )),
        Some((order_id, status, _)) => Ok(Some(accepted(order_id, status, true))),
    }
}

fn accepted(order_id: Uuid, status: Status, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(Placed { order_id, status })).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[derive(sqlx::FromRow)]
struct OrderRow {
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

#[derive(Serialize)]
struct OrderView {
    order_id: Uuid,
    customer_id: String,
    status: Status,
    settled: bool,
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

fn order_not_found(order_id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "order_not_found",
        format!("no order {order_id}"),
    )
}

/// `GET /orders/{id}`
async fn get_order(
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

/// Fails with `404 order_not_found` (exactly as for an order that does not exist) unless the
/// order is the caller's or the caller is an operator.
async fn ensure_visible(
    db: &mut sqlx::PgConnection,
    caller: &Caller,
    order_id: Uuid,
) -> Result<(), ApiError> {
    let customer: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM orders.orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(db)
            .await?;
    match customer {
        Some(customer) if caller.may_act_for(&customer) => Ok(()),
        _ => Err(order_not_found(order_id)),
    }
}

async fn order_view(db: &Db, order_id: Uuid) -> Result<Option<OrderView>, ApiError> {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

/// `POST /orders/{id}/cancel`: the customer cancels. Whichever of this and the order's
/// confirmation commits first stands (both lock the order): `202` when the cancellation is
/// accepted (OrderCancelled announced; `settled` turns true once every participant answered),
/// `200` when it was already cancelled (nothing new announced), `409 order_confirmed` when the
/// confirmation won.
async fn cancel_order(
    State(db): State<Db>,
    State(metrics): State<Metrics>,
    State(BodyLimit(body_limit)): State<BodyLimit>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let order_id = requests::order_id(&id)?;
    let body = requests::body(body, body_limit)?;
    let request: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        requests::require_json(
            &headers,
            "send the reason as Content-Type: application/json",
        )?;
        requests::json(&body)?
    };
    let note = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if let Some(note) = &note
        && let Err(invalid) = domain::validate_cancellation_note(note)
    {
        return Err(unprocessable(invalid));
    }

    let mut work = Work::begin(&db, &metrics).await?;
    ensure_visible(work.db(), &caller, order_id).await?;
    let Some(mut order) = lock_order(work.db(), order_id).await? else {
        return Err(order_not_found(order_id));
    };
    let outcome = match order.cancel(Cause::CustomerRequest) {
        Err(CancelRefused::Confirmed) => {
            metrics.inc(CANCEL_REQUESTS, &[("outcome", "refused")]);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "order_confirmed",
                format!("order {order_id} was confirmed before the cancellation; it stands"),
            ));
        }
        Ok(None) => {
            drop(work);
            metrics.inc(CANCEL_REQUESTS, &[("outcome", "already_cancelled")]);
            StatusCode::OK
        }
        Ok(Some(cancelled @ Announcement::Cancelled { .. })) => {
            save_and_announce(&mut work, order_id, &order, Some(cancelled)).await?;
            sqlx::query("UPDATE orders.orders SET cancellation_note = $2 WHERE id = $1")
                .bind(order_id)
                .bind(&note)
                .execute(work.db())
                .await?;
            work.commit().await?;
            metrics.inc(CANCEL_REQUESTS, &[("outcome", "accepted")]);
            tracing::info!(%order_id, "order cancelled at the customer's request");
            StatusCode::ACCEPTED
        }
        Ok(Some(Announcement::Confirmed)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "a cancellation cannot confirm an order",
            ));
        }
    };
    let view = order_view(&db, order_id)
        .await?
        .ok_or_else(|| order_not_found(order_id))?;
    Ok((outcome, Json(view)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

#[derive(Serialize)]
struct OrderSummary {
    order_id: Uuid,
    customer_id: String,
    status: Status,
    settled: bool,
    total_cents: i64,
    created_at: DateTime<Utc>,
}

/// `GET /orders?limit=N`: the most recent orders first (default 50, at most 500).
async fn list_orders(
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

#[derive(Serialize, sqlx::FromRow)]
struct Product {
    sku: String,
    name: String,
    price_cents: i64,
}

/// `GET /products`: the catalog.
async fn list_products(State(db): State<Db>) -> Result<Json<Vec<Product>>, ApiError> {
    let products =
        sqlx::query_as("SELECT sku, name, price_cents FROM orders.products ORDER BY sku")
            .fetch_all(&db.pool)
            .await?;
    Ok(Json(products))
}

#[derive(Serialize, sqlx::FromRow)]
struct TimelineEntry {
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
}

/// `GET /orders/{id}/timeline`: the saga of one order as orders saw it. Orders subscribes to
/// every outcome and announces the rest, so its inbox and outbox hold the whole story.
async fn timeline(
    State(db): State<Db>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    let order_id = requests::order_id(&id)?;
    ensure_visible(&mut *db.pool.acquire().await?, &caller, order_id).await?;
    let entries: Vec<TimelineEntry> = sqlx::query_as(
        "SELECT occurred_at, event_type, producer, message_id, causation_id,
                'received' AS orders_role, published_by
         FROM orders.inbox WHERE correlation_id = $1
         UNION ALL
         SELECT (envelope->>'time')::timestamptz, event_type, 'orders', message_id,
                causation_id, 'announced', NULL
         FROM orders.outbox WHERE correlation_id = $1
         ORDER BY occurred_at, message_id",
    )
    .bind(order_id)
    .fetch_all(&db.pool)
    .await?;
    if entries.is_empty() {
        return Err(order_not_found(order_id));
    }
    Ok(Json(entries))
}
