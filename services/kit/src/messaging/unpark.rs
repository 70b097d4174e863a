//! Trying parked messages again: after a commit with their correlation id (this process's, or
//! another instance's, which says so by NOTIFY), and on a sweep for whatever no commit freed.
//! Each try is a delivery's life again (`apply`), in a transaction that also takes it out of
//! the lot; a failed try's fate is `failure`'s to decide.

use std::sync::Arc;

use lapin::BasicProperties;
use shared_events::Envelope;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    broker::publisher::{Publisher, envelope_properties},
    messaging::{
        apply::{Applied, Inbox, Subscriber},
        failure::{self, Failure, Fate, Move, Origin, Schedule},
        handler::{HandlerError, Service},
        parking::{ParkedMessage, ParkingLot},
        provenance::Vouched,
        settle::{self, Failed},
        unit_of_work::UnitOfWork,
    },
    runtime::{db::Db, outage::Outage, telemetry::ErrorChain},
};

/// The parked messages' second chance.
pub(crate) struct Unparker<S: Service> {
    pub(crate) subscriber: Arc<Subscriber<S>>,
    pub(crate) db: Db,
    pub(crate) parking: Arc<ParkingLot>,
    pub(crate) schedule: Schedule,
    /// The database as the consumer sees it: an outage is logged as it begins and ends.
    pub(crate) database: Outage,
}

/// What came of trying a parked message again.
enum Retried {
    Applied,
    Waiting,
    Gone,
}

impl<S: Service> Unparker<S> {
    /// Tries again the messages parked for `correlation_id` after a commit for that id (if this
    /// process parked any, or `parked_here`), going round while tries free others.
    pub(crate) async fn unpark_correlated(
        &self,
        correlation_id: Uuid,
        publisher: &Publisher,
        parked_here: bool,
    ) {
        if !self.parking.begin_pass(correlation_id, parked_here) {
            return;
        }
        loop {
            let (mut still_waiting, mut applied_any) = (false, false);
            match self
                .parking
                .of_correlation(&self.db.pool, correlation_id)
                .await
            {
                Ok(parked) => {
                    for message_id in parked {
                        match self.retry_parked(message_id, publisher).await {
                            Retried::Applied => applied_any = true,
                            Retried::Waiting => still_waiting = true,
                            Retried::Gone => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, %correlation_id, "cannot read parked messages; the sweep will retry them");
                    still_waiting = true;
                }
            }
            if !self
                .parking
                .end_pass(correlation_id, still_waiting, applied_any)
            {
                return;
            }
        }
    }

    /// Tries the parked messages that are due (another instance's, from before a
    /// restart, or those no commit here has freed).
    pub(crate) async fn sweep_parked(&self, publisher: &Publisher) {
        let Some(due) = self.parking.due(&self.db).await else {
            return;
        };
        match due {
            Ok(due) => {
                self.database.answered();
                for correlation_id in due {
                    self.unpark_correlated(correlation_id, publisher, true)
                        .await;
                }
            }
            Err(e) => self.database.failed(&e),
        }
        self.parking.sweep_done();
    }

    /// One more try of a parked message: applied (and out of the lot in the same
    /// transaction), still waiting, or gone (dead-lettered, or another try got there first).
    async fn retry_parked(&self, message_id: Uuid, publisher: &Publisher) -> Retried {
        let parked = match ParkingLot::read(&self.db.pool, message_id).await {
            Ok(Some(parked)) => parked,
            Ok(None) => return Retried::Gone,
            Err(e) => {
                tracing::warn!(error = %e, %message_id, "cannot read a parked message");
                return Retried::Waiting;
            }
        };
        let attempt = u32::try_from(parked.attempts).unwrap_or(0) + 1;
        let envelope = match Envelope::from_json(&parked.body) {
            Ok(envelope) => envelope,
            // It was read before it was parked; a row changed since can only be dead-lettered.
            Err(e) => {
                let unreadable = Move::DeadLetter {
                    reason: format!("parked message no longer readable: {e}"),
                    exhausted: false,
                };
                self.dead_letter_parked(
                    message_id,
                    &parked,
                    BasicProperties::default(),
                    attempt,
                    unreadable,
                    publisher,
                )
                .await;
                return Retried::Gone;
            }
        };
        let span = self.subscriber.span(&envelope, attempt, true);
        async {
            let waited = parked.waited();
            let published_by = parked.published_by.as_deref();
            let error = match self.apply_parked(&envelope, published_by).await {
                Ok(Some(Applied::Effect)) => {
                    self.subscriber.count(&envelope.event_type, "unparked");
                    tracing::info!(waited_ms = waited.as_millis(), "handled after waiting");
                    return Retried::Applied;
                }
                Ok(Some(Applied::Duplicate) | None) => return Retried::Gone,
                Err(error) => error,
            };
            let origin = Origin::Parked { waited };
            let fate = failure::fate(Failure::from(&error), attempt, origin, &self.schedule);
            let outcome = fate.outcome();
            let (reason, counted) = match fate {
                Fate::Park { reason } => (reason, true),
                Fate::Move(Move::Retry {
                    next_attempt,
                    error,
                    ..
                }) => (error, next_attempt > attempt),
                Fate::Move(dead_letter) => {
                    self.subscriber.count(&envelope.event_type, outcome);
                    let properties = envelope_properties(&envelope);
                    self.dead_letter_parked(
                        message_id,
                        &parked,
                        properties,
                        attempt,
                        dead_letter,
                        publisher,
                    )
                    .await;
                    return Retried::Gone;
                }
            };
            // A counted try backs the next sweep off; one the database's absence cost is not
            // the message's.
            if !counted {
                tracing::warn!(error = %reason, "parked message not applied; trying again later");
            } else if let Err(e) = self
                .parking
                .waited_again(&self.db.pool, message_id, attempt, &reason)
                .await
            {
                tracing::warn!(error = %e, "cannot count the try of a parked message");
            }
            Retried::Waiting
        }
        .instrument(span)
        .await
    }

    /// Applies a parked message in its own transaction, taking it out of the lot in the same
    /// one (`None` if another try got there first).
    async fn apply_parked(
        &self,
        envelope: &Envelope,
        published_by: Option<&str>,
    ) -> Result<Option<Applied>, HandlerError> {
        let mut tx = self.db.begin().await?;
        if !ParkingLot::remove(&mut *tx, envelope.message_id).await? {
            return Ok(None);
        }
        let metrics = &self.subscriber.metrics;
        let work = UnitOfWork::within(tx, &self.db, metrics, Some(envelope.message_id));
        let inbox = Inbox::Record { published_by };
        let (work, applied) = self.subscriber.apply(work, envelope, inbox).await;
        let applied = applied?;
        work.commit().await?;
        Ok(Some(applied))
    }

    /// Dead-letters a parked message, then takes it out of the lot (a crash in between leaves
    /// a copy in both, never in neither).
    async fn dead_letter_parked(
        &self,
        message_id: Uuid,
        parked: &ParkedMessage,
        properties: BasicProperties,
        attempt: u32,
        dead_letter: Move,
        publisher: &Publisher,
    ) {
        let vouched = Vouched {
            routing_key: parked.routing_key.clone(),
            publisher: parked.published_by.clone(),
        };
        let failed = Failed {
            body: &parked.body,
            properties,
            vouched: &vouched,
            attempt,
        };
        let subscriber = &self.subscriber;
        let moved = settle::move_on(
            publisher,
            &subscriber.topology,
            &subscriber.metrics,
            failed,
            dead_letter,
        )
        .await;
        let removed = match moved {
            Ok(()) => ParkingLot::remove(&self.db.pool, message_id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(ErrorChain(&e).to_string()),
        };
        if let Err(error) = removed {
            tracing::warn!(%error, %message_id, "parked message not dead-lettered; trying again later");
        }
    }
}
