//! `POST /orders/{id}/cancel`: the customer cancels an open order, with a reason if they like.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use service_kit::{ApiError, Db, Metrics, auth::Caller, requests};

use super::{
    read::order_view,
    state::{BodyLimit, ensure_visible, order_not_found, unprocessable},
};
use crate::{
    domain::{self, Announcement, CancelRefused, Cause},
    metrics::CANCEL_REQUESTS,
    store::{Work, lock_order, save_and_announce},
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelBody {
    reason: Option<String>,
}

/// `POST /orders/{id}/cancel`: the customer cancels. Whichever of this and the order's
/// confirmation commits first stands (both lock the order): `202` when the cancellation is
/// accepted (OrderCancelled announced; `settled` turns true once every participant answered),
/// `200` when it was already cancelled (nothing new announced), `409 order_confirmed` when the
/// confirmation won.
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
