//! Capped exponential backoff with equal jitter: the reconnect loop, the migrations' wait for a
//! database that is still starting and the consumer's probe of a silent one share it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            failures: 0,
        }
    }
}

impl Backoff {
    /// Starts at `base`, doubling up to `cap`.
    pub fn capped(base: Duration, cap: Duration) -> Self {
        Self {
            base: base.min(cap),
            cap,
            failures: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)))
            .min(self.cap);
        self.failures += 1;
        // Equal jitter (half fixed, half random): services restarted together do not
        // reconnect in lockstep, yet each still waits at least half the ceiling.
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(100));
        assert!(first >= Duration::from_millis(50));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(5));
        }
        assert!(backoff.next_delay() >= Duration::from_millis(2500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
