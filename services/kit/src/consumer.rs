//! The idempotent consumer. It takes the deliveries waiting in its prefetch window as one
//! batch (`batch`) and applies them in one transaction: for each, its `message_id` recorded in
//! the inbox (`inbox`), its effect and its outgoing events; the acks follow the commit. A
//! duplicate finds its id already there and is acked with no effect.
//!
//! Failures never block the queue; `failure` decides each failed message's fate. An event
//! that arrived before the fact it depends on is parked (`parked`) and applied as soon as that
//! fact commits; a retry goes to a delay queue; a dead letter goes to the dead-letter queue
//! with the reason in its headers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared_events::{CATALOG, Envelope};
use sqlx::postgres::{PgListener, PgNotification};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    backoff::Backoff,
    batch::Held,
    db::Db,
    failure::{Move, Schedule},
    handler::{Ctx, HandlerError, Routes, Service, UnitOfWork},
    inbox,
    metrics::Metrics,
    outage::Outage,
    parked::ParkingLot,
    provenance::Vouched,
    publisher::{Outgoing, PublishError, Publisher},
    telemetry,
    topology::Topology,
};

/// How long in-flight deliveries may take to finish on shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);
/// ... and after the channel failed (their acks cannot be delivered anyway).
const FAILURE_DRAIN: Duration = Duration::from_secs(5);
/// An ack or nack that takes longer went to a dead channel; the broker will redeliver.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting the parked-order listener may hold up the consumer's loop.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a batch may take once the database answers probes but the batch kept timing out.
const SLOW_BATCH_BOUND: Duration = Duration::from_secs(60);
/// The first wait before asking a silent database again (it doubles up to `DB_PROBE_MAX_MS`).
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// How often the dead-letter queue's depth is sampled for `/metrics` (and a lost parked-order
/// listener is set up again).
const DEAD_LETTER_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

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
    /// The broker user that first published it (a copy is published by this service).
    pub const ORIGINAL_PUBLISHER: &str = "x-shop-original-publisher";
    pub const DEAD_LETTER_REASON: &str = "x-shop-dead-letter-reason";
    /// When it was dead-lettered (RFC 3339), for grouping dead letters by cause over time.
    pub const DEAD_LETTERED_AT: &str = "x-shop-dead-lettered-at";
    pub const LAST_ERROR: &str = "x-shop-last-error";
}

/// What came of applying a message.
pub(crate) enum Applied {
    Effect,
    Duplicate,
    /// The parked message being tried again was already taken out of the lot.
    Gone,
}

pub(crate) struct Consumer<S: Service> {
    pub(crate) service: &'static str,
    pub(crate) state: Arc<S>,
    pub(crate) routes: Arc<Routes<S>>,
    pub(crate) db: Db,
    pub(crate) topology: Arc<Topology>,
    pub(crate) schedule: Schedule,
    /// Deliveries applied in one transaction at most (`CONSUMER_BATCH_MAX`).
    pub(crate) batch_max: usize,
    /// Every service publishes as a broker user of its own name: believe an event only from
    /// its producer's user.
    pub(crate) users_per_service: bool,
    pub(crate) parking: Arc<ParkingLot>,
    pub(crate) metrics: Metrics,
    /// The database as this consumer sees it: an outage is logged as it begins and ends.
    pub(crate) database: Outage,
    /// The circuit breaker, for `/readyz`: set while a batch waits for the database.
    pub(crate) paused: Arc<AtomicBool>,
    /// `DB_PROBE_MAX_MS`: the longest wait between two questions to a silent database.
    pub(crate) probe_max: Duration,
}

/// The one piece of work a consumer has in flight.
enum Step {
    /// A batch settled.
    Settled,
    /// A batch the database did not take (see `Held`).
    Held(Held),
    /// The database was asked whether it answers again, a held batch waiting on the answer.
    Probed(Vec<Delivery>, Result<(), sqlx::Error>),
}

impl<S: Service> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service,
            state: self.state.clone(),
            routes: self.routes.clone(),
            db: self.db.clone(),
            topology: self.topology.clone(),
            schedule: self.schedule,
            batch_max: self.batch_max,
            users_per_service: self.users_per_service,
            parking: self.parking.clone(),
            metrics: self.metrics.clone(),
            database: self.database.clone(),
            paused: self.paused.clone(),
            probe_max: self.probe_max,
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
        self.paused.store(false, Ordering::SeqCst);
        let mut deliveries = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // One batch at a time: what arrives meanwhile waits in the prefetch window and makes
        // the next batch, and two batches never hold each other's row locks.
        let mut batch = JoinSet::new();
        // The circuit breaker: a batch the database did not take is held (unacked, its attempts
        // unspent) and nothing more is taken until a probe finds the database answering; then
        // the held batch goes first. The deliveries stay where they are: nothing churns through
        // the delay queues, nothing is dead-lettered for an outage.
        let mut held: Option<Vec<Delivery>> = None;
        let mut probe = Backoff::capped(PROBE_FIRST, self.probe_max);
        // How long a batch may take: `DB_TIMEOUT_MS`, unless a batch timed out while the
        // database kept answering probes (slow, not silent): then each try gets twice as long.
        let mut bound = self.db.timeout;
        let probe_at = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(probe_at);
        let mut in_flight = JoinSet::new();
        let mut parked_sweep = tokio::time::interval(self.parking.sweep_interval);
        parked_sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dead_letter_depth = tokio::time::interval(DEAD_LETTER_DEPTH_INTERVAL);
        dead_letter_depth.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Another instance's commit may free what this one parked: it says so by NOTIFY. Without
        // a listener (the database is away) the parked sweep still finds everything.
        let mut freed = self.listen_for_freed_orders().await;
        let ended = loop {
            tokio::select! {
                () = failed.cancelled() => break Err(ConsumeError::ConnectionLost),
                () = stop.cancelled() => break Ok(()),
                notification = next_notification(&mut freed), if freed.is_some() => {
                    match notification.map(|n| n.payload().parse::<Uuid>()) {
                        Ok(Ok(order_id)) => {
                            let consumer = self.clone();
                            let publisher = publisher.clone();
                            in_flight.spawn(async move {
                                consumer.unpark_order(order_id, &publisher, true).await;
                            });
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "a parked-order notification without an order id"),
                        // The database went away: listen again later; what is missed meanwhile,
                        // the sweep finds.
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for freed parked messages failed");
                            freed = None;
                        }
                    }
                }
                _ = dead_letter_depth.tick() => {
                    if freed.is_none() {
                        freed = self.listen_for_freed_orders().await;
                    }
                    in_flight.spawn(sample_dead_letter_depth(
                        channel.clone(),
                        self.topology.dead_letter_queue.clone(),
                        self.metrics.clone(),
                    ));
                }
                _ = parked_sweep.tick(), if held.is_none() => {
                    let consumer = self.clone();
                    let publisher = publisher.clone();
                    in_flight.spawn(async move { consumer.sweep_parked(&publisher).await });
                }
                Some(step) = batch.join_next(), if !batch.is_empty() => {
                    // Reap finished side work as we go, so the set stays small.
                    while in_flight.try_join_next().is_some() {}
                    let waiting = match step {
                        Ok(Step::Settled) => {
                            probe.reset();
                            bound = self.db.timeout;
                            self.paused.store(false, Ordering::SeqCst);
                            continue;
                        }
                        Ok(Step::Held(Held { deliveries, error })) => {
                            self.database.failed(&error);
                            deliveries
                        }
                        Ok(Step::Probed(deliveries, Ok(()))) => {
                            // Its listener's connection may be one the outage left stuck.
                            freed = None;
                            self.spawn_batch(&mut batch, deliveries, publisher, bound);
                            bound = (bound * 2).min(SLOW_BATCH_BOUND);
                            continue;
                        }
                        Ok(Step::Probed(deliveries, Err(error))) => {
                            self.database.failed(&error);
                            deliveries
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "a batch panicked; its deliveries return on reconnect");
                            break Err(ConsumeError::ConsumerEnded);
                        }
                    };
                    self.paused.store(true, Ordering::SeqCst);
                    held = Some(waiting);
                    probe_at.as_mut().reset(tokio::time::Instant::now() + probe.next_delay());
                }
                () = &mut probe_at, if held.is_some() && batch.is_empty() => {
                    let deliveries = held.take().unwrap_or_default();
                    let db = self.db.clone();
                    batch.spawn(async move {
                        let answered = db.bounded(db.ping()).await;
                        Step::Probed(deliveries, answered)
                    });
                }
                next = deliveries.next(), if batch.is_empty() && held.is_none() => match next {
                    Some(Ok(first)) => {
                        let (taken, ended) = take_waiting(first, &mut deliveries, self.batch_max);
                        self.spawn_batch(&mut batch, taken, publisher, bound);
                        if let Some(ended) = ended {
                            break Err(ended);
                        }
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
            while batch.join_next().await.is_some() {}
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                service = self.service,
                "in-flight deliveries did not finish in time; they will be redelivered"
            );
            batch.abort_all();
            in_flight.abort_all();
        }
        ended
    }

    fn spawn_batch(
        &self,
        batch: &mut JoinSet<Step>,
        deliveries: Vec<Delivery>,
        publisher: &Publisher,
        bound: Duration,
    ) {
        let consumer = self.clone();
        let publisher = publisher.clone();
        batch.spawn(async move {
            match consumer.handle_batch(deliveries, &publisher, bound).await {
                Ok(()) => Step::Settled,
                Err(held) => Step::Held(held),
            }
        });
    }

    /// Listens on `<schema>_parked`, where a commit on any instance names an order whose
    /// parked messages it may have freed. `None` if the database does not answer soon.
    async fn listen_for_freed_orders(&self) -> Option<PgListener> {
        let channel = format!("{}_parked", self.db.schema);
        match tokio::time::timeout(LISTEN_TIMEOUT, self.db.listen(&[&channel])).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for freed parked messages; the sweep will find them");
                None
            }
            Err(_) => None,
        }
    }

    /// The CONSUMER span of handling `envelope`, a child of the span that published it (so a
    /// retry, a redrive or a parked message's later try stays in its trace), and what every
    /// log line about it carries; `unparked` marks a try of a parked message, not a delivery.
    pub(crate) fn span(&self, envelope: &Envelope, attempt: u32, unparked: bool) -> tracing::Span {
        let routing_key = CATALOG
            .iter()
            .find(|info| info.event_type == envelope.event_type)
            .map_or(envelope.event_type.as_str(), |info| info.routing_key);
        let destination = format!(
            "{}:{routing_key}:{}",
            self.topology.exchange, self.topology.queue
        );
        let span = tracing::info_span!(
            target: telemetry::TRACE_TARGET,
            "handle",
            otel.name = format!("process {destination}").as_str(),
            otel.kind = "consumer",
            { semconv::MESSAGING_SYSTEM } = "rabbitmq",
            { semconv::MESSAGING_OPERATION_TYPE } = "process",
            { semconv::MESSAGING_OPERATION_NAME } = "process",
            { semconv::MESSAGING_DESTINATION_NAME } = destination.as_str(),
            { semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY } = routing_key,
            { semconv::MESSAGING_CONSUMER_GROUP_NAME } = self.topology.queue.as_str(),
            { semconv::MESSAGING_MESSAGE_ID } = %envelope.message_id,
            { semconv::MESSAGING_MESSAGE_CONVERSATION_ID } = %envelope.correlation_id,
            service = self.service,
            event_type = %envelope.event_type,
            message_id = %envelope.message_id,
            order_id = %envelope.correlation_id,
            correlation_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id,
            attempt,
            unparked,
        );
        telemetry::continue_trace(&span, envelope);
        span
    }

    /// Inbox entry, effect and outgoing events, in `work`'s transaction (the caller commits or
    /// rolls back); the unit of work comes back whatever the outcome.
    pub(crate) async fn apply_in(
        &self,
        mut work: UnitOfWork<S::Participant>,
        envelope: &Envelope,
        published_by: Option<&str>,
    ) -> (UnitOfWork<S::Participant>, Result<Applied, HandlerError>) {
        match inbox::record_first(work.db(), envelope, published_by).await {
            Ok(true) => {}
            Ok(false) => return (work, Ok(Applied::Duplicate)),
            Err(e) => return (work, Err(e.into())),
        }
        let (work, handled) = self.handle_in(work, envelope).await;
        (work, handled.map(|()| Applied::Effect))
    }

    /// The handler of `envelope`'s type, in `work`'s transaction (its inbox entry already made).
    pub(crate) async fn handle_in(
        &self,
        work: UnitOfWork<S::Participant>,
        envelope: &Envelope,
    ) -> (UnitOfWork<S::Participant>, Result<(), HandlerError>) {
        let mut ctx = Ctx::new(work, envelope);
        let handled = match self.routes.dispatch(&self.state, &mut ctx, envelope) {
            Some(handled) => handled.await,
            None => Err(HandlerError::Rejected(format!(
                "{} subscribes to no event of type {:?}",
                self.service, envelope.event_type
            ))),
        };
        (ctx.into_work(), handled)
    }

    /// Publishes a copy of a failed message to a delay queue or the dead-letter queue, its
    /// headers saying which try it was, why, and how it was first published (under which
    /// routing key, by whom: the copy itself is published by this service).
    pub(crate) async fn move_on(
        &self,
        publisher: &Publisher,
        body: &[u8],
        properties: BasicProperties,
        vouched: &Vouched,
        attempt: u32,
        destination: Move,
    ) -> Result<(), PublishError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            text(&vouched.routing_key),
        );
        if let Some(original) = &vouched.publisher {
            headers.insert(headers::ORIGINAL_PUBLISHER.into(), text(original));
        }
        let (queue, metric) = match &destination {
            Move::Retry {
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
            Move::DeadLetter { reason, .. } => {
                tracing::error!(%reason, attempt, "dead-lettering message");
                headers.insert(
                    headers::ATTEMPT.into(),
                    AMQPValue::LongLongInt(attempt.into()),
                );
                headers.insert(headers::DEAD_LETTER_REASON.into(), text(reason));
                headers.insert(
                    headers::DEAD_LETTERED_AT.into(),
                    text(&chrono::Utc::now().to_rfc3339()),
                );
                (
                    self.topology.dead_letter_queue.as_str(),
                    "shop_dead_letters_total",
                )
            }
        };
        let copy = Outgoing {
            exchange: &self.topology.private_exchange,
            routing_key: queue,
            body,
            properties: properties.with_headers(headers),
        };
        publisher.publish(copy).await?;
        self.metrics.inc(metric, &[]);
        Ok(())
    }
}

/// The deliveries already waiting behind `first`, up to `max` in all, taken without waiting
/// for more; and why consuming must end, if the stream said so meanwhile.
fn take_waiting(
    first: Delivery,
    deliveries: &mut lapin::Consumer,
    max: usize,
) -> (Vec<Delivery>, Option<ConsumeError>) {
    let mut taken = vec![first];
    while taken.len() < max {
        match deliveries.next().now_or_never() {
            Some(Some(Ok(delivery))) => taken.push(delivery),
            Some(Some(Err(e))) => return (taken, Some(ConsumeError::Amqp(e))),
            Some(None) => return (taken, Some(ConsumeError::ConsumerEnded)),
            None => break,
        }
    }
    (taken, None)
}

async fn next_notification(
    listener: &mut Option<PgListener>,
) -> Result<PgNotification, sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await,
        None => std::future::pending().await,
    }
}

/// Asks the broker how many messages wait in the dead-letter queue (a passive declare: the
/// queue exists, the topology declared it before consuming).
async fn sample_dead_letter_depth(channel: Channel, queue: String, metrics: Metrics) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default());
    if let Ok(Ok(queue)) = tokio::time::timeout(ACK_TIMEOUT, declared).await {
        metrics.set(
            "shop_dead_letter_queue_depth",
            &[],
            f64::from(queue.message_count()),
        );
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
