//! The live stream (`GET /api/stream`): server-sent events, one `heard` per event as it
//! arrives here, and the rate once a second. A stream holds a connection for as long as a page
//! is open, so the console serves at most `CONSOLE_MAX_STREAMS` at once and refuses one more
//! with a problem: streams cannot take every connection from the page and the probes.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use serde::Deserialize;
use serde_json::json;
use service_kit::{ApiError, Db, Outage, problem::Problem, requests};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::IntoParams;

use crate::heard::{HEARD_COLUMNS, Heard, TAG};

/// How often a stream looks for events that arrived.
const STREAM_POLL: Duration = Duration::from_millis(200);
/// Events sent to one page per poll, at most.
const STREAM_BATCH: i64 = 500;
/// Seconds a page turned away is asked to wait before opening its stream again.
const RETRY_AFTER_SECS: u32 = 5;

/// The streams open now, out of `CONSOLE_MAX_STREAMS`.
#[derive(Clone)]
pub(crate) struct Streams {
    open: Arc<Semaphore>,
    bound: usize,
}

impl Streams {
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(bound)),
            bound,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// The last `seq` the page already has (from `/api/orders`): nothing between is missed.
    after: Option<i64>,
}

/// Server-sent events: a `heard` per event as it arrives here (after the `Last-Event-ID` a
/// reconnecting page sends, else after `after`, else from now), and a `rate` (events per
/// second over the last five seconds) every second.
#[utoipa::path(get, path = "/api/stream", tag = TAG, params(StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this `seq`")),
    responses(
        (status = 200, description = "An endless `text/event-stream`: events `heard` (data: an \
            event as `/api/orders` lists it, id: its `seq`) and `rate` \
            (data: `{\"events_per_second\": …}`)", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`after` is not a number", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "`too_many_streams`: CONSOLE_MAX_STREAMS are open", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ))]
pub(crate) async fn stream(
    State(db): State<Db>,
    State(streams): State<Streams>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = requests::query(query)?;
    let Ok(permit) = streams.open.clone().try_acquire_owned() else {
        return Ok(too_many(streams.bound));
    };
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(query.after);
    let state = Streaming {
        db,
        after: resume_from,
        pending: Vec::new(),
        ticks: 0,
        database: Outage::new("the database (as a console stream sees it)"),
        _permit: permit,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await;
        Some((Ok::<_, Infallible>(event), state))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn too_many(bound: usize) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_streams",
        format!(
            "the console serves {bound} live streams at once (CONSOLE_MAX_STREAMS), all open; \
             retry after {RETRY_AFTER_SECS} s"
        ),
    )
    .retry_after(RETRY_AFTER_SECS)
}

struct Streaming {
    db: Db,
    /// The last `seq` sent; `None` until the first poll sets it to the newest.
    after: Option<i64>,
    pending: Vec<SseEvent>,
    ticks: u64,
    database: Outage,
    /// Its place among the open streams, given back when the page goes.
    _permit: OwnedSemaphorePermit,
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
