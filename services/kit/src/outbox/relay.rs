//! The outbox relay: publishes the rows transactions wrote (`write`), each event right after
//! its commit, and on a sweep whatever no commit handed over.
//!
//! A crash after the broker confirmed but before the row was marked sent publishes the same
//! `message_id` again on restart; consumers' inboxes absorb that duplicate.

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesOrdered};
use shared_events::Envelope;
use tokio::{
    sync::{Mutex, mpsc},
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    broker::{
        publisher::{Outgoing, PublishError, Publisher, envelope_properties},
        span::{End, message_span},
        topology::Topology,
    },
    outbox::write::{Announced, Feed},
    runtime::{
        db::Db,
        metrics::Metrics,
        outage::Outage,
        telemetry::{self, ErrorChain},
    },
};

/// Rows a sweep publishes per transaction: bounded so a backlog drains in steps that each commit.
const BATCH_SIZE: i64 = 200;
/// How old an unsent row must be before a sweep takes it: younger rows are normally still
/// travelling through the feed, and taking them too would publish them twice.
const SWEEP_GRACE: Duration = Duration::from_secs(3);
/// Confirmed rows marked sent per statement, at most.
const MARK_BATCH: usize = 1000;
/// How long confirmed rows gather before they are marked sent together: nothing waits on the
/// mark, and one statement for many rows saves a transaction per event (at 50 ms the marks were
/// still half a transaction per order at saturation). Far below [`SWEEP_GRACE`], so a sweep
/// never takes a row whose mark is merely waiting.
const MARK_LINGER: Duration = Duration::from_millis(250);

/// Publishes outbox rows. Committing transactions hand it the events they wrote (the feed):
/// each is sent at once, its confirm awaited alongside later sends, and confirmed rows are
/// marked sent in batches off that path. A periodic sweep publishes the rows no feed announced:
/// another instance's, those committed while the broker was away, those left by a crash.
pub(crate) struct Relay {
    db: Db,
    feed: Mutex<Feed>,
    sweep_interval: Duration,
    metrics: Metrics,
    /// The database as the relay sees it: an outage is logged as it begins and ends, and the
    /// relay waits for its next sweep meanwhile.
    database: Outage,
}

impl Relay {
    pub(crate) fn new(db: Db, sweep_interval: Duration, metrics: Metrics) -> Self {
        let feed = db
            .take_feed()
            .expect("a service runs one relay, the only taker of its commits' feed");
        Self {
            db,
            feed: Mutex::new(feed),
            sweep_interval,
            metrics,
            database: Outage::new("the database (as the outbox relay sees it)"),
        }
    }

    /// Runs until `stop` fires (`Ok`, after the confirms in flight arrived) or the broker
    /// connection fails (`Err`: reconnect). Database trouble is logged and left to the next
    /// sweep; it never ends the relay.
    pub(crate) async fn run(
        &self,
        publisher: &Publisher,
        topology: &Topology,
        stop: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut feed = self.feed.lock().await;
        // Events fed while no session could publish them are still unsent rows: the first
        // sweep, which takes every unsent row, publishes them in order.
        while feed.try_recv().is_ok() {}
        let (confirmed, to_mark) = mpsc::unbounded_channel();
        let publishing = async move {
            self.publish(&mut feed, publisher, topology, stop, confirmed)
                .await
        };
        let (result, ()) = tokio::join!(publishing, self.mark_sent(to_mark));
        result
    }

    async fn publish(
        &self,
        feed: &mut Feed,
        publisher: &Publisher,
        topology: &Topology,
        stop: &CancellationToken,
        confirmed: mpsc::UnboundedSender<i64>,
    ) -> Result<(), PublishError> {
        let mut in_flight = FuturesOrdered::new();
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut grace = Duration::ZERO;
        loop {
            tokio::select! {
                biased;
                Some((id, result)) = in_flight.next() => {
                    self.settle(id, result, &confirmed).await?;
                }
                () = stop.cancelled(), if in_flight.is_empty() => return Ok(()),
                Some(event) = feed.recv(), if !stop.is_cancelled() => {
                    let Announced { id, routing_key, mut envelope } = event;
                    let exchange = topology.exchange_for(&envelope.event_type);
                    let span = publish_span(exchange, routing_key, &mut envelope);
                    let body = envelope.to_json();
                    let message = Outgoing {
                        exchange,
                        routing_key,
                        body: &body,
                        properties: envelope_properties(&envelope),
                    };
                    match publisher.send(message).await {
                        Ok(confirm) => in_flight.push_back(async move {
                            let result = confirm.await;
                            publish_failed(&span, result.as_ref().err());
                            (id, result)
                        }),
                        Err(e) => {
                            publish_failed(&span, Some(&e));
                            self.settle(id, Err(e), &confirmed).await?;
                        }
                    }
                }
                _ = sweep.tick(), if in_flight.is_empty() && !stop.is_cancelled() => {
                    self.sweep(publisher, topology, grace).await?;
                    grace = SWEEP_GRACE;
                }
            }
        }
    }

    /// Records a fed event's fate: confirmed rows go to be marked sent; a refused one keeps
    /// its row unsent (with the error) for a later sweep; a failed connection ends the session.
    async fn settle(
        &self,
        id: i64,
        result: Result<(), PublishError>,
        confirmed: &mpsc::UnboundedSender<i64>,
    ) -> Result<(), PublishError> {
        match result {
            Ok(()) => {
                self.metrics.inc("shop_outbox_published_total", &[]);
                let _ = confirmed.send(id);
                Ok(())
            }
            Err(e) if e.is_connection_error() => Err(e),
            Err(e) => {
                self.metrics.inc("shop_outbox_publish_failures_total", &[]);
                tracing::warn!(error = %ErrorChain(&e), outbox_id = id, "event not published; retrying on a later sweep");
                if let Err(db) = self.db.bounded(record_failure(&self.db.pool, id, &e)).await {
                    self.database.failed(&db);
                }
                Ok(())
            }
        }
    }

    /// Marks confirmed rows sent, as many per statement as have piled up. A mark lost to a
    /// crash or a database error only means the row is published again (consumers' inboxes
    /// absorb the copy).
    async fn mark_sent(&self, mut confirmed: mpsc::UnboundedReceiver<i64>) {
        let mut ids = Vec::new();
        while confirmed.recv_many(&mut ids, MARK_BATCH).await > 0 {
            tokio::time::sleep(MARK_LINGER).await;
            while ids.len() < MARK_BATCH && !confirmed.is_empty() {
                let room = MARK_BATCH - ids.len();
                confirmed.recv_many(&mut ids, room).await;
            }
            let marked = sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&self.db.pool);
            match self.db.bounded(marked).await {
                Ok(_) => self.database.answered(),
                // The rows stay unsent and are published again (consumers absorb the copies).
                Err(e) => self.database.failed(&e),
            }
            ids.clear();
        }
    }

    /// Publishes every unsent row older than `grace` (younger ones are still on their way
    /// through the feed), batch by batch.
    async fn sweep(
        &self,
        publisher: &Publisher,
        topology: &Topology,
        grace: Duration,
    ) -> Result<(), PublishError> {
        loop {
            let swept = self.sweep_batch(publisher, topology, grace).await;
            if swept.is_ok() {
                self.database.answered();
            }
            match swept {
                Ok(BatchOutcome::Drained) => return Ok(()),
                Ok(BatchOutcome::More) => {}
                Ok(BatchOutcome::Failed(e)) if e.is_connection_error() => return Err(e),
                Ok(BatchOutcome::Failed(e)) => {
                    tracing::warn!(error = %ErrorChain(&e), "outbox rows left unsent; retrying on the next sweep");
                    return Ok(());
                }
                Err(e) => {
                    self.database.failed(&e);
                    return Ok(());
                }
            }
        }
    }

    /// Locks a batch of unsent rows (skipping rows another relay holds) and publishes them;
    /// the confirmed ones are marked sent before the locks are released, so two relays never
    /// both publish a row.
    async fn sweep_batch(
        &self,
        publisher: &Publisher,
        topology: &Topology,
        grace: Duration,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.db.bounded(self.db.begin()).await?;
        let mut rows: Vec<(i64, String, sqlx::types::Json<Envelope>)> = self
            .db
            .bounded(
                sqlx::query_as(
                    "SELECT id, routing_key, envelope FROM outbox
                     WHERE sent_at IS NULL AND created_at <= now() - make_interval(secs => $2)
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                )
                .bind(BATCH_SIZE)
                .bind(grace.as_secs_f64())
                .fetch_all(&mut *tx),
            )
            .await?;
        if rows.is_empty() {
            return Ok(BatchOutcome::Drained);
        }

        let spans: Vec<Span> = rows
            .iter_mut()
            .map(|(_, routing_key, envelope)| {
                publish_span(
                    topology.exchange_for(&envelope.event_type),
                    routing_key,
                    envelope,
                )
            })
            .collect();
        let bodies: Vec<Vec<u8>> = rows
            .iter()
            .map(|(_, _, envelope)| envelope.to_json())
            .collect();
        let messages = rows
            .iter()
            .zip(&bodies)
            .map(|((_, routing_key, envelope), body)| Outgoing {
                exchange: topology.exchange_for(&envelope.event_type),
                routing_key,
                body,
                properties: envelope_properties(envelope),
            })
            .collect();
        let results = publisher.publish_all(messages).await;

        let mut sent = Vec::new();
        let mut first_failure = None;
        for (((id, _, _), result), span) in rows.iter().zip(results).zip(&spans) {
            publish_failed(span, result.as_ref().err());
            match result {
                Ok(()) => sent.push(*id),
                Err(e) => {
                    self.db.bounded(record_failure(&mut *tx, *id, &e)).await?;
                    first_failure.get_or_insert(e);
                }
            }
        }
        self.db
            .bounded(async {
                sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                    .bind(&sent)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
            .await?;
        self.metrics
            .add("shop_outbox_published_total", &[], sent.len() as u64);
        tracing::info!(
            rows = sent.len(),
            "outbox sweep published rows no commit handed over"
        );

        Ok(match first_failure {
            Some(e) => {
                self.metrics.add(
                    "shop_outbox_publish_failures_total",
                    &[],
                    (rows.len() - sent.len()) as u64,
                );
                BatchOutcome::Failed(e)
            }
            None if rows.len() as i64 == BATCH_SIZE => BatchOutcome::More,
            None => BatchOutcome::Drained,
        })
    }
}

/// The PRODUCER span of one publish, a child of the trace context its outbox row kept; the
/// message then carries this span's context, so its consumers' spans are children of it.
fn publish_span(exchange: &str, routing_key: &str, envelope: &mut Envelope) -> Span {
    let destination = format!("{exchange}:{routing_key}");
    let span = message_span(End::Publish, &destination, routing_key, envelope);
    telemetry::stamp(envelope, &span);
    tracing::debug!(parent: &span, "publishing");
    span
}

/// Marks a publish span failed, with the reason.
fn publish_failed(span: &Span, error: Option<&PublishError>) {
    if let Some(error) = error {
        span.set_status(opentelemetry::trace::Status::error(error.to_string()));
    }
}

async fn record_failure<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    id: i64,
    error: &PublishError,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET publish_attempts = publish_attempts + 1, last_error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(error.to_string())
    .execute(executor)
    .await?;
    Ok(())
}

enum BatchOutcome {
    Drained,
    More,
    Failed(PublishError),
}
