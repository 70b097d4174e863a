//! The parking lot: messages a handler deferred because the fact they depend on has not
//! committed yet. Parked (acked, stored in the service's `parked` table) they cost nothing while
//! they wait and are tried again the moment this process commits anything for the same order,
//! and on a short sweep for the rest (parked by another instance, or before a restart).

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lapin::BasicProperties;
use shared_events::Envelope;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    consumer::{Applied, Consumer},
    db::Db,
    failure::{self, Failure, Fate, Move, Origin},
    handler::{HandlerError, Service, UnitOfWork},
    provenance::Vouched,
    publisher::{Publisher, envelope_properties},
    telemetry::ErrorChain,
};

/// Orders whose parked messages one sweep tries.
const SWEEP_BATCH: i64 = 100;
/// The longest the sweep leaves a parked message untried.
const MAX_SWEEP_BACKOFF: Duration = Duration::from_secs(30);

/// A parked message, as read back for another try.
#[derive(sqlx::FromRow)]
pub(crate) struct ParkedMessage {
    pub(crate) routing_key: String,
    pub(crate) published_by: Option<String>,
    pub(crate) body: Vec<u8>,
    pub(crate) attempts: i32,
    /// How long it has been waiting.
    pub(crate) waited_ms: f64,
}

impl ParkedMessage {
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_secs_f64(self.waited_ms.max(0.0) / 1000.0)
    }
}

/// An order with messages parked by this process.
struct Waiting {
    /// A pass over its parked messages is under way...
    running: bool,
    /// ... and something committed for the order meanwhile: the pass goes round once more,
    /// since its tries may have started before that commit.
    again: bool,
}

pub(crate) struct ParkingLot {
    /// Orders this process parked messages for: a commit for one of them tries them again.
    /// Only a hint; the sweep finds whatever it misses.
    waiting: Mutex<HashMap<Uuid, Waiting>>,
    sweeping: AtomicBool,
    /// How often the sweep runs; a parked message is first swept one interval after parking,
    /// then after intervals doubling up to [`MAX_SWEEP_BACKOFF`].
    pub(crate) sweep_interval: Duration,
}

impl ParkingLot {
    pub(crate) fn new(sweep_interval: Duration) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
            sweep_interval,
        }
    }

    /// Parks a message in the caller's transaction (a copy already parked stays as it is). The
    /// caller starts a pass for its order after the commit: a commit that raced the parking is
    /// seen by that pass or starts its own.
    pub(crate) async fn park(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        vouched: &Vouched,
        body: &[u8],
        attempt: u32,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO parked
                 (message_id, correlation_id, routing_key, published_by, body, attempts,
                  last_error, next_try_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(envelope.message_id)
        .bind(envelope.correlation_id)
        .bind(&vouched.routing_key)
        .bind(&vouched.publisher)
        .bind(body)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(reason)
        .bind(self.sweep_interval.as_secs_f64())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Whether to start a pass over `order_id`'s parked messages now: not when none were
    /// parked here (unless `parked_here`: the caller just parked or found one), nor when a
    /// pass is already running (it is told to go round again instead).
    pub(crate) fn begin_pass(&self, order_id: Uuid, parked_here: bool) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = if parked_here {
            waiting.entry(order_id).or_insert(Waiting {
                running: false,
                again: false,
            })
        } else {
            match waiting.get_mut(&order_id) {
                Some(entry) => entry,
                None => return false,
            }
        };
        if entry.running {
            entry.again = true;
            return false;
        }
        entry.running = true;
        entry.again = false;
        true
    }

    /// Ends a pass; `true` when it must go round again: something committed for the order
    /// during the pass, or the pass applied a message that may free one still waiting.
    pub(crate) fn end_pass(&self, order_id: Uuid, still_waiting: bool, applied_any: bool) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = waiting.get_mut(&order_id) else {
            return false;
        };
        if entry.again || (applied_any && still_waiting) {
            entry.again = false;
            return true;
        }
        if still_waiting {
            entry.running = false;
        } else {
            waiting.remove(&order_id);
        }
        false
    }

    /// The parked messages of one order, oldest first.
    pub(crate) async fn of_order(
        &self,
        pool: &PgPool,
        order_id: Uuid,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT message_id FROM parked WHERE correlation_id = $1 ORDER BY parked_at",
        )
        .bind(order_id)
        .fetch_all(pool)
        .await
    }

    /// Orders with parked messages due for another try, longest due first; `None` while
    /// another sweep runs.
    pub(crate) async fn due(&self, db: &Db) -> Option<Result<Vec<Uuid>, sqlx::Error>> {
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return None;
        }
        let due = sqlx::query_scalar(
            "SELECT correlation_id FROM parked WHERE next_try_at <= now()
             GROUP BY correlation_id ORDER BY min(next_try_at) LIMIT $1",
        )
        .bind(SWEEP_BATCH)
        .fetch_all(&db.pool);
        Some(db.bounded(due).await)
    }

    pub(crate) fn sweep_done(&self) {
        self.sweeping.store(false, Ordering::SeqCst);
    }

    pub(crate) async fn read(
        pool: &PgPool,
        message_id: Uuid,
    ) -> Result<Option<ParkedMessage>, sqlx::Error> {
        sqlx::query_as(
            "SELECT routing_key, published_by, body, attempts,
                    (extract(epoch FROM now() - parked_at) * 1000)::float8 AS waited_ms
             FROM parked WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(pool)
        .await
    }

    /// Counts a try that had to wait again and backs its next sweep off.
    pub(crate) async fn waited_again(
        &self,
        pool: &PgPool,
        message_id: Uuid,
        attempts: u32,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        let backoff = self
            .sweep_interval
            .saturating_mul(1 << attempts.min(16))
            .min(MAX_SWEEP_BACKOFF);
        sqlx::query(
            "UPDATE parked SET attempts = $2, last_error = $3,
                 next_try_at = now() + make_interval(secs => $4)
             WHERE message_id = $1",
        )
        .bind(message_id)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(reason)
        .bind(backoff.as_secs_f64())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Takes the message out of the lot (inside the transaction that applies it, when there is
    /// one): `false` when it is gone (another instance applied it first).
    pub(crate) async fn remove<'c>(
        executor: impl sqlx::PgExecutor<'c>,
        message_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let removed = sqlx::query("DELETE FROM parked WHERE message_id = $1")
            .bind(message_id)
            .execute(executor)
            .await?;
        Ok(removed.rows_affected() == 1)
    }
}

/// What came of trying a parked message again.
enum Retried {
    Applied,
    Waiting,
    Gone,
}

/// The consumer's side of the lot: parking a delivery, and trying parked messages again.
impl<S: Service> Consumer<S> {
    /// Tries again the messages parked for `order_id` after a commit for that order (if this
    /// process parked any, or `parked_here`), going round while tries free others.
    pub(crate) async fn unpark_order(
        &self,
        order_id: Uuid,
        publisher: &Publisher,
        parked_here: bool,
    ) {
        if !self.parking.begin_pass(order_id, parked_here) {
            return;
        }
        loop {
            let (mut still_waiting, mut applied_any) = (false, false);
            match self.parking.of_order(&self.db.pool, order_id).await {
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
                    tracing::warn!(error = %e, %order_id, "cannot read parked messages; the sweep will retry them");
                    still_waiting = true;
                }
            }
            if !self.parking.end_pass(order_id, still_waiting, applied_any) {
                return;
            }
        }
    }

    /// Tries the parked messages of orders that are due (another instance's, from before a
    /// restart, or those no commit here has freed).
    pub(crate) async fn sweep_parked(&self, publisher: &Publisher) {
        let Some(due) = self.parking.due(&self.db).await else {
            return;
        };
        match due {
            Ok(orders) => {
                self.database.answered();
                for order_id in orders {
                    self.unpark_order(order_id, publisher, true).await;
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
        let span = self.span(&envelope, attempt, true);
        async {
            let waited = parked.waited();
            let published_by = parked.published_by.as_deref();
            let error = match self.apply_parked(&envelope, published_by).await {
                Ok(Applied::Effect) => {
                    self.metrics.inc(
                        "shop_messages_total",
                        &[("event", &envelope.event_type), ("outcome", "unparked")],
                    );
                    tracing::info!(waited_ms = waited.as_millis(), "handled after waiting");
                    return Retried::Applied;
                }
                Ok(Applied::Duplicate | Applied::Gone) => return Retried::Gone,
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
                    self.metrics.inc(
                        "shop_messages_total",
                        &[("event", &envelope.event_type), ("outcome", outcome)],
                    );
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
    /// one (`Gone` if another try got there first).
    async fn apply_parked(
        &self,
        envelope: &Envelope,
        published_by: Option<&str>,
    ) -> Result<Applied, HandlerError> {
        let mut tx = self.db.begin().await?;
        if !ParkingLot::remove(&mut *tx, envelope.message_id).await? {
            return Ok(Applied::Gone);
        }
        let work = UnitOfWork::within(tx, &self.db, &self.metrics, Some(envelope.message_id));
        let (work, applied) = self.apply_in(work, envelope, published_by).await;
        let applied = applied?;
        work.commit().await?;
        Ok(applied)
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
        let moved = self
            .move_on(
                publisher,
                &parked.body,
                properties,
                &vouched,
                attempt,
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
