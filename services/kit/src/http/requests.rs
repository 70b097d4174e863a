//! Reading what an HTTP request sends, for the services' own APIs: each bad input becomes a
//! clear 4xx [`ApiError`] before anything is written.

use axum::{
    body::Bytes,
    extract::{
        Query,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::http::server::ApiError;

/// A query string, or `400 invalid_query`.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// `415 unsupported_media_type` (with `hint`) unless the body is declared JSON.
pub fn require_json(headers: &HeaderMap, hint: &str) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            hint,
        ))
    }
}

/// The body, or `413 payload_too_large` past `body_limit` bytes (any other failure to read
/// it: its own status, `unreadable_body`).
pub fn body(body: Result<Bytes, BytesRejection>, body_limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body must be at most {body_limit} bytes"),
        ),
        status => ApiError::new(status, "unreadable_body", rejection.body_text()),
    })
}

/// A JSON body: `400 malformed_json` when it is not JSON, `422 invalid_body` when it is JSON
/// of the wrong shape.
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e.to_string(),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        }
    })
}

/// An order id from a path, or `400 invalid_order_id`.
pub fn order_id(id: &str) -> Result<Uuid, ApiError> {
    let order_id = Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_order_id",
            format!("{id:?} is not a UUID"),
        )
    })?;
    record_order(order_id);
    Ok(order_id)
}

/// The request is about `order_id`: its span says so, as every span about an order does.
pub fn record_order(order_id: Uuid) {
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
}
