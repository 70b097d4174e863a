//! Catching up from the shop's history (`REPLAY_FROM`). Before a service consumes its own
//! queue, it reads the history (`broker/history.rs`) from where it was asked to, up to the
//! history's last event when the catch-up began, and hands each event its route table
//! subscribes to the same consume loop as a live delivery (`consume`, `batch`, `apply`): the
//! inbox absorbs what the service has already handled, parking holds what comes before its
//! cause. Then it consumes live. Its queue existed before the catch-up began (the session
//! declared it), so whatever the history gained since is waiting there: nothing is missed, and
//! the inbox absorbs what both bring.
//!
//! The position is the service's own (a stream keeps none): a row of `<schema>.replay` per
//! replay asked for, advanced after each batch commits, so a restart of the service or the
//! broker resumes where it was (an event read again is absorbed). A finished replay is not
//! repeated. An event older than the inbox remembers (`INBOX_RETENTION_SECS`) is skipped: it
//! may have been handled and forgotten, and would be applied again.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use lapin::{Connection, message::Delivery};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    broker::history::{self, EndError, ReplayFrom, Start},
    runtime::{db::Db, metrics::Metrics},
};

/// Clocks of the publishers and of this service may differ by this much: an event this close
/// to the inbox's horizon is skipped too.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read or record the replay's position")]
    Database(#[from] sqlx::Error),
    #[error("cannot find where the history ends")]
    End(#[from] EndError),
}

/// A service's catch-up: what it reads, through which routing keys, and how far it got.
pub(crate) struct Replay {
    pub(crate) requested: ReplayFrom,
    /// `<ns>.history`
    pub(crate) stream: String,
    /// The service's route table's routing keys: the events it handles.
    pub(crate) routing_keys: Vec<&'static str>,
    /// `INBOX_RETENTION_SECS`: events older than this (less a margin) are skipped.
    pub(crate) inbox_retention: Duration,
    pub(crate) db: Db,
    pub(crate) metrics: Metrics,
    pub(crate) progress: Arc<Mutex<Progress>>,
}

/// How far the catch-up got, as `/readyz` shows it.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Progress {
    /// `REPLAY_FROM`.
    pub from: String,
    /// History events handled through the service's routes (applied, absorbed by the inbox,
    /// or parked).
    pub handled: u64,
    /// History events read and passed over: not the service's, or older than its inbox
    /// remembers.
    pub skipped: u64,
    /// The next offset to read; `null` before the first.
    pub next_offset: Option<u64>,
    /// The history's last offset when the catch-up began; `null`: it was empty.
    pub until_offset: Option<u64>,
    /// Events between the position and that end.
    pub lag: u64,
    pub caught_up: bool,
}

/// What is left of a catch-up: where to start reading, and the last offset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) start: Start,
    pub(crate) until: u64,
}

/// What becomes of a history event during a catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Handle,
    /// Passed over, and why (`shop_history_replayed_total`'s outcome).
    Skip(&'static str),
}

/// Whether an event of the history is the service's to handle: one its route table subscribes
/// to, not older than its inbox remembers (`oldest`), not before the time asked for.
pub(crate) fn verdict(
    routing_key: &str,
    occurred: Option<DateTime<Utc>>,
    routing_keys: &[&str],
    oldest: DateTime<Utc>,
    requested: ReplayFrom,
) -> Verdict {
    if !routing_keys.contains(&routing_key) {
        return Verdict::Skip("not_subscribed");
    }
    match (occurred, requested) {
        (Some(occurred), _) if occurred < oldest => Verdict::Skip("older_than_inbox"),
        // The history starts at the chunk holding the time: earlier events of it come first.
        (Some(occurred), ReplayFrom::Since(since)) if occurred.timestamp() < since.timestamp() => {
            Verdict::Skip("before_requested")
        }
        _ => Verdict::Handle,
    }
}

/// A replay's row of `<schema>.replay`.
#[derive(Debug, sqlx::FromRow)]
struct Position {
    next_offset: Option<i64>,
    until_offset: Option<i64>,
    handled: i64,
    skipped: i64,
    finished: bool,
}

const POSITION: &str = "SELECT next_offset, until_offset, handled, skipped,
                               finished_at IS NOT NULL AS finished
                        FROM replay WHERE requested = $1";

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Replay {
    /// What is left to replay (`None`: nothing, or finished). The first time, the history's
    /// current end is recorded as where this replay ends; replicas starting together agree on
    /// the first one recorded.
    pub(crate) async fn plan(&self, connection: &Connection) -> Result<Option<Plan>, ReplayError> {
        let requested = self.requested.to_string();
        let position = match self.position(&requested).await? {
            Some(position) => position,
            None => {
                let end = history::end(connection, &self.stream).await?;
                self.db
                    .bounded(
                        sqlx::query(
                            "INSERT INTO replay (requested, until_offset, finished_at)
                             VALUES ($1, $2, CASE WHEN $2::bigint IS NULL THEN now() END)
                             ON CONFLICT (requested) DO NOTHING",
                        )
                        .bind(&requested)
                        .bind(end.map(signed))
                        .execute(&self.db.pool),
                    )
                    .await?;
                self.position(&requested)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?
            }
        };
        let plan = match (
            position.finished,
            position.next_offset,
            position.until_offset,
        ) {
            (false, next, Some(until)) if next.is_none_or(|next| next <= until) => {
                let start = match next {
                    Some(next) => Start::Offset(unsigned(next)),
                    None => self.requested.start().unwrap_or(Start::First),
                };
                Some(Plan {
                    start,
                    until: unsigned(until),
                })
            }
            _ => None,
        };
        self.report(&position, plan.is_none());
        if plan.is_none() && !position.finished {
            self.finish(&requested).await?;
        }
        match &plan {
            Some(plan) => {
                tracing::info!(from = %self.requested, start = ?plan.start, until = plan.until, "catching up from the history")
            }
            None => {
                tracing::info!(from = %self.requested, "the replay asked for is done; consuming live")
            }
        }
        Ok(plan)
    }

    /// Splits a batch read from the history: the deliveries to handle, and those passed over
    /// (each counted by why).
    pub(crate) fn sort(&self, deliveries: Vec<Delivery>) -> (Vec<Delivery>, Vec<Delivery>) {
        let oldest = Utc::now()
            - chrono::Duration::from_std(self.inbox_retention.saturating_sub(CLOCK_MARGIN))
                .unwrap_or_default();
        let mut handle = Vec::with_capacity(deliveries.len());
        let mut skipped = Vec::new();
        for delivery in deliveries {
            let occurred = delivery
                .properties
                .timestamp()
                .and_then(|seconds| DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0));
            let verdict = verdict(
                delivery.routing_key.as_str(),
                occurred,
                &self.routing_keys,
                oldest,
                self.requested,
            );
            let outcome = match verdict {
                Verdict::Handle => {
                    handle.push(delivery);
                    "handled"
                }
                Verdict::Skip(outcome) => {
                    skipped.push(delivery);
                    outcome
                }
            };
            self.metrics
                .inc("shop_history_replayed_total", &[("outcome", outcome)]);
        }
        (handle, skipped)
    }

    /// Records that everything up to `through` (an offset) was read, `handled` and `skipped`
    /// of it in this batch; `true` once that reaches the replay's end. A position that cannot
    /// be recorded lags (what was read since is read again after a restart, and absorbed).
    pub(crate) async fn advance(
        &self,
        through: u64,
        handled: u64,
        skipped: u64,
        until: u64,
    ) -> bool {
        let requested = self.requested.to_string();
        let caught_up = through >= until;
        let recorded = self
            .db
            .bounded(
                sqlx::query_as::<_, Position>(
                    "UPDATE replay
                     SET next_offset = GREATEST(coalesce(next_offset, 0), $2),
                         handled = handled + $3, skipped = skipped + $4,
                         finished_at = CASE WHEN $5 THEN coalesce(finished_at, now()) ELSE finished_at END
                     WHERE requested = $1
                     RETURNING next_offset, until_offset, handled, skipped,
                               finished_at IS NOT NULL AS finished",
                )
                .bind(&requested)
                .bind(signed(through.saturating_add(1)))
                .bind(signed(handled))
                .bind(signed(skipped))
                .bind(caught_up)
                .fetch_optional(&self.db.pool),
            )
            .await;
        match recorded {
            Ok(Some(position)) => self.report(&position, caught_up),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, offset = through, "cannot record the replay's position; it will be read again");
            }
        }
        if caught_up {
            tracing::info!(from = %self.requested, offset = through, "caught up with the history; consuming live");
        }
        caught_up
    }

    async fn position(&self, requested: &str) -> Result<Option<Position>, sqlx::Error> {
        self.db
            .bounded(
                sqlx::query_as::<_, Position>(POSITION)
                    .bind(requested)
                    .fetch_optional(&self.db.pool),
            )
            .await
    }

    async fn finish(&self, requested: &str) -> Result<(), sqlx::Error> {
        self.db
            .bounded(
                sqlx::query("UPDATE replay SET finished_at = now() WHERE requested = $1")
                    .bind(requested)
                    .execute(&self.db.pool),
            )
            .await
            .map(drop)
    }

    /// What `/readyz` and `/metrics` say about the catch-up.
    fn report(&self, position: &Position, caught_up: bool) {
        let next_offset = position.next_offset.map(unsigned);
        let until_offset = position.until_offset.map(unsigned);
        let lag = match (caught_up, until_offset) {
            (false, Some(until)) => (until + 1).saturating_sub(next_offset.unwrap_or(0)),
            _ => 0,
        };
        self.metrics.set("shop_history_replay_lag", &[], lag as f64);
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        *progress = Progress {
            from: self.requested.to_string(),
            handled: unsigned(position.handled),
            skipped: unsigned(position.skipped),
            next_offset,
            until_offset,
            lag,
            caught_up,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["orders.order_confirmed", "orders.order_cancelled"];

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn only_the_services_own_events_are_handled() {
        let oldest = at("2026-12-01T00:00:00Z");
        let recent = Some(at("2026-12-07T00:00:00Z"));
        assert_eq!(
            verdict(
                "orders.order_confirmed",
                recent,
                KEYS,
                oldest,
                ReplayFrom::Start
            ),
            Verdict::Handle
        );
        assert_eq!(
            verdict(
                "payment.payment_completed",
                recent,
                KEYS,
                oldest,
                ReplayFrom::Start
            ),
            Verdict::Skip("not_subscribed")
        );
    }

    #[test]
    fn an_event_older_than_the_inbox_remembers_is_passed_over() {
        let oldest = at("2026-12-01T00:00:00Z");
        let forgotten = Some(at("2026-11-30T23:59:59Z"));
        assert_eq!(
            verdict(
                "orders.order_confirmed",
                forgotten,
                KEYS,
                oldest,
                ReplayFrom::Start
            ),
            Verdict::Skip("older_than_inbox")
        );
    }

    #[test]
    fn a_replay_since_a_time_passes_over_the_chunks_earlier_events() {
        let oldest = at("2026-12-01T00:00:00Z");
        let since = ReplayFrom::Since(at("2026-12-07T10:00:00.500Z"));
        let before = Some(at("2026-12-07T09:59:59Z"));
        let same_second = Some(at("2026-12-07T10:00:00Z"));
        assert_eq!(
            verdict("orders.order_confirmed", before, KEYS, oldest, since),
            Verdict::Skip("before_requested")
        );
        assert_eq!(
            verdict("orders.order_confirmed", same_second, KEYS, oldest, since),
            Verdict::Handle
        );
        // Without a time (not published by a shop's relay) there is nothing to judge by.
        assert_eq!(
            verdict("orders.order_confirmed", None, KEYS, oldest, since),
            Verdict::Handle
        );
    }
}
