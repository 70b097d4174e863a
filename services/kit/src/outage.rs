//! A dependency that stops answering is one event, not one per failed try: each loop that uses
//! the database (the consumer, the relay, a sweep) keeps an `Outage` and logs the first
//! failure, a reminder while it lasts, and the recovery with how long it took.

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
    down: Arc<Mutex<Option<Down>>>,
}

struct Down {
    since: Instant,
    reminded: Instant,
    failures: u64,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            down: Arc::new(Mutex::new(None)),
        }
    }

    /// A try failed because the dependency did not answer.
    pub fn failed(&self, error: &dyn Display) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match down.as_mut() {
            None => {
                tracing::warn!(error = %error, "{} does not answer; waiting for it", self.what);
                *down = Some(Down {
                    since: now,
                    reminded: now,
                    failures: 1,
                });
            }
            Some(down) => {
                down.failures += 1;
                if now.duration_since(down.reminded) >= REMINDER {
                    down.reminded = now;
                    tracing::warn!(
                        error = %error,
                        down_for_s = down.since.elapsed().as_secs(),
                        failed_tries = down.failures,
                        "{} still does not answer", self.what
                    );
                }
            }
        }
    }

    /// A try succeeded: if the dependency was away, it is back.
    pub fn answered(&self) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ended) = down.take() {
            tracing::info!(
                down_for_ms = ended.since.elapsed().as_millis() as u64,
                failed_tries = ended.failures,
                "{} answers again",
                self.what
            );
        }
    }

    pub fn is_down(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_begins_with_the_first_failure_and_ends_with_the_first_answer() {
        let outage = Outage::new("the database");
        assert!(!outage.is_down());
        outage.failed(&"refused");
        outage.failed(&"refused");
        assert!(outage.is_down());
        let view = outage.clone();
        view.answered();
        assert!(!outage.is_down(), "clones share one view");
        outage.answered();
        assert!(!outage.is_down());
    }
}
