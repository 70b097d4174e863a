//! `POST /orders/{id}/cancel`: the customer cancels an open order, with a reason if they like.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use service_kit::{ApiError, Db, Metrics, auth::Caller, problem::Problem, requests};
use utoipa::ToSchema;

use super::{
    read::{OrderView, order_view},
    state::{BodyLimit, TAG, ensure_visible, order_not_found, unprocessable},
};
use crate::{
    domain::{self, Announcement, CancelRefused, Cause},
    metrics::CANCEL_REQUESTS,
    store::{Work, lock_order, save_and_announce},
};

/// Why the customer cancels (optional; the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "ordered the wrong size"}))]
pub(super) struct CancelBody {
    /// Kept with the order, in the customer's own words.
    #[schema(max_length = 200, pattern = r"^[^\u0000]*$")]
    reason: Option<String>,
}

/// Cancel an open order.
///
/// Whichever of this and the order's confirmation commits first stands (both lock the order):
/// `202` when the cancellation is accepted (OrderCancelled announced; `settled` turns true once
/// every participant answered), `200` when it was already cancelled (nothing new announced),
/// `409 order_confirmed` when the confirmation won.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = TAG, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body(content = Option<CancelBody>, content_type = "application/json",
        description = "Optional: an empty body cancels without a reason"),
    responses(
        (status = 202, description = "Cancelled now: OrderCancelled announced", body = OrderView),
        (status = 200, description = "It was already cancelled; nothing new", body = OrderView),
        (status = 400, description = "`id` is not a UUID, or the body is not JSON", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not the caller's (the same answer)",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`order_confirmed`: the confirmation won; it stands",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than HTTP_MAX_BODY_BYTES", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "A body not declared `application/json`", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "A body of the wrong shape, or a reason over 200 characters",
            body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn cancel_order(
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
        requests::json::<Option<CancelBody>>(&body)?.unwrap_or_default()
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
    let before = order.clone();
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
            save_and_announce(&mut work, order_id, &before, &order, Some(cancelled)).await?;
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
