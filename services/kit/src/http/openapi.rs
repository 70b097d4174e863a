//! A service's OpenAPI 3.1 document, generated from its handlers: a route is registered with
//! its description (`OpenApiRouter::routes(routes!(handler))`), so neither exists without the
//! other. The kit adds what every service shares: the health routes, `/openapi.json` itself,
//! the bearer scheme, and the answers its edge gives on any operation (a problem for a request
//! too slow, headers too large, a caller not authenticated, the server at its bound).

use std::sync::Arc;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ComponentsBuilder, InfoBuilder, OpenApi,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
/// What a service's API is built as: axum's router, with each route's description.
pub use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::{
    auth::OPERATOR_SCOPE,
    health::{OPERATIONS_TAG, health_routes},
    problem::{PROBLEM_JSON, Problem},
};

/// The security scheme every guarded operation names: an OAuth 2.0 bearer JWT.
pub const BEARER: &str = "bearer";

/// An OpenAPI document, as JSON.
pub type Document = Value;

/// A service's whole document, from its own API's description (`None` for a service without
/// one): what `GET /openapi.json` serves and `shop openapi` prints.
pub fn document(service: &str, api: Option<OpenApi>) -> Document {
    let mut openapi = health_routes().into_openapi();
    openapi.merge(document_route().into_openapi());
    let own_operations = api.as_ref().map(operation_ids).unwrap_or_default();
    if let Some(api) = api {
        openapi.merge(api);
    }
    openapi.info = InfoBuilder::new()
        .title(service)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(format!(
            "The HTTP API of the shop's {service} service (docs/architecture.md, \"The HTTP \
             APIs\"). Every error is an RFC 9457 problem (`application/problem+json`) whose \
             `error` member is the shop's short code. Probes and Prometheus also reach \
             `/healthz`, `/readyz`, `/metrics` and this document on the management port."
        )))
        .build();
    let mut components = openapi.components.take().unwrap_or_default();
    components
        .schemas
        .insert(Problem::name().into_owned(), Problem::schema());
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(format!(
                    "A JWT from the shop's identity provider: `sub` is the customer; the \
                     `{OPERATOR_SCOPE}` scope makes an operator"
                )))
                .build(),
        ),
    );
    openapi.components = Some(ComponentsBuilder::from(components).build());
    let mut document = serde_json::to_value(&openapi).unwrap_or_default();
    add_edge_answers(&mut document, &own_operations);
    document
}

/// The operation ids of a service's own API: those the database bound and its failures reach.
fn operation_ids(api: &OpenApi) -> Vec<String> {
    api.paths
        .paths
        .values()
        .flat_map(|item| {
            [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
                .filter_map(|operation| operation.operation_id.clone())
        })
        .collect()
}

/// What the kit's edge may answer on an operation, added where the operation does not say it
/// itself: one place, as one place (the kit's server) gives these answers.
fn add_edge_answers(document: &mut Value, own_operations: &[String]) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(Value::as_object_mut)
    {
        let own = operation
            .get("operationId")
            .and_then(Value::as_str)
            .is_some_and(|id| own_operations.iter().any(|own| own == id));
        let scopes = required_scopes(operation);
        let responses = operation
            .entry("responses")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        let Some(responses) = responses else { continue };
        let mut add = |status: &str, answer: Value| {
            responses.entry(status).or_insert(answer);
        };
        add(
            "408",
            problem("The request was not received and handled in time", None),
        );
        add(
            "431",
            problem(
                "The request's headers are larger than the server accepts",
                None,
            ),
        );
        add(
            "503",
            problem(
                if own {
                    "The database does not answer, or the server is at its connection bound: \
                     nothing was changed; retry"
                } else {
                    "The server is at its connection bound; retry"
                },
                Some(retry_after()),
            ),
        );
        if own {
            add(
                "500",
                problem(
                    "The service failed on this request and changed nothing",
                    None,
                ),
            );
        }
        if let Some(scopes) = scopes {
            add(
                "401",
                problem(
                    "No bearer token, or one that is not valid",
                    Some(json!({ "WWW-Authenticate": {
                        "description": "The bearer challenge (RFC 6750), saying what was wrong",
                        "schema": { "type": "string" },
                    }})),
                ),
            );
            if !scopes.is_empty() {
                add(
                    "403",
                    problem(
                        &format!("The token lacks the {} scope", scopes.join(", ")),
                        Some(json!({ "WWW-Authenticate": {
                            "description": "`insufficient_scope`, naming the scope needed",
                            "schema": { "type": "string" },
                        }})),
                    ),
                );
            }
        }
    }
}

/// The scopes an operation requires of its bearer token, when it requires one.
fn required_scopes(operation: &Map<String, Value>) -> Option<Vec<String>> {
    let requirements = operation.get("security")?.as_array()?;
    let scopes = requirements
        .iter()
        .filter_map(|requirement| requirement.get(BEARER)?.as_array())
        .next()?;
    Some(
        scopes
            .iter()
            .filter_map(|scope| Some(scope.as_str()?.to_owned()))
            .collect(),
    )
}

/// A response whose body is a [`Problem`].
fn problem(description: &str, headers: Option<Value>) -> Value {
    let mut response = json!({
        "description": description,
        "content": { PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } },
    });
    if let (Some(headers), Some(fields)) = (headers, response.as_object_mut()) {
        fields.insert("headers".to_owned(), headers);
    }
    response
}

fn retry_after() -> Value {
    json!({ "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": { "type": "integer", "minimum": 0 },
    }})
}

/// The document as served: rendered once when the service starts.
#[derive(Clone)]
pub(crate) struct Served(pub(crate) Arc<String>);

pub(crate) fn document_route() -> OpenApiRouter<Served> {
    OpenApiRouter::default().routes(routes!(openapi_json))
}

/// This document: every route of the service, its bodies, statuses, headers and security.
#[utoipa::path(get, path = "/openapi.json", tag = OPERATIONS_TAG,
    responses((status = 200, description = "The service's OpenAPI 3.1 document",
        body = Object, content_type = "application/json")))]
async fn openapi_json(State(Served(document)): State<Served>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str().to_owned(),
    )
        .into_response()
}
