//! `POST /orders`: bad input is answered with a 4xx and never reaches the database or the
//! broker; a good order is written with its OrderPlaced event in one transaction, once, however
//! often its `Idempotency-Key` is replayed.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use service_kit::{ApiError, Db, auth::Caller, problem::Problem, requests};
use shared_events::{OrderLine, OrderPlaced};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    body::PlaceOrderBody,
    state::{BodyLimit, Deadline, TAG, unprocessable},
};
use crate::{
    admission::Admission,
    domain::{self, CustomerRefused, PlaceOrder, RequestedItem, Status},
    metrics::SHED,
    store::{Work, log_status},
};

/// Orders are small; anything bigger is a mistake or an attack.
const MAX_IDEMPOTENCY_KEY: usize = 200;
/// How long a shed client is asked to wait before trying again.
const RETRY_AFTER_SECS: u32 = 1;

/// The order placed, or the one a replayed `Idempotency-Key` placed.
#[derive(Serialize, ToSchema)]
pub(super) struct Placed {
    order_id: Uuid,
    status: Status,
}

/// Place an order.
///
/// The order is written with its OrderPlaced event in one transaction, once however often its
/// `Idempotency-Key` is sent again; then watch it with `GET /orders/{id}`.
#[utoipa::path(post, path = "/orders", tag = TAG,
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200,
        pattern = "[!-~]",
        description = "Sent again with the same order, answers with the order it placed")),
    request_body(content = PlaceOrderBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Placed (or, for a replayed key, placed before)",
            body = Placed, headers(
                ("Location" = String, description = "The order: `/orders/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when the key was replayed"),
            ),
            links(("GetOrder" = (operation_id = "get_order",
                parameters(("id" = "$response.body#/order_id")))),
                ("Timeline" = (operation_id = "timeline",
                parameters(("id" = "$response.body#/order_id")))),
                ("Cancel" = (operation_id = "cancel_order",
                parameters(("id" = "$response.body#/order_id"))))),
            example = json!({"order_id": "0193a5f2-7c1e-7bb0-9d4e-3f5a2c8e1d00", "status": "pending"})),
        (status = 400, description = "Not JSON (`malformed_json`), or an Idempotency-Key that is \
            not 1 to 200 visible characters", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`customer_id` is not the caller's", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than HTTP_MAX_BODY_BYTES", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "The body is not declared `application/json`", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Refused and nothing written: the body's shape, a limit, an \
            unknown SKU, a SKU listed twice, or an Idempotency-Key used for another order", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: MAX_PENDING_ORDERS orders are being settled, \
            nothing was written; or the database does not answer", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait (when overloaded)"))),
    ))]
pub(super) async fn place_order(
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
    let key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(&request);

    let mut work = Work::begin(&db, &admission.metrics).await?;
    if let Some(key) = &key
        && let Some(replay) =
            find_by_key(work.db(), &request.customer_id, key, &fingerprint).await?
    {
        return Ok(replay);
    }
    if let Some(shed) = shed_if_full(&admission, &mut work).await? {
        return Ok(shed);
    }
    let (lines, total_cents) = price(&mut work, &request).await?;
    let order_id = Uuid::now_v7();
    requests::record_order(order_id);
    let new = NewOrder {
        order_id,
        request: &request,
        total_cents,
        key: key.as_deref(),
        fingerprint: &fingerprint,
        deadline,
    };
    let Some(deadline_at) = insert(&mut work, &new, &lines).await? else {
        // A concurrent request with the same key committed first: answer with its order.
        drop(work);
        let key = key.as_deref().unwrap_or_default();
        return replay_the_winner(&db, &request.customer_id, key, &fingerprint).await;
    };
    let placed = work.announce(&OrderPlaced {
        order_id,
        customer_id: request.customer_id.clone(),
        items: lines,
        total_cents,
        payment_method: request.payment_method.clone(),
        shipping_address: request.shipping_address.clone(),
        currency: domain::CURRENCY.to_owned(),
        deadline_at,
    });
    log_status(work.db(), order_id, placed, Status::Pending, false).await?;
    work.commit().await?;
    admission.accepted();
    tracing::info!(%order_id, total_cents, "order placed");
    Ok(accepted(order_id, Status::Pending, false))
}

/// `503 overloaded` (nothing written, `Retry-After`) while `MAX_PENDING_ORDERS` orders are
/// still being settled.
async fn shed_if_full(
    admission: &Admission,
    work: &mut Work,
) -> Result<Option<Response>, ApiError> {
    let pending = admission.pending(work.db()).await?;
    if pending < admission.max_pending {
        return Ok(None);
    }
    admission.metrics.inc(SHED, &[]);
    tracing::warn!(pending, "shedding a new order: the saga backlog is full");
    let shed = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "{pending} orders are still being settled (the bound is {}); nothing was \
             written: retry after {RETRY_AFTER_SECS} s (the same Idempotency-Key is fine)",
            admission.max_pending
        ),
    )
    .retry_after(RETRY_AFTER_SECS);
    Ok(Some(shed))
}

/// The order's lines at the catalog's prices, and its total.
async fn price(work: &mut Work, request: &PlaceOrder) -> Result<(Vec<OrderLine>, i64), ApiError> {
    let skus: Vec<&str> = request.items.iter().map(|i| i.sku.as_str()).collect();
    let catalog: BTreeMap<String, i64> =
        sqlx::query_as("SELECT sku, price_cents FROM orders.products WHERE sku = ANY($1)")
            .bind(&skus)
            .fetch_all(work.db())
            .await?
            .into_iter()
            .collect();
    domain::price(request, &catalog).map_err(unprocessable)
}

/// An order about to be written.
struct NewOrder<'a> {
    order_id: Uuid,
    request: &'a PlaceOrder,
    total_cents: i64,
    key: Option<&'a str>,
    /// The normalized request, kept to tell a replay from a reused key.
    fingerprint: &'a serde_json::Value,
    deadline: std::time::Duration,
}

/// Writes the order and its lines; returns the order's deadline, decided here once (the
/// services that expire orders keep the one OrderPlaced carries), or `None` when another order
/// holds its `Idempotency-Key`.
async fn insert(
    work: &mut Work,
    new: &NewOrder<'_>,
    lines: &[OrderLine],
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let deadline_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO orders.orders (id, customer_id, status, total_cents, payment_method,
                                    shipping_address, idempotency_key, request, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
         ON CONFLICT (customer_id, idempotency_key) DO NOTHING
         RETURNING deadline_at",
    )
    .bind(new.order_id)
    .bind(&new.request.customer_id)
    .bind(Status::Pending)
    .bind(new.total_cents)
    .bind(&new.request.payment_method)
    .bind(sqlx::types::Json(&new.request.shipping_address))
    .bind(new.key)
    .bind(new.fingerprint)
    .bind(new.deadline.as_secs_f64())
    .fetch_optional(work.db())
    .await?;
    if deadline_at.is_none() {
        return Ok(None);
    }
    for (line_no, line) in (1_i32..).zip(lines) {
        sqlx::query(
            "INSERT INTO orders.order_items (order_id, line, sku, quantity, unit_price_cents)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new.order_id)
        .bind(line_no)
        .bind(&line.sku)
        .bind(i64::from(line.quantity))
        .bind(line.unit_price_cents)
        .execute(work.db())
        .await?;
    }
    Ok(deadline_at)
}

/// The order a concurrent request with the same key committed, as a replay.
async fn replay_the_winner(
    db: &Db,
    customer_id: &str,
    key: &str,
    fingerprint: &serde_json::Value,
) -> Result<Response, ApiError> {
    let mut tx = db.begin().await?;
    match find_by_key(&mut tx, customer_id, key, fingerprint).await? {
        Some(replay) => Ok(replay),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a request with this Idempotency-Key is in progress; retry",
        )),
    }
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
        shipping_address: parsed.shipping_address.into(),
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

/// The order `customer_id` placed with `key`, as a replay (or `422` for another body).
async fn find_by_key(
    tx: &mut sqlx::PgConnection,
    customer_id: &str,
    key: &str,
    fingerprint: &serde_json::Value,
) -> Result<Option<Response>, ApiError> {
    let existing: Option<(Uuid, Status, serde_json::Value)> = sqlx::query_as(
        "SELECT id, status, request FROM orders.orders
             WHERE customer_id = $1 AND idempotency_key = $2",
    )
    .bind(customer_id)
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
