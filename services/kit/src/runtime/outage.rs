//! A dependency that stops answering is one event, not one per failed try: each loop that uses
//! the database (the consumer, the relay, a sweep) or the broker (the session) keeps an
//! `Outage` and logs the first failure, a reminder a minute while it lasts, and the recovery
//! with how long it took. One that flaps is mentioned at most once a minute.

use std::{
    fmt::Display,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How often a lasting outage is mentioned again.
const REMINDER: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Outage {
    /// What does not answer, and whose view this is: "the database (as the relay sees it)".
    what: &'static str,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    down: Option<Down>,
    /// When a line about this dependency was last logged: a dependency that flaps (a slow
    /// one: some tries time out, some pass) is mentioned at most once a [`REMINDER`].
    last_said: Option<Instant>,
}

struct Down {
    since: Instant,
    failures: u64,
    /// Whether its start was logged (then so is its end).
    said: bool,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            state: Arc::default(),
        }
    }

    /// A try failed because the dependency did not answer.
    pub fn failed(&self, error: &dyn Display) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let due = state
            .last_said
            .is_none_or(|said| now.duration_since(said) >= REMINDER);
        let down = state.down.get_or_insert(Down {
            since: now,
            failures: 0,
            said: false,
        });
        down.failures += 1;
        if !due {
            return;
        }
        if down.said {
            tracing::warn!(
                error = %error,
                down_for_s = down.since.elapsed().as_secs(),
                failed_tries = down.failures,
                "{} still does not answer", self.what
            );
        } else {
            down.said = true;
            tracing::warn!(error = %error, "{} does not answer; waiting for it", self.what);
        }
        state.last_said = Some(now);
    }

    /// A try succeeded: if the dependency was away, it is back.
    pub fn answered(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(ended) = state.down.take() else {
            return;
        };
        let down_for_ms = ended.since.elapsed().as_millis() as u64;
        if ended.said {
            state.last_said = Some(Instant::now());
            tracing::info!(
                down_for_ms,
                failed_tries = ended.failures,
                "{} answers again",
                self.what
            );
        } else {
            tracing::debug!(
                down_for_ms,
                failed_tries = ended.failures,
                "{} answers again",
                self.what
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_down(outage: &Outage) -> bool {
        let state = outage.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.down.is_some()
    }

    #[test]
    fn an_outage_begins_with_the_first_failure_and_ends_with_the_first_answer() {
        let outage = Outage::new("the database");
        assert!(!is_down(&outage));
        outage.failed(&"refused");
        outage.failed(&"refused");
        assert!(is_down(&outage));
        let view = outage.clone();
        view.answered();
        assert!(!is_down(&outage), "clones share one view");
        outage.answered();
        assert!(!is_down(&outage));
    }

    #[test]
    fn a_flapping_dependency_is_mentioned_at_most_once_a_minute() {
        let said = |outage: &Outage| {
            let state = outage.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.down.as_ref().map(|down| down.said)
        };
        let outage = Outage::new("the database");
        outage.failed(&"timed out");
        assert_eq!(said(&outage), Some(true), "an outage's start is logged");
        outage.answered();
        outage.failed(&"timed out");
        assert_eq!(
            said(&outage),
            Some(false),
            "a second one within the minute is not"
        );
        outage.answered();
        assert_eq!(said(&outage), None);
    }
}
