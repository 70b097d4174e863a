//! What every route of the Orders API stands on: its state (each part an extractor of its
//! own), and the one answer for an order a caller may not see or that does not exist.

use axum::{extract::FromRef, http::StatusCode};
use service_kit::{
    ApiError, Db, Metrics,
    auth::{Auth, Caller},
};
use uuid::Uuid;

use crate::{admission::Admission, domain::Invalid};

/// The tag of the Orders API's operations in its OpenAPI document.
pub(super) const TAG: &str = "orders";

/// The API's state: the database, the admission bound, the deadline and the counters.
#[derive(Clone, FromRef)]
pub(super) struct Api {
    pub(super) auth: Auth,
    pub(super) db: Db,
    pub(super) admission: Admission,
    pub(super) body_limit: BodyLimit,
    pub(super) deadline: Deadline,
    pub(super) metrics: Metrics,
}

/// `ORDER_DEADLINE_MS`: how long an order may stay open after it is placed.
#[derive(Clone, Copy)]
pub(super) struct Deadline(pub(super) std::time::Duration);

/// `HTTP_MAX_BODY_BYTES`, for the `413` message.
#[derive(Clone, Copy)]
pub(super) struct BodyLimit(pub(super) usize);

pub(super) fn order_not_found(order_id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "order_not_found",
        format!("no order {order_id}"),
    )
}

/// Fails with `404 order_not_found` (exactly as for an order that does not exist) unless the
/// order is the caller's or the caller is an operator.
pub(super) async fn ensure_visible(
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

/// A request the domain refused, as its `422`.
pub(super) fn unprocessable(invalid: Invalid) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        invalid.code,
        invalid.message,
    )
}
