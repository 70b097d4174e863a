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

use shared_events::Envelope;
use sqlx::PgPool;
use uuid::Uuid;

/// Orders whose parked messages one sweep tries.
const SWEEP_BATCH: i64 = 100;
/// The longest the sweep leaves a parked message untried.
const MAX_SWEEP_BACKOFF: Duration = Duration::from_secs(30);

/// A parked message, as read back for another try.
#[derive(sqlx::FromRow)]
pub(crate) struct ParkedMessage {
    pub(crate) routing_key: String,
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
    /// How long a message may wait before it is dead-lettered: the retry schedule, the time a
    /// deferred message had before parking replaced the delay queues.
    pub(crate) patience: Duration,
    /// How often the sweep runs; a parked message is first swept one interval after parking,
    /// then after intervals doubling up to [`MAX_SWEEP_BACKOFF`].
    pub(crate) sweep_interval: Duration,
}

impl ParkingLot {
    pub(crate) fn new(patience: Duration, sweep_interval: Duration) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
            patience,
            sweep_interval,
        }
    }

    /// Parks a message (a copy already parked stays as it is). The caller then starts a pass
    /// for its order: a commit that raced the parking is seen by that pass or starts its own.
    pub(crate) async fn park(
        &self,
        pool: &PgPool,
        envelope: &Envelope,
        routing_key: &str,
        body: &[u8],
        attempt: u32,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO parked
                 (message_id, correlation_id, routing_key, body, attempts, last_error, next_try_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(envelope.message_id)
        .bind(envelope.correlation_id)
        .bind(routing_key)
        .bind(body)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(reason)
        .bind(self.sweep_interval.as_secs_f64())
        .execute(pool)
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
    pub(crate) async fn due(&self, pool: &PgPool) -> Option<Result<Vec<Uuid>, sqlx::Error>> {
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return None;
        }
        let due = sqlx::query_scalar(
            "SELECT correlation_id FROM parked WHERE next_try_at <= now()
             GROUP BY correlation_id ORDER BY min(next_try_at) LIMIT $1",
        )
        .bind(SWEEP_BATCH)
        .fetch_all(pool)
        .await;
        Some(due)
    }

    pub(crate) fn sweep_done(&self) {
        self.sweeping.store(false, Ordering::SeqCst);
    }

    pub(crate) async fn read(
        pool: &PgPool,
        message_id: Uuid,
    ) -> Result<Option<ParkedMessage>, sqlx::Error> {
        sqlx::query_as(
            "SELECT routing_key, body, attempts,
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
