//! The consume loop: one batch at a time from the service's queue, or from the shop's history
//! while it catches up (`replay`), each applied as `batch` and `apply` say and settled; the
//! circuit breaker that holds a batch while the database is away, and the side work around
//! them: trying parked messages again (`unpark`) when a commit may have freed them, and
//! sampling the dead-letter queue's depth.
//!
//! Failures never block the queue; `failure` decides each failed message's fate.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sqlx::postgres::{PgListener, PgNotification};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    broker::{history, publisher::Publisher},
    messaging::{
        batch::{Batcher, Held, Settled},
        handler::Service,
        replay::{Plan, Replay},
        settle::{ACK_TIMEOUT, ack_alone},
        unpark::Unparker,
    },
    runtime::{backoff::Backoff, db::Db, metrics::Metrics, outage::Outage},
};

/// How long in-flight deliveries may take to finish on shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);
/// ... and after the channel failed (their acks cannot be delivered anyway).
const FAILURE_DRAIN: Duration = Duration::from_secs(5);
/// How long connecting the parked-message listener may hold up the consumer's loop.
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
    #[error("a history event could not be moved on; the catch-up resumes from its position")]
    HandedBack,
}

/// What a consumer reads.
pub(crate) enum Source {
    /// The service's own queue.
    Queue,
    /// The shop's history, from the plan's start to its end (a catch-up).
    History(Arc<Replay>, Plan),
}

impl Source {
    /// A catch-up's replay and the last offset it reads.
    fn catch_up(&self) -> Option<(Arc<Replay>, u64)> {
        match self {
            Self::Queue => None,
            Self::History(replay, plan) => Some((replay.clone(), plan.until)),
        }
    }
}

pub(crate) struct Consumer<S: Service> {
    pub(crate) service: &'static str,
    pub(crate) batcher: Arc<Batcher<S>>,
    pub(crate) unparker: Arc<Unparker<S>>,
    pub(crate) db: Db,
    /// The queue consumed and its dead-letter queue.
    pub(crate) queue: String,
    pub(crate) dead_letter_queue: String,
    /// Deliveries applied in one transaction at most (`CONSUMER_BATCH_MAX`).
    pub(crate) batch_max: usize,
    /// How often the parked messages are swept.
    pub(crate) parked_sweep: Duration,
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
    /// A batch settled; during a catch-up, whether that reached the history's end.
    Settled { caught_up: bool },
    /// A catch-up's batch settled with a delivery handed back: its position stays.
    HandedBack,
    /// A batch the database did not take (see `Held`).
    Held(Held),
    /// The database was asked whether it answers again, a held batch waiting on the answer.
    Probed(Vec<Delivery>, Result<(), sqlx::Error>),
}

/// The circuit breaker: a batch the database did not take is held (unacked, its attempts
/// unspent) and nothing more is taken until a probe finds the database answering; then the
/// held batch goes first. The deliveries stay where they are: nothing churns through the delay
/// queues, nothing is dead-lettered for an outage.
struct Breaker {
    held: Option<Vec<Delivery>>,
    probe: Backoff,
    /// How long a batch may take: `DB_TIMEOUT_MS`, unless a batch timed out while the database
    /// kept answering probes (slow, not silent): then each try gets twice as long.
    bound: Duration,
}

impl Breaker {
    fn new(timeout: Duration, probe_max: Duration) -> Self {
        Self {
            held: None,
            probe: Backoff::capped(PROBE_FIRST, probe_max),
            bound: timeout,
        }
    }

    /// A batch settled: the database answers.
    fn close(&mut self, timeout: Duration) {
        self.probe.reset();
        self.bound = timeout;
    }

    /// Holds `deliveries`; returns how long to wait before asking the database again.
    fn hold(&mut self, deliveries: Vec<Delivery>) -> Duration {
        self.held = Some(deliveries);
        self.probe.next_delay()
    }
}

impl<S: Service> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service,
            batcher: self.batcher.clone(),
            unparker: self.unparker.clone(),
            db: self.db.clone(),
            queue: self.queue.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
            batch_max: self.batch_max,
            parked_sweep: self.parked_sweep,
            metrics: self.metrics.clone(),
            database: self.database.clone(),
            paused: self.paused.clone(),
            probe_max: self.probe_max,
        }
    }
}

impl<S: Service> Consumer<S> {
    /// Consumes `source` until `stop` fires or a catch-up reaches its end (`Ok`), or the
    /// channel fails (`Err`, after cancelling `failed` at once). Either way, deliveries already
    /// being handled finish (and are acked) before this returns; the rest go back to the queue
    /// when the channel closes.
    pub(crate) async fn run(
        &self,
        channel: &Channel,
        publisher: &Publisher,
        stop: &CancellationToken,
        failed: &CancellationToken,
        source: &Source,
    ) -> Result<(), ConsumeError> {
        let tag = format!("{}-{}", self.service, Uuid::now_v7());
        self.paused.store(false, Ordering::SeqCst);
        let (queue, arguments) = match source {
            Source::Queue => (self.queue.as_str(), FieldTable::default()),
            Source::History(replay, plan) => (
                replay.stream.as_str(),
                history::reader_arguments(plan.start),
            ),
        };
        let catch_up = source.catch_up();
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await?;
        // One batch at a time: what arrives meanwhile waits in the prefetch window and makes
        // the next batch, and two batches never hold each other's row locks.
        let mut batch = JoinSet::new();
        let mut breaker = Breaker::new(self.db.timeout, self.probe_max);
        let probe_at = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(probe_at);
        let mut in_flight = JoinSet::new();
        let mut parked_sweep = tokio::time::interval(self.parked_sweep);
        parked_sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dead_letter_depth = tokio::time::interval(DEAD_LETTER_DEPTH_INTERVAL);
        dead_letter_depth.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Another instance's commit may free what this one parked: it says so by NOTIFY. Without
        // a listener (the database is away) the parked sweep still finds everything.
        let mut freed = self.listen_for_freed().await;
        let ended = loop {
            tokio::select! {
                () = failed.cancelled() => break Err(ConsumeError::ConnectionLost),
                () = stop.cancelled() => break Ok(()),
                notification = next_notification(&mut freed), if freed.is_some() => {
                    self.unpark_notified(notification, &mut freed, &mut in_flight, publisher);
                }
                _ = dead_letter_depth.tick() => {
                    if freed.is_none() {
                        freed = self.listen_for_freed().await;
                    }
                    in_flight.spawn(sample_dead_letter_depth(
                        channel.clone(),
                        self.dead_letter_queue.clone(),
                        self.metrics.clone(),
                    ));
                }
                _ = parked_sweep.tick(), if breaker.held.is_none() => {
                    let unparker = self.unparker.clone();
                    let publisher = publisher.clone();
                    in_flight.spawn(async move { unparker.sweep_parked(&publisher).await });
                }
                Some(step) = batch.join_next(), if !batch.is_empty() => {
                    // Reap finished side work as we go, so the set stays small.
                    while in_flight.try_join_next().is_some() {}
                    let step = step.map_err(|e| {
                        tracing::error!(error = %e, "a batch panicked; its deliveries return on reconnect");
                        ConsumeError::ConsumerEnded
                    });
                    let caught_up = matches!(step, Ok(Step::Settled { caught_up: true }));
                    match step.and_then(|step| self.after_step(step, &mut breaker, &mut freed, &mut batch, publisher, &catch_up)) {
                        Ok(Some(delay)) => probe_at.as_mut().reset(tokio::time::Instant::now() + delay),
                        Ok(None) if caught_up => break Ok(()),
                        Ok(None) => {}
                        Err(ended) => break Err(ended),
                    }
                }
                () = &mut probe_at, if breaker.held.is_some() && batch.is_empty() => {
                    let deliveries = breaker.held.take().unwrap_or_default();
                    let db = self.db.clone();
                    batch.spawn(async move {
                        let answered = db.bounded(db.ping()).await;
                        Step::Probed(deliveries, answered)
                    });
                }
                next = deliveries.next(), if batch.is_empty() && breaker.held.is_none() => match next {
                    Some(Ok(first)) => {
                        let (taken, ended) = take_waiting(first, &mut deliveries, self.batch_max);
                        self.spawn_batch(&mut batch, taken, publisher, breaker.bound, &catch_up);
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
        self.drain(ended.is_ok(), batch, in_flight).await;
        ended
    }

    /// What a finished batch (or probe) means for the circuit breaker: `Some(delay)` when a
    /// batch is now held and the database is to be asked again after `delay`; `Err` when a
    /// catch-up must start again from its position.
    fn after_step(
        &self,
        step: Step,
        breaker: &mut Breaker,
        freed: &mut Option<PgListener>,
        batch: &mut JoinSet<Step>,
        publisher: &Publisher,
        catch_up: &Option<(Arc<Replay>, u64)>,
    ) -> Result<Option<Duration>, ConsumeError> {
        let waiting = match step {
            Step::HandedBack => return Err(ConsumeError::HandedBack),
            Step::Settled { .. } => {
                breaker.close(self.db.timeout);
                self.paused.store(false, Ordering::SeqCst);
                return Ok(None);
            }
            Step::Held(Held { deliveries, error }) | Step::Probed(deliveries, Err(error)) => {
                self.database.failed(&error);
                deliveries
            }
            Step::Probed(deliveries, Ok(())) => {
                // Its listener's connection may be one the outage left stuck.
                *freed = None;
                self.spawn_batch(batch, deliveries, publisher, breaker.bound, catch_up);
                breaker.bound = (breaker.bound * 2).min(SLOW_BATCH_BOUND);
                return Ok(None);
            }
        };
        self.paused.store(true, Ordering::SeqCst);
        Ok(Some(breaker.hold(waiting)))
    }

    /// Another instance's commit named a correlation id: try what this one parked for it.
    fn unpark_notified(
        &self,
        notification: Result<PgNotification, sqlx::Error>,
        freed: &mut Option<PgListener>,
        in_flight: &mut JoinSet<()>,
        publisher: &Publisher,
    ) {
        match notification.map(|n| n.payload().parse::<Uuid>()) {
            Ok(Ok(correlation_id)) => {
                let unparker = self.unparker.clone();
                let publisher = publisher.clone();
                in_flight.spawn(async move {
                    unparker
                        .unpark_correlated(correlation_id, &publisher, true)
                        .await;
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a parked-message notification without a correlation id");
            }
            // The database went away: listen again later; what is missed meanwhile, the sweep
            // finds.
            Err(e) => {
                tracing::warn!(error = %e, "listening for freed parked messages failed");
                *freed = None;
            }
        }
    }

    /// Lets in-flight handlers finish and ack. After a failure their acks cannot reach the
    /// broker anyway, so they get less time; what is cut short is redelivered and the inbox
    /// absorbs whatever had already committed.
    async fn drain(&self, stopped: bool, mut batch: JoinSet<Step>, mut in_flight: JoinSet<()>) {
        let grace = if stopped {
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
    }

    /// Applies a batch in a task of its own. During a catch-up, the history events the
    /// service does not handle are acked at once, and the position advances once the batch
    /// has settled.
    fn spawn_batch(
        &self,
        batch: &mut JoinSet<Step>,
        deliveries: Vec<Delivery>,
        publisher: &Publisher,
        bound: Duration,
        catch_up: &Option<(Arc<Replay>, u64)>,
    ) {
        let (batcher, unparker) = (self.batcher.clone(), self.unparker.clone());
        let publisher = publisher.clone();
        let catch_up = catch_up.clone();
        batch.spawn(async move {
            // During a catch-up: how far the batch reads, and what it passes over.
            let (read_through, deliveries, skipped) = match &catch_up {
                Some((replay, _)) => {
                    let read_through = deliveries.iter().filter_map(history::offset_of).max();
                    let (handle, skipped) = replay.sort(deliveries);
                    (read_through, handle, skipped)
                }
                None => (None, deliveries, Vec::new()),
            };
            for delivery in &skipped {
                ack_alone(delivery).await;
            }
            let handled = deliveries.len() as u64;
            let settled = if deliveries.is_empty() {
                Settled::default()
            } else {
                match batcher.handle(deliveries, &publisher, bound).await {
                    Ok(settled) => settled,
                    Err(held) => return Step::Held(held),
                }
            };
            // What the batch committed may free messages parked for the same ids.
            for (correlation_id, parked_here) in settled.touched {
                unparker
                    .unpark_correlated(correlation_id, &publisher, parked_here)
                    .await;
            }
            let Some((replay, until)) = catch_up else {
                return Step::Settled { caught_up: false };
            };
            if settled.handed_back {
                return Step::HandedBack;
            }
            let caught_up = match read_through {
                Some(through) => {
                    replay
                        .advance(through, handled, skipped.len() as u64, until)
                        .await
                }
                None => false,
            };
            Step::Settled { caught_up }
        });
    }

    /// Listens on `<schema>_parked`, where a commit on any instance names a correlation id
    /// whose parked messages it may have freed. `None` if the database does not answer soon.
    async fn listen_for_freed(&self) -> Option<PgListener> {
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
