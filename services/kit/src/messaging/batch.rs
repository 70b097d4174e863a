//! Batched consumption. The deliveries already waiting in the prefetch window (at most
//! `CONSUMER_BATCH_MAX`; a lone one is a batch of one, so an idle shop waits for nothing) are
//! applied in one transaction, in queue order: their inbox rows in one statement, each one's
//! effect, their outbox rows in one statement. A failure touches only its own message: the batch,
//! first tried without savepoints, is tried again with a savepoint per message, and the failed
//! one rolls back to its own and takes its fate alone (parked in the same transaction; retried or dead-lettered once the batch is
//! done); its batch-mates commit together. Nothing is acked before the commit: a crash loses
//! nothing, the broker redelivers and the inbox absorbs what had committed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::message::Delivery;
use shared_events::Envelope;
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::{
    broker::{
        headers,
        publisher::{PublishError, Publisher, header_u32},
    },
    messaging::{
        apply::{self, Applied, Subscriber},
        failure::{self, Failure, Fate, Move, Origin, Schedule},
        handler::Service,
        inbox,
        parking::ParkingLot,
        provenance::Vouched,
        settle::{self, Failed, ack_alone, ack_up_to, settle},
        unit_of_work::UnitOfWork,
    },
    runtime::{
        db::{self, Db},
        outage::Outage,
    },
};

/// Applies a batch of deliveries in one transaction and settles them.
pub(crate) struct Batcher<S: Service> {
    pub(crate) subscriber: Arc<Subscriber<S>>,
    pub(crate) db: Db,
    pub(crate) parking: Arc<ParkingLot>,
    pub(crate) schedule: Schedule,
    /// The database as the consumer sees it: an outage is logged as it begins and ends.
    pub(crate) database: Outage,
}

/// A correlation id the batch committed something for, and whether a message of it was
/// parked (then `unpark` looks at once, even if this process had parked none before).
pub(crate) type Touched = (Uuid, bool);

/// A delivery of the batch, read and believed.
struct Taken {
    delivery: Delivery,
    attempt: u32,
    vouched: Vouched,
    envelope: Envelope,
    /// Its CONSUMER span: the try and what becomes of it are logged and traced under it.
    span: Span,
}

/// A delivery refused untried: malformed, or not vouched for (the reason).
struct Refused {
    delivery: Delivery,
    vouched: Vouched,
    attempt: u32,
    reason: String,
}

/// How a message of the batch got into the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    /// With the batch's: whether it was the first delivery.
    Recorded(bool),
    /// On its own, inside its savepoint (the batch's insert was refused).
    OwnTry,
}

/// Whether a batch's messages are tried inside savepoints.
#[derive(Debug, Clone, Copy)]
enum Guard {
    None,
    Savepoints,
}

/// One message tried: settled (the unit of work goes on with it), or `None`: failed where
/// nothing but rolling the whole transaction back can undo it.
type Tried<P> = Option<(UnitOfWork<P>, Disposition)>;

/// What became of a delivery in the batch's transaction.
enum Disposition {
    Applied {
        took: Duration,
    },
    Duplicate,
    /// Parked in the same transaction, until what it waits for commits.
    Parked {
        reason: String,
    },
    /// Nothing of it stands: a copy goes to a retry queue or the dead-letter queue.
    Move(Move),
}

/// A batch settled: the correlation ids it committed something for, and whether a delivery was
/// handed back to the broker (its copy could not be moved on).
#[derive(Default)]
pub(crate) struct Settled {
    pub(crate) touched: Vec<Touched>,
    pub(crate) handed_back: bool,
}

/// A batch the database did not take: it stays with the consumer, unacked, its attempts
/// unspent, until the database answers again (`consume`'s circuit breaker).
pub(crate) struct Held {
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) error: sqlx::Error,
}

/// How a batch's transaction ended: committed with each message's disposition, or lost to an
/// error with what had been decided without the transaction (a move) so far.
type Ended = Result<Vec<Disposition>, (Vec<Disposition>, sqlx::Error)>;

impl<S: Service> Batcher<S> {
    /// Applies `deliveries` (in queue order) in one transaction, then settles each: moved on
    /// (its copy confirmed) or handed back, and the rest acked with one `multiple` ack; returns
    /// the correlation ids it committed something for. A batch the database could not be
    /// reached for, or that took longer than `bound`, is handed back whole (`Held`), nothing
    /// settled.
    pub(crate) async fn handle(
        &self,
        deliveries: Vec<Delivery>,
        publisher: &Publisher,
        bound: Duration,
    ) -> Result<Settled, Held> {
        self.subscriber
            .metrics
            .observe("shop_consumer_batch_size", &[], deliveries.len() as f64);
        let (taken, refused) = self.believe_each(deliveries);
        // A batch refused whole needs no transaction (and no database).
        let ended = if taken.is_empty() {
            Ok(Vec::new())
        } else {
            let ended = tokio::time::timeout(bound, self.apply_all(&taken))
                .await
                .unwrap_or_else(|_| Err((Vec::new(), self.db.went_unanswered(bound))));
            if ended.is_ok() {
                self.database.answered();
            }
            ended
        };
        let dispositions = match ended {
            Ok(dispositions) => dispositions,
            // Not the messages' fault: none of them is tried again until the database answers.
            Err((_, error)) if db::is_connection_error(&error) => {
                for refused in refused {
                    let mut alone = None;
                    self.dead_letter_refused(publisher, refused, &mut alone)
                        .await;
                    if let Some(delivery) = alone {
                        ack_alone(&delivery).await;
                    }
                }
                let deliveries = taken.into_iter().map(|taken| taken.delivery).collect();
                return Err(Held { deliveries, error });
            }
            Err((decided, error)) => self.lost(&taken, decided, &error),
        };
        let (mut to_ack, mut settled) = (None, Settled::default());
        for refused in refused {
            settled.handed_back |= self
                .dead_letter_refused(publisher, refused, &mut to_ack)
                .await;
        }
        for (taken, disposition) in taken.into_iter().zip(dispositions) {
            let (touched, handed_back) = self
                .settle_one(publisher, taken, disposition, &mut to_ack)
                .await;
            settled.touched.extend(touched);
            settled.handed_back |= handed_back;
        }
        if let Some(last) = to_ack {
            ack_up_to(&last).await;
        }
        Ok(settled)
    }

    /// Reads and checks each delivery (`apply`'s first step): believed, or refused untried.
    fn believe_each(&self, deliveries: Vec<Delivery>) -> (Vec<Taken>, Vec<Refused>) {
        let subscriber = &self.subscriber;
        let mut taken = Vec::with_capacity(deliveries.len());
        let mut refused = Vec::new();
        for delivery in deliveries {
            let attempt = header_u32(&delivery.properties, headers::ATTEMPT).unwrap_or(1);
            let vouched = Vouched::of(&delivery, &subscriber.topology);
            match subscriber.believe(&delivery.data, &vouched, attempt) {
                Ok((envelope, span)) => taken.push(Taken {
                    delivery,
                    attempt,
                    vouched,
                    envelope,
                    span,
                }),
                Err(reason) => refused.push(Refused {
                    delivery,
                    vouched,
                    attempt,
                    reason,
                }),
            }
        }
        (taken, refused)
    }

    /// Settles one delivery of a committed batch as its disposition says (to be acked with the
    /// batch, or moved on first), counts it, and names the correlation id it committed
    /// something for, if any; `true` if it was handed back.
    async fn settle_one(
        &self,
        publisher: &Publisher,
        taken: Taken,
        disposition: Disposition,
        to_ack: &mut Option<Delivery>,
    ) -> (Option<Touched>, bool) {
        let Taken {
            delivery,
            attempt,
            vouched,
            envelope,
            span,
        } = taken;
        let event = envelope.event_type.as_str();
        let (outcome, touched) = match disposition {
            Disposition::Applied { took } => {
                self.subscriber.metrics.observe(
                    "shop_handler_duration_seconds",
                    &[("event", event)],
                    took.as_secs_f64(),
                );
                // At debug: a handler logs its own decision at info, and a line per delivery
                // on top of it was a tenth of the shop's CPU under load.
                tracing::debug!(parent: &span, outcome = "applied", "handled");
                settle(delivery, Ok(()), to_ack).await;
                ("applied", Some((envelope.correlation_id, false)))
            }
            Disposition::Duplicate => {
                tracing::info!(parent: &span, outcome = "duplicate", "handled");
                settle(delivery, Ok(()), to_ack).await;
                ("duplicate", None)
            }
            Disposition::Parked { reason } => {
                tracing::info!(parent: &span, %reason, "parked until what it waits for commits");
                settle(delivery, Ok(()), to_ack).await;
                // What it waits for may have committed meanwhile (a batch-mate, another
                // instance): its pass finds out.
                ("parked", Some((envelope.correlation_id, true)))
            }
            Disposition::Move(destination) => {
                let outcome = Fate::Move(destination.clone()).outcome();
                let moved = self
                    .move_delivery(publisher, &delivery, &vouched, attempt, destination)
                    .instrument(span)
                    .await;
                let handed_back = moved.is_err();
                settle(delivery, moved, to_ack).await;
                self.subscriber.count(event, outcome);
                return (None, handed_back);
            }
        };
        self.subscriber.count(event, outcome);
        (touched, false)
    }

    /// A delivery refused untried (malformed, or not vouched for) goes to the dead-letter
    /// queue, then is settled; `true` if it was handed back.
    async fn dead_letter_refused(
        &self,
        publisher: &Publisher,
        refused: Refused,
        to_ack: &mut Option<Delivery>,
    ) -> bool {
        let Refused {
            delivery,
            vouched,
            attempt,
            reason,
        } = refused;
        let destination = Move::DeadLetter {
            reason,
            exhausted: false,
        };
        let moved = self
            .move_delivery(publisher, &delivery, &vouched, attempt, destination)
            .await;
        let handed_back = moved.is_err();
        settle(delivery, moved, to_ack).await;
        handed_back
    }

    /// Moves a delivery on (a retry queue, the dead-letter queue), as it came.
    async fn move_delivery(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        vouched: &Vouched,
        attempt: u32,
        destination: Move,
    ) -> Result<(), PublishError> {
        let failed = Failed {
            body: &delivery.data,
            properties: delivery.properties.clone(),
            vouched,
            attempt,
        };
        let subscriber = &self.subscriber;
        settle::move_on(
            publisher,
            &subscriber.topology,
            &subscriber.metrics,
            failed,
            destination,
        )
        .await
    }

    /// One transaction for the whole batch, its inbox rows in one statement. It is tried first
    /// without savepoints (most batches have no failure, and a savepoint costs a round trip per
    /// message); the first failure rolls it all back and the batch is tried again with a savepoint
    /// per message, so that failure is undone alone. If the transaction itself is lost (the
    /// database went away, the commit failed), nothing of it stands.
    async fn apply_all(&self, batch: &[Taken]) -> Ended {
        match self.try_all(batch, Guard::None).await {
            Some(ended) => ended,
            None => self
                .try_all(batch, Guard::Savepoints)
                .await
                .unwrap_or_else(|| Ok(Vec::new())),
        }
    }

    /// `None` when a message failed with no savepoint to undo it alone (only unguarded).
    async fn try_all(&self, batch: &[Taken], guard: Guard) -> Option<Ended> {
        let entries: Vec<_> = batch
            .iter()
            .map(|taken| (&taken.envelope, taken.vouched.publisher.as_deref()))
            .collect();
        let mut work = match self.db.begin_batch().await {
            Ok(tx) => UnitOfWork::within(tx, &self.db, &self.subscriber.metrics, None),
            Err(e) => return Some(Err((Vec::new(), e))),
        };
        let inbox = match inbox::record_batch(work.db(), &entries).await {
            Ok(first) => first.into_iter().map(Row::Recorded).collect(),
            Err(e) if db::is_connection_error(&e) => return Some(Err((Vec::new(), e))),
            // Something in one message the inbox cannot hold: each records its own, so that
            // one fails alone.
            Err(e) => {
                tracing::warn!(error = %e, "the batch's inbox rows were refused; recording them one by one");
                drop(work);
                work = match self.db.begin_batch().await {
                    Ok(tx) => UnitOfWork::within(tx, &self.db, &self.subscriber.metrics, None),
                    Err(e) => return Some(Err((Vec::new(), e))),
                };
                vec![Row::OwnTry; batch.len()]
            }
        };
        let mut dispositions = Vec::with_capacity(batch.len());
        for (taken, inbox) in batch.iter().zip(inbox) {
            if inbox == Row::Recorded(false) {
                dispositions.push(Disposition::Duplicate);
                continue;
            }
            let tried = self
                .apply_one(work, taken, inbox, guard)
                .instrument(taken.span.clone())
                .await;
            match tried {
                Ok(Some((next, disposition))) => {
                    work = next;
                    dispositions.push(disposition);
                }
                // Dropping the unit of work rolls the transaction back.
                Ok(None) => return None,
                Err(e) => return Some(Err((dispositions, e))),
            }
        }
        Some(match work.commit().await {
            Ok(()) => Ok(dispositions),
            Err(e) => Err((dispositions, e)),
        })
    }

    /// One message's part of the batch. `Err` means the transaction is unusable (a statement
    /// outside any handler failed, or rolling back to the savepoint did).
    async fn apply_one(
        &self,
        mut work: UnitOfWork<S::Participant>,
        taken: &Taken,
        inbox: Row,
        guard: Guard,
    ) -> Result<Tried<S::Participant>, sqlx::Error> {
        let started = Instant::now();
        let envelope = &taken.envelope;
        let published_by = taken.vouched.publisher.as_deref();
        let savepoint = match guard {
            Guard::Savepoints => Some(work.savepoint(envelope.message_id).await?),
            Guard::None => {
                work.caused_by(envelope.message_id);
                None
            }
        };
        let entry = match inbox {
            Row::Recorded(_) => apply::Inbox::Recorded,
            Row::OwnTry => apply::Inbox::Record { published_by },
        };
        let (mut work, applied) = self.subscriber.apply(work, envelope, entry).await;
        let error = match applied {
            Ok(Applied::Effect) => {
                let took = started.elapsed();
                return Ok(Some((work, Disposition::Applied { took })));
            }
            Ok(Applied::Duplicate) => {
                return Ok(Some((work, Disposition::Duplicate)));
            }
            Err(error) => error,
        };
        let Some(savepoint) = savepoint else {
            return Ok(None);
        };
        // Undone, and not handled after all: its inbox row goes too.
        work.rollback_to(&savepoint).await?;
        if inbox == Row::Recorded(true) {
            inbox::forget(work.db(), envelope.message_id).await?;
        }
        let fate = failure::fate(
            Failure::from(&error),
            taken.attempt,
            Origin::Queue,
            &self.schedule,
        );
        let reason = match fate {
            Fate::Move(destination) => {
                return Ok(Some((work, Disposition::Move(destination))));
            }
            Fate::Park { reason } => reason,
        };
        let parked = self
            .parking
            .park(
                work.db(),
                envelope,
                &taken.vouched,
                &taken.delivery.data,
                taken.attempt,
                &reason,
            )
            .await;
        match parked {
            Ok(()) => Ok(Some((work, Disposition::Parked { reason }))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot park the message");
                work.rollback_to(&savepoint).await?;
                if inbox == Row::Recorded(true) {
                    inbox::forget(work.db(), envelope.message_id).await?;
                }
                let destination =
                    failure::fate_of_database_error(&e, taken.attempt, &self.schedule);
                Ok(Some((work, Disposition::Move(destination))))
            }
        }
    }

    /// The batch's transaction was lost to `error` (the database answered: a connection error
    /// holds the batch instead): what was decided without it (a move) stands; every other
    /// message, tried or not, takes the fate of that error.
    fn lost(
        &self,
        batch: &[Taken],
        dispositions: Vec<Disposition>,
        error: &sqlx::Error,
    ) -> Vec<Disposition> {
        tracing::warn!(error = %error, messages = batch.len(), "the batch's transaction was lost; its messages will be tried again");
        let mut decided = dispositions.into_iter();
        batch
            .iter()
            .map(|taken| match decided.next() {
                Some(Disposition::Move(destination)) => Disposition::Move(destination),
                _ => Disposition::Move(failure::fate_of_database_error(
                    error,
                    taken.attempt,
                    &self.schedule,
                )),
            })
            .collect()
    }
}
