//! The console's HTTP side: the page, what it reads (all from `console.events`), the live
//! stream, and the buttons, which call the public Orders API like any client.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service_kit::{
    ApiContext, ApiError, BackgroundFuture, CancellationToken, Db, Outage, Style, requests,
};
use uuid::Uuid;

use crate::settings::Settings;

/// The page: HTML, CSS and script in one small file, served from the binary.
const PAGE: &str = include_str!("page.html");
/// The flow map `shop map --json` generates from every service's subscriptions (a test in
/// the shop crate keeps it current).
const FLOW: &str = include_str!("../flow.json");
/// How often the stream looks for events that arrived.
const STREAM_POLL: Duration = Duration::from_millis(200);
/// Events sent to one page per poll, at most.
const STREAM_BATCH: i64 = 500;
/// How long an event is kept for the page.
const KEEP_EVENTS: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct Console {
    db: Db,
    orders_url: String,
    http: reqwest::Client,
    /// The flow map of the style this shop runs in (`shop map --json`, one per style).
    flow: Arc<String>,
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

pub fn routes(api: ApiContext, settings: Settings) -> Router {
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
    let dead_letters = crate::dead_letters::Watch::new(&api.config, services);
    let state = Console {
        flow: Arc::new(map.to_string()),
        db: api.db,
        orders_url: settings.orders_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .unwrap_or_default(),
    };
    Router::new()
        .route("/", get(page))
        .route("/api/flow", get(flow))
        .route("/api/orders", get(recent_orders))
        .route("/api/orders/{id}/timeline", get(timeline))
        .route("/api/stream", get(stream))
        .route("/api/place/{kind}", post(place))
        .route("/api/orders/{id}/cancel", post(cancel))
        .route(
            "/api/dead-letters",
            get(crate::dead_letters::current).with_state(dead_letters),
        )
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn flow(State(console): State<Console>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        console.flow.as_str().to_owned(),
    )
        .into_response()
}

/// One event as the page shows it.
#[derive(Serialize, sqlx::FromRow)]
struct Heard {
    seq: i64,
    message_id: Uuid,
    order_id: Uuid,
    event_type: String,
    producer: String,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    payload: Value,
}

const HEARD_COLUMNS: &str =
    "seq, message_id, order_id, event_type, producer, causation_id, occurred_at, payload";

#[derive(Deserialize)]
struct RecentQuery {
    limit: Option<i64>,
}

/// `GET /api/orders?limit=N`: the events of the N orders heard of most recently.
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

/// `GET /api/orders/{id}/timeline`: everything announced about one order, in the order it
/// happened.
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

#[derive(Deserialize)]
struct StreamQuery {
    /// The last `seq` the page already has (from `/api/orders`): nothing between is missed.
    after: Option<i64>,
}

/// `GET /api/stream?after=SEQ`: server-sent events, one `heard` per event as it arrives here
/// (after the `Last-Event-ID` a reconnecting page sends, else after `after`, else from now),
/// and a `rate` (events per second over the last five seconds) every second.
async fn stream(
    State(console): State<Console>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let query = requests::query(query)?;
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(query.after);
    let state = Streaming {
        db: console.db,
        after: resume_from,
        pending: Vec::new(),
        ticks: 0,
        database: Outage::new("the database (as a console stream sees it)"),
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await;
        Some((Ok(event), state))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

struct Streaming {
    db: Db,
    /// The last `seq` sent; `None` until the first poll sets it to the newest.
    after: Option<i64>,
    pending: Vec<SseEvent>,
    ticks: u64,
    database: Outage,
}

impl Streaming {
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.pending.pop() {
                return event;
            }
            tokio::time::sleep(STREAM_POLL).await;
            self.ticks += 1;
            let db = self.db.clone();
            match db.bounded(self.poll()).await {
                Ok(()) => self.database.answered(),
                Err(e) => self.database.failed(&e),
            }
        }
    }

    /// Queues what arrived since the last poll (and, once a second, the rate).
    async fn poll(&mut self) -> Result<(), sqlx::Error> {
        let after = match self.after {
            Some(after) => after,
            None => {
                let newest: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM console.events")
                    .fetch_one(&self.db.pool)
                    .await?;
                self.after = Some(newest.unwrap_or(0));
                return Ok(());
            }
        };
        let heard: Vec<Heard> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {HEARD_COLUMNS} FROM console.events WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after)
        .bind(STREAM_BATCH)
        .fetch_all(&self.db.pool)
        .await?;
        let mut batch = Vec::with_capacity(heard.len() + 1);
        for event in &heard {
            self.after = Some(event.seq);
            let data = serde_json::to_string(event).unwrap_or_default();
            batch.push(
                SseEvent::default()
                    .event("heard")
                    .id(event.seq.to_string())
                    .data(data),
            );
        }
        if self.ticks.is_multiple_of(5) {
            let recent: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM console.events WHERE received_at > now() - interval '5 seconds'",
            )
            .fetch_one(&self.db.pool)
            .await?;
            let rate = json!({ "events_per_second": recent as f64 / 5.0 });
            batch.push(SseEvent::default().event("rate").data(rate.to_string()));
        }
        // Popped from the end: oldest last in, first out.
        batch.reverse();
        self.pending = batch;
        Ok(())
    }
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

/// `POST /api/place/{kind}`: places an order through the Orders API; answers with what the
/// Orders API answered.
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

/// `POST /api/orders/{id}/cancel`: cancels through the Orders API.
async fn cancel(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let order_id = requests::order_id(&id)?;
    let url = format!("{}/orders/{order_id}/cancel", console.orders_url);
    let response = console.http.post(&url).send().await;
    relay(response).await
}

/// The Orders API's answer, passed on (status and JSON body); `502` if it did not answer.
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
    let body: Value = response.json().await.map_err(unreachable)?;
    Ok((status, Json(body)).into_response())
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
