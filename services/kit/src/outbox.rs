//! The transactional outbox: an event is a row written in the same transaction as the state
//! change it announces, and a relay publishes unsent rows afterwards.
//!
//! A crash after the broker confirmed but before the row was marked sent publishes the same
//! `message_id` again on restart; consumers' inboxes absorb that duplicate.

use std::{marker::PhantomData, sync::Arc, time::Duration};

use shared_events::{Envelope, Event, Participant};
use sqlx::PgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    db::Db,
    metrics::Metrics,
    publisher::{Outgoing, PublishError, Publisher, envelope_properties},
    telemetry::ErrorChain,
};

/// Rows published per transaction: bounded so a backlog drains in steps that each commit.
const BATCH_SIZE: i64 = 200;

/// The outbox of participant `P`: only the events the catalog says `P` produces go in.
pub struct Outbox<P>(PhantomData<fn() -> P>);

impl<P: Participant> Outbox<P> {
    /// Records `event` for publication, caused by `causation_id`, inside the caller's
    /// transaction (whose `search_path` is the service's schema).
    pub async fn append<E: Event<Producer = P>>(
        conn: &mut PgConnection,
        event: &E,
        causation_id: Option<Uuid>,
    ) -> Result<Envelope, sqlx::Error> {
        append(conn, event, causation_id).await
    }
}

async fn append<E: Event>(
    conn: &mut PgConnection,
    event: &E,
    causation_id: Option<Uuid>,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::new(event, causation_id);
    sqlx::query(
        "INSERT INTO outbox
             (message_id, event_type, routing_key, correlation_id, causation_id, envelope)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.message_id)
    .bind(E::TYPE)
    .bind(E::ROUTING_KEY)
    .bind(envelope.correlation_id)
    .bind(envelope.causation_id)
    .bind(sqlx::types::Json(&envelope))
    .execute(conn)
    .await?;
    tracing::debug!(
        message_id = %envelope.message_id,
        event_type = E::TYPE,
        order_id = %envelope.correlation_id,
        causation_id = ?envelope.causation_id,
        "event recorded in outbox"
    );
    Ok(envelope)
}

/// Publishes unsent outbox rows: right after a commit wakes it, and on a slow sweep for rows
/// no wake-up announced (another instance's, or left by a crash).
pub(crate) struct Relay {
    db: Db,
    wake: Arc<Notify>,
    sweep_interval: Duration,
    metrics: Metrics,
}

impl Relay {
    pub(crate) fn new(db: Db, sweep_interval: Duration, metrics: Metrics) -> Self {
        Self {
            wake: db.relay_wake(),
            db,
            sweep_interval,
            metrics,
        }
    }

    /// Runs until `stop` fires (`Ok`) or the broker connection fails (`Err`: reconnect).
    /// Database trouble is logged and retried on the next sweep; it never ends the relay.
    pub(crate) async fn run(
        &self,
        publisher: &Publisher,
        exchange: &str,
        stop: &CancellationToken,
    ) -> Result<(), PublishError> {
        loop {
            loop {
                match self.relay_batch(publisher, exchange).await {
                    Ok(BatchOutcome::Drained) => break,
                    Ok(BatchOutcome::More) => {}
                    Ok(BatchOutcome::Failed(e)) if e.is_connection_error() => return Err(e),
                    Ok(BatchOutcome::Failed(e)) => {
                        tracing::warn!(error = %ErrorChain(&e), "outbox rows left unsent; retrying on the next sweep");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot read the database");
                        break;
                    }
                }
                if stop.is_cancelled() {
                    return Ok(());
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.sweep_interval) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Locks a batch of unsent rows (skipping rows another relay holds), publishes them,
    /// marks the confirmed ones sent, all in one transaction.
    async fn relay_batch(
        &self,
        publisher: &Publisher,
        exchange: &str,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<(i64, String, sqlx::types::Json<Envelope>)> = sqlx::query_as(
            "SELECT id, routing_key, envelope FROM outbox
             WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(BatchOutcome::Drained);
        }

        let bodies: Vec<Vec<u8>> = rows
            .iter()
            .map(|(_, _, envelope)| envelope.to_json())
            .collect();
        let messages = rows
            .iter()
            .zip(&bodies)
            .map(|((_, routing_key, envelope), body)| Outgoing {
                exchange,
                routing_key,
                body,
                properties: envelope_properties(envelope),
            })
            .collect();
        let results = publisher.publish_all(messages).await;

        let mut sent = Vec::new();
        let mut first_failure = None;
        for ((id, routing_key, envelope), result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    tracing::info!(
                        message_id = %envelope.message_id,
                        event_type = %envelope.event_type,
                        routing_key,
                        order_id = %envelope.correlation_id,
                        causation_id = ?envelope.causation_id,
                        "published"
                    );
                    sent.push(*id);
                }
                Err(e) => {
                    sqlx::query(
                        "UPDATE outbox
                         SET publish_attempts = publish_attempts + 1, last_error = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(e.to_string())
                    .execute(&mut *tx)
                    .await?;
                    first_failure.get_or_insert(e);
                }
            }
        }
        sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.metrics
            .add("shop_outbox_published_total", &[], sent.len() as u64);

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

enum BatchOutcome {
    Drained,
    More,
    Failed(PublishError),
}
