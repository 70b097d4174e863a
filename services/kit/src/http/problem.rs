//! The one shape of every error a service answers with: an RFC 9457 problem.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of a problem (RFC 9457, section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where every problem type of the shop is named: a tag URI (RFC 4151), an identifier that is
/// not meant to be fetched (RFC 9457, section 3.1.1); docs/architecture.md lists the codes.
const PROBLEM_TYPES: &str = "tag:shop.example,2026:problems/";

/// An error as RFC 9457 problem details, with the shop's short code kept as `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "tag:shop.example,2026:problems/order_not_found",
    "title": "Order not found",
    "status": 404,
    "detail": "no order 0193a5f2-7c1e-7bb0-9d4e-3f5a2c8e1d00",
    "error": "order_not_found"
}))]
pub struct Problem {
    /// Names the kind of problem: the shop's problem types end in its `error` code.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The same for every problem of this type.
    pub title: String,
    /// The HTTP status of the response.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, for a person.
    pub detail: String,
    /// The short code clients match on (the shop's errors before problem details had it too).
    pub error: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("{PROBLEM_TYPES}{code}"),
            title: title_of(code),
            status: status.as_u16(),
            detail: detail.into(),
            error: code.to_owned(),
        }
    }
}

/// `order_not_found` reads "Order not found".
fn title_of(code: &str) -> String {
    let words = code.replace('_', " ");
    let mut letters = words.chars();
    match letters.next() {
        Some(first) => first.to_uppercase().chain(letters).collect(),
        None => words,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_its_type_by_its_code_and_keeps_the_code() {
        let problem = Problem::new(StatusCode::CONFLICT, "order_confirmed", "too late");
        assert_eq!(
            serde_json::to_value(&problem).unwrap_or_default(),
            serde_json::json!({
                "type": "tag:shop.example,2026:problems/order_confirmed",
                "title": "Order confirmed",
                "status": 409,
                "detail": "too late",
                "error": "order_confirmed",
            })
        );
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
