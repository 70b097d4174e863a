//! Watching the exchange.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::harness::{EventTap, Seen};

/// Orders seen placed and settled on the exchange, and their latencies.
pub(super) struct Tracker {
    pub(super) placed_at: HashMap<Uuid, Instant>,
    pub(super) latency_us: Histogram<u64>,
    pub(super) outcomes: BTreeMap<String, u64>,
    pub(super) settled: u64,
    pub(super) last_settled: Option<Instant>,
}

impl Tracker {
    pub(super) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            placed_at: HashMap::new(),
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            outcomes: BTreeMap::new(),
            settled: 0,
            last_settled: None,
        })
    }

    pub(super) fn observe(&mut self, seen: &Seen) {
        let order_id = seen.envelope.correlation_id;
        match seen.envelope.event_type.as_str() {
            "OrderPlaced" => {
                self.placed_at.insert(order_id, seen.received_at);
            }
            terminal @ ("OrderConfirmed" | "OrderCancelled") => {
                let Some(placed) = self.placed_at.remove(&order_id) else {
                    return;
                };
                let micros = seen
                    .received_at
                    .saturating_duration_since(placed)
                    .as_micros();
                let _ = self
                    .latency_us
                    .record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                let outcome = if terminal == "OrderConfirmed" {
                    "confirmed".to_owned()
                } else {
                    let reason = seen.envelope.payload["reason"].as_str().unwrap_or("");
                    let stage = reason.split(':').next().unwrap_or(reason);
                    format!("cancelled: {stage}")
                };
                *self.outcomes.entry(outcome).or_default() += 1;
                self.settled += 1;
                self.last_settled = Some(seen.received_at);
            }
            _ => {}
        }
    }

    /// Starts a new measurement (orders still in flight keep their start times).
    pub(super) fn reset(&mut self) {
        self.latency_us.reset();
        self.outcomes.clear();
        self.settled = 0;
        self.last_settled = None;
    }

    pub(super) fn in_flight(&self) -> usize {
        self.placed_at.len()
    }
}

/// The tracker, fed by a tap on the shop's exchange.
#[derive(Clone)]
pub(super) struct Watch {
    pub(super) tracker: Arc<Mutex<Tracker>>,
}

impl Watch {
    pub(super) async fn start(amqp_url: &str, namespace: &str) -> anyhow::Result<(Self, EventTap)> {
        let (sender, mut events) = mpsc::unbounded_channel();
        let tap = EventTap::forward(amqp_url, namespace, sender).await?;
        let watch = Self {
            tracker: Arc::new(Mutex::new(Tracker::new()?)),
        };
        let tracker = watch.tracker.clone();
        tokio::spawn(async move {
            while let Some(seen) = events.recv().await {
                tracker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .observe(&seen);
            }
        });
        Ok((watch, tap))
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Tracker) -> T) -> T {
        f(&mut self.tracker.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
