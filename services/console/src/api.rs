//! The console's HTTP side: the page, what it reads (all from `console.events`), the live
//! stream (`stream`), and the buttons, which call the public Orders API like any client.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{FromRef, Path, Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use service_kit::{
    ApiContext, ApiError, BackgroundFuture, CancellationToken, Db, Style, problem::Problem,
    requests,
};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    dead_letters::{self, Watch},
    heard::{HEARD_COLUMNS, Heard, TAG},
    settings::Settings,
    stream::{self, Streams},
};

/// The page: HTML, CSS and script in one small file, served from the binary.
const PAGE: &str = include_str!("page.html");
/// The flow map `shop map --json` generates from every service's subscriptions (a test in
/// the shop crate keeps it current).
const FLOW: &str = include_str!("../flow.json");
/// How long an event is kept for the page.
const KEEP_EVENTS: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, FromRef)]
struct Console {
    db: Db,
    orders_url: String,
    http: reqwest::Client,
    /// The flow map of the style this shop runs in (`shop map --json`, one per style).
    flow: Arc<String>,
    streams: Streams,
    dead_letters: Watch,
}

/// The map of `style` out of [`FLOW`], with the style's name in it.
fn flow_of(style: Style) -> serde_json::Value {
    let mut map = serde_json::from_str::<serde_json::Value>(FLOW)
        .ok()
        .and_then(|maps| maps.get(style.name()).cloned())
        .unwrap_or_default();
    if let Some(fields) = map.as_object_mut() {
        fields.insert("style".to_owned(), style.name().into());
    }
    map
}

/// The API's description alone (what `GET /openapi.json` serves, with the kit's part).
pub(crate) fn described() -> utoipa::openapi::OpenApi {
    router().into_openapi()
}

/// The console's routes and their description, before they are given their state.
fn router() -> OpenApiRouter<Console> {
    OpenApiRouter::default()
        .routes(routes!(page))
        .routes(routes!(flow))
        .routes(routes!(recent_orders))
        .routes(routes!(timeline))
        .routes(routes!(stream::stream))
        .routes(routes!(place))
        .routes(routes!(cancel))
        .routes(routes!(dead_letters::current))
}

pub fn routes(api: ApiContext, settings: Settings) -> OpenApiRouter {
    // The buttons act as the demo customer, with its token, like any client of the API.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &settings.orders_token
        && let Ok(bearer) = format!("Bearer {token}").parse()
    {
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    let map = flow_of(api.config.style);
    // Every service of the style has a queue, and so a dead-letter queue.
    let services = map["services"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| Some(name.as_str()?.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let state = Console {
        flow: Arc::new(map.to_string()),
        dead_letters: Watch::new(&api.config, services),
        db: api.db,
        orders_url: settings.orders_url,
        streams: Streams::new(settings.max_streams),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .unwrap_or_default(),
    };
    router().with_state(state)
}

/// The live page: flow map, recent orders, timelines, buttons (no internet needed).
#[utoipa::path(get, path = "/", tag = TAG,
    responses((status = 200, description = "The page", body = String, content_type = "text/html")))]
async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// The flow map of this shop's style: who sends what to whom (`shop map --json`).
#[utoipa::path(get, path = "/api/flow", tag = TAG,
    responses((status = 200, description = "Services, messages and their edges", body = Object)))]
async fn flow(State(console): State<Console>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        console.flow.as_str().to_owned(),
    )
        .into_response()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RecentQuery {
    /// How many orders (default 20; clamped to 1 to 100).
    limit: Option<i64>,
}

/// The events of the N orders heard of most recently.
#[utoipa::path(get, path = "/api/orders", tag = TAG, params(RecentQuery),
    responses(
        (status = 200, description = "Oldest first", body = Vec<Heard>),
        (status = 400, description = "`limit` is not a number", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn recent_orders(
    State(console): State<Console>,
    query: Result<Query<RecentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Heard>>, ApiError> {
    let query = requests::query(query)?;
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let events = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HEARD_COLUMNS} FROM console.events
         WHERE order_id IN (SELECT order_id FROM console.events
                            GROUP BY order_id ORDER BY max(seq) DESC LIMIT $1)
         ORDER BY seq"
    )))
    .bind(limit)
    .fetch_all(&console.db.pool)
    .await?;
    Ok(Json(events))
}

/// Everything announced about one order, in the order it happened.
#[utoipa::path(get, path = "/api/orders/{id}/timeline", tag = TAG,
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "Oldest first", body = Vec<Heard>),
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "The console heard nothing of it", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn timeline(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Heard>>, ApiError> {
    let order_id = requests::order_id(&id)?;
    let events: Vec<Heard> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HEARD_COLUMNS} FROM console.events WHERE order_id = $1
         ORDER BY occurred_at, seq"
    )))
    .bind(order_id)
    .fetch_all(&console.db.pool)
    .await?;
    if events.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("the console has heard nothing of order {order_id}"),
        ));
    }
    Ok(Json(events))
}

/// Whom the buttons place orders for: `ORDERS_TOKEN` is this customer's.
pub const DEMO_CUSTOMER: &str = "console-demo";

/// The four kinds of order the buttons place, each driving one path of the saga.
fn order_of_kind(kind: &str) -> Option<Value> {
    let (sku, quantity, payment_method, country) = match kind {
        "happy" => ("MUG-001", 1, "card", "GB"),
        "declined" => ("TEE-001", 1, "card_declined", "GB"),
        // More than was ever in stock (10 seeded).
        "out_of_stock" => ("HOODIE-001", 11, "card", "GB"),
        // No carrier serves Antarctica.
        "unshippable" => ("BOOK-001", 1, "card", "AQ"),
        _ => return None,
    };
    Some(json!({
        "customer_id": DEMO_CUSTOMER,
        "items": [{ "sku": sku, "quantity": quantity }],
        "payment_method": payment_method,
        "shipping_address": {
            "name": "Console Visitor",
            "line1": "1 Event Street",
            "city": "London",
            "postal_code": "EC1A 1BB",
            "country": country,
        },
    }))
}

/// Place an order of one kind through the Orders API, as the demo customer; answers with
/// what the Orders API answered.
#[utoipa::path(post, path = "/api/place/{kind}", tag = TAG,
    params(("kind" = String, Path, description = "`happy`, `declined`, `out_of_stock` or `unshippable`")),
    responses(
        (status = 404, description = "`unknown_kind`", body = Problem,
            content_type = "application/problem+json"),
        (status = 502, description = "The Orders API did not answer", body = Problem,
            content_type = "application/problem+json"),
        (status = "default", description = "What the Orders API answered (docs/openapi/orders.json)",
            body = Object),
    ))]
async fn place(
    State(console): State<Console>,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    let body = order_of_kind(&kind).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_kind",
            "kinds: happy, declined, out_of_stock, unshippable",
        )
    })?;
    let url = format!("{}/orders", console.orders_url);
    let response = console.http.post(&url).json(&body).send().await;
    relay(response).await
}

/// Cancel an order through the Orders API; answers with what the Orders API answered.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = TAG,
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 502, description = "The Orders API did not answer", body = Problem,
            content_type = "application/problem+json"),
        (status = "default", description = "What the Orders API answered (docs/openapi/orders.json)",
            body = Object),
    ))]
async fn cancel(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = requests::order_id(&id)?;
    let url = format!("{}/orders/{order_id}/cancel", console.orders_url);
    let response = console.http.post(&url).send().await;
    relay(response).await
}

/// The Orders API's answer, passed on (status, content type and body); `502` if it did not
/// answer.
async fn relay(response: Result<reqwest::Response, reqwest::Error>) -> Result<Response, ApiError> {
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(error = %e, "the Orders API did not answer");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "orders_unreachable",
            "the Orders API did not answer; is orders running?",
        )
    };
    let response = response.map_err(unreachable)?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = response.bytes().await.map_err(unreachable)?;
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Keeps the read model to a day of events (the page shows the latest few orders).
pub fn prune(api: ApiContext, shutdown: CancellationToken) -> BackgroundFuture {
    Box::pin(async move {
        let mut tick = tokio::time::interval(api.config.prune_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let pruned = sqlx::query(
                "DELETE FROM console.events WHERE received_at < now() - make_interval(secs => $1)",
            )
            .bind(KEEP_EVENTS.as_secs_f64())
            .execute(&api.db.pool)
            .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "cannot prune the console's events");
            }
        }
    })
}
