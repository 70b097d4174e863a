//! The idempotent consumer (the inbox). Each delivery is handled in one transaction that records its
//! `message_id` in the inbox, applies the effect and appends the outgoing events; the ack
//! follows the commit. A duplicate finds its id already there and is acked with no effect.
//!
//! Failures never block the queue: a handler that cannot proceed yet (an event that arrived
//! before the fact it depends on) or hit a transient error is re-published to a delay queue
//! and acked; after `max_attempts`, or at once for a message no retry can fix, it goes to the
//! dead-letter queue with the reason in its headers.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use shared_events::Envelope;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    db::{self, Db},
    handler::{Ctx, HandlerError, Routes, Service},
    metrics::Metrics,
    publisher::{Outgoing, PublishError, Publisher, header_text, header_u32},
    telemetry::ErrorChain,
    topology::Topology,
};

/// How long in-flight deliveries may take to finish on shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);
/// ... and after the channel failed (their acks cannot be delivered anyway).
const FAILURE_DRAIN: Duration = Duration::from_secs(5);
/// An ack or nack that takes longer went to a dead channel; the broker will redeliver.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why consuming stopped (other than being asked to).
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot consume")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer or closed its channel")]
    ConsumerEnded,
    #[error("the connection to the broker was lost")]
    ConnectionLost,
}

/// Headers the consumer sets on messages it retries or dead-letters.
pub mod headers {
    /// 1 for the first delivery, 2 for the first retry, ...
    pub const ATTEMPT: &str = "x-shop-attempt";
    /// The routing key the event was published with (retries travel under other keys).
    pub const ORIGINAL_ROUTING_KEY: &str = "x-shop-original-routing-key";
    pub const DEAD_LETTER_REASON: &str = "x-shop-dead-letter-reason";
    pub const LAST_ERROR: &str = "x-shop-last-error";
}

enum Applied {
    Effect,
    Duplicate,
}

/// What a failed delivery becomes.
enum Disposition {
    /// `next_attempt` goes in the header; `delay_step` picks the delay queue.
    Retry {
        next_attempt: u32,
        delay_step: u32,
        error: String,
    },
    DeadLetter {
        reason: String,
    },
}

pub(crate) struct Consumer<S: Service> {
    pub(crate) service: &'static str,
    pub(crate) state: Arc<S>,
    pub(crate) routes: Arc<Routes<S>>,
    pub(crate) db: Db,
    pub(crate) topology: Arc<Topology>,
    pub(crate) max_attempts: u32,
    pub(crate) metrics: Metrics,
}

impl<S: Service> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service,
            state: self.state.clone(),
            routes: self.routes.clone(),
            db: self.db.clone(),
            topology: self.topology.clone(),
            max_attempts: self.max_attempts,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: Service> Consumer<S> {
    /// Consumes until `stop` fires (`Ok`) or the channel fails (`Err`, after cancelling
    /// `failed` at once). Either way, deliveries already being handled finish (and are acked)
    /// before this returns; the rest go back to the queue when the channel closes.
    pub(crate) async fn run(
        &self,
        channel: &Channel,
        publisher: &Publisher,
        stop: &CancellationToken,
        failed: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let tag = format!("{}-{}", self.service, Uuid::now_v7());
        let mut deliveries = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut in_flight = JoinSet::new();
        let ended = loop {
            tokio::select! {
                () = failed.cancelled() => break Err(ConsumeError::ConnectionLost),
                () = stop.cancelled() => break Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let consumer = self.clone();
                        let publisher = publisher.clone();
                        in_flight.spawn(async move { consumer.handle(delivery, &publisher).await });
                        // Reap finished handlers as we go, so the set stays small.
                        while in_flight.try_join_next().is_some() {}
                    }
                    Some(Err(e)) => break Err(ConsumeError::Amqp(e)),
                    None => break Err(ConsumeError::ConsumerEnded),
                },
            }
        };
        if ended.is_err() {
            failed.cancel();
        } else {
            // Stop deliveries first so nothing new arrives while in-flight work finishes.
            let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(ACK_TIMEOUT, cancel).await;
        }
        // Let in-flight handlers finish and ack. After a failure their acks cannot reach the
        // broker anyway, so they get less time; what is cut short is redelivered and the inbox
        // absorbs whatever had already committed.
        let grace = if ended.is_ok() {
            SHUTDOWN_DRAIN
        } else {
            FAILURE_DRAIN
        };
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                service = self.service,
                abandoned = in_flight.len(),
                "in-flight deliveries did not finish in time; they will be redelivered"
            );
            in_flight.abort_all();
        }
        ended
    }

    async fn handle(&self, delivery: Delivery, publisher: &Publisher) {
        let attempt = header_u32(&delivery.properties, headers::ATTEMPT).unwrap_or(1);
        let envelope = match Envelope::from_json(&delivery.data) {
            Ok(envelope) => envelope,
            Err(e) => {
                let reason = e.to_string();
                self.metrics.inc(
                    "shop_messages_total",
                    &[("event", "?"), ("outcome", "malformed")],
                );
                tracing::warn!(%reason, routing_key = %delivery.routing_key, "malformed message");
                return self
                    .reroute(
                        delivery,
                        publisher,
                        attempt,
                        Disposition::DeadLetter { reason },
                    )
                    .await;
            }
        };
        let span = tracing::info_span!(
            "handle",
            service = self.service,
            event_type = %envelope.event_type,
            message_id = %envelope.message_id,
            order_id = %envelope.correlation_id,
            correlation_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id,
            attempt,
        );
        async {
            let (outcome, disposition) = match self.apply(&envelope).await {
                Ok(Applied::Effect) => ("applied", None),
                Ok(Applied::Duplicate) => ("duplicate", None),
                Err(HandlerError::Rejected(reason)) => {
                    ("rejected", Some(Disposition::DeadLetter { reason }))
                }
                // Data the database cannot hold: every attempt would fail the same way.
                Err(HandlerError::Database(e)) if db::is_data_exception(&e) => {
                    let reason = format!("the database cannot store this message's data: {e}");
                    ("rejected", Some(Disposition::DeadLetter { reason }))
                }
                // The database is away (restarting, failing over): not this message's fault,
                // so the try does not count; it waits in a delay queue like any retry.
                Err(HandlerError::Database(e)) if db::is_connection_error(&e) => {
                    let retry = Disposition::Retry {
                        next_attempt: attempt,
                        delay_step: attempt + 1,
                        error: e.to_string(),
                    };
                    ("retried", Some(retry))
                }
                Err(e) if attempt >= self.max_attempts => {
                    let reason = format!("gave up after {attempt} attempts: {e}");
                    ("exhausted", Some(Disposition::DeadLetter { reason }))
                }
                Err(e) => {
                    let retry = Disposition::Retry {
                        next_attempt: attempt + 1,
                        delay_step: attempt + 1,
                        error: e.to_string(),
                    };
                    ("retried", Some(retry))
                }
            };
            self.metrics.inc(
                "shop_messages_total",
                &[("event", &envelope.event_type), ("outcome", outcome)],
            );
            match disposition {
                None => {
                    tracing::info!(outcome, "handled");
                    ack(&delivery).await;
                }
                Some(disposition) => {
                    self.reroute(delivery, publisher, attempt, disposition)
                        .await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Inbox entry, effect and outgoing events in one transaction.
    async fn apply(&self, envelope: &Envelope) -> Result<Applied, HandlerError> {
        let mut tx = self.db.begin().await?;
        // The first delivery inserts the id (0 duplicates so far); a later one finds it and
        // only counts itself, so duplicates absorbed stay auditable after restarts.
        let duplicates: i32 = sqlx::query_scalar(
            "INSERT INTO inbox
                 (message_id, event_type, correlation_id, causation_id, producer, occurred_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (message_id) DO UPDATE SET duplicates = inbox.duplicates + 1
             RETURNING duplicates",
        )
        .bind(envelope.message_id)
        .bind(&envelope.event_type)
        .bind(envelope.correlation_id)
        .bind(envelope.causation_id)
        .bind(&envelope.producer)
        .bind(envelope.occurred_at)
        .fetch_one(&mut *tx)
        .await?;
        if duplicates > 0 {
            tx.commit().await?;
            return Ok(Applied::Duplicate);
        }
        let mut ctx = Ctx::new(tx, envelope.message_id);
        let Some(handled) = self.routes.dispatch(&self.state, &mut ctx, envelope) else {
            return Err(HandlerError::Rejected(format!(
                "{} subscribes to no event of type {:?}",
                self.service, envelope.event_type
            )));
        };
        handled.await?;
        self.db.commit(ctx.tx).await?;
        Ok(Applied::Effect)
    }

    /// Moves a failed delivery on (to a retry queue or the dead-letter queue), then acks it.
    /// The copy is confirmed before the ack, so a crash in between duplicates, never loses.
    async fn reroute(
        &self,
        delivery: Delivery,
        publisher: &Publisher,
        attempt: u32,
        disposition: Disposition,
    ) {
        let original_routing_key = header_text(&delivery.properties, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.to_string());
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            text(&original_routing_key),
        );
        let (queue, metric) = match &disposition {
            Disposition::Retry {
                next_attempt,
                delay_step,
                error,
            } => {
                tracing::warn!(%error, next_attempt, "handler failed; retrying later");
                headers.insert(
                    headers::ATTEMPT.into(),
                    AMQPValue::LongLongInt((*next_attempt).into()),
                );
                headers.insert(headers::LAST_ERROR.into(), text(error));
                (
                    self.topology.retry_queue_for(*delay_step),
                    "shop_retries_total",
                )
            }
            Disposition::DeadLetter { reason } => {
                tracing::error!(%reason, attempt, "dead-lettering message");
                headers.insert(
                    headers::ATTEMPT.into(),
                    AMQPValue::LongLongInt(attempt.into()),
                );
                headers.insert(headers::DEAD_LETTER_REASON.into(), text(reason));
                (
                    self.topology.dead_letter_queue.as_str(),
                    "shop_dead_letters_total",
                )
            }
        };
        let copy = Outgoing {
            exchange: &self.topology.private_exchange,
            routing_key: queue,
            body: &delivery.data,
            properties: delivery.properties.clone().with_headers(headers),
        };
        match publisher.publish(copy).await {
            Ok(()) => {
                self.metrics.inc(metric, &[]);
                ack(&delivery).await;
            }
            Err(e) => requeue(&delivery, &e).await,
        }
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn ack(delivery: &Delivery) {
    let acked = tokio::time::timeout(ACK_TIMEOUT, delivery.acker.ack(BasicAckOptions::default()));
    match acked.await {
        Ok(Ok(_)) => {}
        // The broker will redeliver it; the inbox makes that harmless.
        Ok(Err(e)) => tracing::warn!(error = %e, "ack failed; the message will be redelivered"),
        Err(_) => tracing::warn!("ack timed out; the message will be redelivered"),
    }
}

/// The copy could not be published: hand the original back so nothing is lost.
async fn requeue(delivery: &Delivery, error: &PublishError) {
    tracing::warn!(error = %ErrorChain(error), "could not move the message on; returning it to the queue");
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let nacked = tokio::time::timeout(ACK_TIMEOUT, delivery.acker.nack(requeue));
    if !matches!(nacked.await, Ok(Ok(_))) {
        tracing::warn!("nack failed; the broker will redeliver on reconnect");
    }
}
