//! What becomes of a message whose handling failed: one decision, made here for a delivery
//! from the queue, a delivery that could not be parked and a parked message tried again.
//!
//! - A message no retry can fix is dead-lettered at once, with the reason.
//! - A message waiting for a fact that has not committed yet is parked; once parked, it may
//!   wait as long as the retry schedule lasts (its patience), then it is dead-lettered.
//! - A dependency that is away (the database) is not the message's fault: it is tried again
//!   later and the try does not count.
//! - Anything else is tried again after the schedule's next delay, until `max_attempts` (a
//!   parked message: its patience) is spent.

use std::time::Duration;

use crate::{messaging::handler::HandlerError, runtime::db};

/// A failure, as far as the message's fate goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The fact the handler depends on has not committed yet.
    Deferred(String),
    /// No retry can make this message acceptable.
    Rejected(String),
    /// A dependency cannot be reached.
    DependencyAway(String),
    /// May pass on another try.
    Transient(String),
}

impl From<&HandlerError> for Failure {
    fn from(error: &HandlerError) -> Self {
        match error {
            HandlerError::Deferred(reason) => Self::Deferred(reason.clone()),
            HandlerError::Rejected(reason) => Self::Rejected(reason.clone()),
            HandlerError::Database(e) => Self::from(e),
        }
    }
}

impl From<&sqlx::Error> for Failure {
    fn from(error: &sqlx::Error) -> Self {
        if db::is_data_exception(error) {
            // Data the database cannot hold: every attempt would fail the same way.
            Self::Rejected(format!(
                "the database cannot store this message's data: {error}"
            ))
        } else if db::is_connection_error(error) {
            Self::DependencyAway(error.to_string())
        } else {
            Self::Transient(error.to_string())
        }
    }
}

/// Where the failed try came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// A delivery from the service's queue (or one that could not be parked).
    Queue,
    /// A parked message, waiting since it was first parked.
    Parked { waited: Duration },
}

/// The budget a message has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Counted tries before a delivery is dead-lettered (`MAX_ATTEMPTS`).
    pub(crate) max_attempts: u32,
    /// How long a parked message may wait (the whole retry schedule).
    pub(crate) patience: Duration,
}

/// The fate of a failed try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Waits in the parking lot (a parked message: stays there, this try counted).
    Park {
        reason: String,
    },
    Move(Move),
}

/// Where a copy of a failed message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// Tried again later: from the queue after the delay of `delay_step`; a parked message
    /// stays in the lot. `next_attempt` equals the failed attempt when the try does not count.
    Retry {
        next_attempt: u32,
        delay_step: u32,
        error: String,
    },
    /// To the dead-letter queue; `exhausted` when it had run out of tries rather than being
    /// refused outright.
    DeadLetter { reason: String, exhausted: bool },
}

impl Fate {
    /// The `outcome` label of `shop_messages_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Park { .. } => "parked",
            Self::Move(Move::Retry { .. }) => "retried",
            Self::Move(Move::DeadLetter {
                exhausted: false, ..
            }) => "rejected",
            Self::Move(Move::DeadLetter {
                exhausted: true, ..
            }) => "exhausted",
        }
    }
}

/// Decides what becomes of a message whose `attempt`-th try failed with `failure`.
pub(crate) fn fate(failure: Failure, attempt: u32, origin: Origin, schedule: &Schedule) -> Fate {
    let retry = |next_attempt, error| {
        Fate::Move(Move::Retry {
            next_attempt,
            delay_step: attempt + 1,
            error,
        })
    };
    match (failure, origin) {
        (Failure::Rejected(reason), _) => Fate::Move(Move::DeadLetter {
            reason,
            exhausted: false,
        }),
        (Failure::DependencyAway(error), _) => retry(attempt, error),
        (Failure::Deferred(reason) | Failure::Transient(reason), Origin::Parked { waited })
            if waited >= schedule.patience =>
        {
            Fate::Move(Move::DeadLetter {
                reason: format!(
                    "gave up after {attempt} attempts over {:.1} s waiting: {reason}",
                    waited.as_secs_f64()
                ),
                exhausted: true,
            })
        }
        (Failure::Deferred(reason), _) => Fate::Park { reason },
        (Failure::Transient(error), Origin::Queue) if attempt >= schedule.max_attempts => {
            Fate::Move(Move::DeadLetter {
                reason: format!("gave up after {attempt} attempts: {error}"),
                exhausted: true,
            })
        }
        (Failure::Transient(error), _) => retry(attempt + 1, error),
    }
}

/// The fate of a delivery the database failed (its try, its parking, its batch's commit):
/// never the parking lot, which is in that database.
pub(crate) fn fate_of_database_error(
    error: &sqlx::Error,
    attempt: u32,
    schedule: &Schedule,
) -> Move {
    match fate(Failure::from(error), attempt, Origin::Queue, schedule) {
        Fate::Move(destination) => destination,
        // `Failure::from` a database error is never `Deferred`; were it, the delay queue is
        // the place for a message that cannot be parked.
        Fate::Park { reason } => Move::Retry {
            next_attempt: attempt,
            delay_step: attempt + 1,
            error: reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Schedule = Schedule {
        max_attempts: 3,
        patience: Duration::from_secs(10),
    };
    const QUEUE: Origin = Origin::Queue;

    fn parked(secs: u64) -> Origin {
        Origin::Parked {
            waited: Duration::from_secs(secs),
        }
    }

    fn text(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn a_rejected_message_is_dead_lettered_at_once_wherever_it_comes_from() {
        for origin in [QUEUE, parked(0), parked(60)] {
            assert_eq!(
                fate(Failure::Rejected(text("bad")), 1, origin, &SCHEDULE),
                Fate::Move(Move::DeadLetter {
                    reason: text("bad"),
                    exhausted: false
                })
            );
        }
    }

    #[test]
    fn a_deferred_delivery_is_parked_even_past_max_attempts() {
        for attempt in [1, 3, 7] {
            let fate = fate(
                Failure::Deferred(text("no order")),
                attempt,
                QUEUE,
                &SCHEDULE,
            );
            assert_eq!(
                fate,
                Fate::Park {
                    reason: text("no order")
                }
            );
            assert_eq!(fate.outcome(), "parked");
        }
    }

    #[test]
    fn a_parked_message_waits_until_its_patience_is_spent() {
        assert_eq!(
            fate(Failure::Deferred(text("no order")), 5, parked(9), &SCHEDULE),
            Fate::Park {
                reason: text("no order")
            }
        );
        let gave_up = fate(
            Failure::Deferred(text("no order")),
            6,
            parked(10),
            &SCHEDULE,
        );
        assert_eq!(
            gave_up,
            Fate::Move(Move::DeadLetter {
                reason: text("gave up after 6 attempts over 10.0 s waiting: no order"),
                exhausted: true
            })
        );
        assert_eq!(gave_up.outcome(), "exhausted");
    }

    #[test]
    fn a_dependency_away_spends_no_attempt() {
        for origin in [QUEUE, parked(60)] {
            assert_eq!(
                fate(Failure::DependencyAway(text("down")), 3, origin, &SCHEDULE),
                Fate::Move(Move::Retry {
                    next_attempt: 3,
                    delay_step: 4,
                    error: text("down")
                })
            );
        }
    }

    #[test]
    fn a_transient_error_is_retried_with_the_next_delay_until_max_attempts() {
        let first = fate(Failure::Transient(text("deadlock")), 1, QUEUE, &SCHEDULE);
        assert_eq!(
            first,
            Fate::Move(Move::Retry {
                next_attempt: 2,
                delay_step: 2,
                error: text("deadlock")
            })
        );
        assert_eq!(first.outcome(), "retried");
        assert_eq!(
            fate(Failure::Transient(text("deadlock")), 3, QUEUE, &SCHEDULE),
            Fate::Move(Move::DeadLetter {
                reason: text("gave up after 3 attempts: deadlock"),
                exhausted: true
            })
        );
    }

    #[test]
    fn a_parked_message_counts_time_not_attempts() {
        assert_eq!(
            fate(
                Failure::Transient(text("deadlock")),
                9,
                parked(1),
                &SCHEDULE
            ),
            Fate::Move(Move::Retry {
                next_attempt: 10,
                delay_step: 10,
                error: text("deadlock")
            })
        );
        assert!(matches!(
            fate(
                Failure::Transient(text("deadlock")),
                2,
                parked(11),
                &SCHEDULE
            ),
            Fate::Move(Move::DeadLetter {
                exhausted: true,
                ..
            })
        ));
    }

    #[test]
    fn a_message_the_database_failed_moves_on_and_spends_an_attempt_only_when_it_answered() {
        assert_eq!(
            fate_of_database_error(&sqlx::Error::PoolTimedOut, 2, &SCHEDULE),
            Move::Retry {
                next_attempt: 2,
                delay_step: 3,
                error: sqlx::Error::PoolTimedOut.to_string()
            }
        );
        assert_eq!(
            fate_of_database_error(&sqlx::Error::RowNotFound, 2, &SCHEDULE),
            Move::Retry {
                next_attempt: 3,
                delay_step: 3,
                error: sqlx::Error::RowNotFound.to_string()
            }
        );
    }

    #[test]
    fn database_errors_are_classified_by_what_a_retry_can_do() {
        assert_eq!(
            Failure::from(&HandlerError::Database(sqlx::Error::PoolTimedOut)),
            Failure::DependencyAway(sqlx::Error::PoolTimedOut.to_string())
        );
        assert_eq!(
            Failure::from(&HandlerError::Database(sqlx::Error::RowNotFound)),
            Failure::Transient(sqlx::Error::RowNotFound.to_string())
        );
        assert_eq!(
            Failure::from(&HandlerError::Deferred(text("wait"))),
            Failure::Deferred(text("wait"))
        );
    }
}
