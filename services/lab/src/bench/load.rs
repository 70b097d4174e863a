//! The load: orders of the mix sent on schedule, and what came of them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::ProgressBar;
use uuid::Uuid;

use super::figures::*;
use super::mix::*;
use super::options::*;
use super::processes::*;
use super::target::*;
use super::tracker::*;

/// Sends `rate` orders per second for `duration` on schedule (open loop), then waits for what
/// is in flight to settle. Order numbers start at `first` so loads never reuse a key.
pub(super) async fn offer(
    target: &Target,
    watch: &Watch,
    http: &reqwest::Client,
    rate: f64,
    duration: Duration,
    first: u64,
    progress: &ProgressBar,
) -> Offered {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    watch.with(Tracker::reset);
    let (accepted, shed, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    progress.set_length(total);
    progress.set_position(0);
    let start = Instant::now();
    let mut sends = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let orders_url = &target.orders_urls[(i as usize) % target.orders_urls.len()];
        let (http, url) = (http.clone(), format!("{orders_url}/orders"));
        let (accepted, shed, refused) = (accepted.clone(), shed.clone(), refused.clone());
        let token = target.tokens[usize::try_from((first + i) % CUSTOMERS).unwrap_or(0)].clone();
        sends.push(tokio::spawn(async move {
            // As its customer, with that customer's token.
            let body = order_body(first + i);
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 202 => accepted.fetch_add(1, Ordering::Relaxed),
                Ok(r) if r.status() == 503 => shed.fetch_add(1, Ordering::Relaxed),
                _ => refused.fetch_add(1, Ordering::Relaxed),
            };
        }));
        if i % 50 == 0 {
            let (settled, in_flight) = watch.with(|t| (t.settled, t.in_flight()));
            progress.set_position(i);
            progress.set_message(format!(
                "{rate:.0}/s offered, {settled} settled, {in_flight} in flight"
            ));
        }
    }
    futures_util::future::join_all(sends).await;
    let load_time = start.elapsed();
    progress.set_position(total);
    let accepted = accepted.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + DRAIN_TIME;
    while watch.with(|t| t.settled) < accepted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.with(|t| {
        let busy_for = t
            .last_settled
            .map_or(load_time, |last| last.saturating_duration_since(start))
            .max(load_time);
        let settled_per_s = t.settled as f64 / busy_for.as_secs_f64().max(0.001);
        let latency = Latency::of(&t.latency_us);
        Offered {
            offered_per_s: rate,
            duration_s: round1(load_time.as_secs_f64()),
            sent: total,
            accepted,
            shed: shed.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            settled: t.settled,
            settled_per_s: round1(settled_per_s),
            unsettled: accepted.saturating_sub(t.settled),
            kept_up: accepted == total
                && t.settled == accepted
                && settled_per_s >= 0.95 * rate
                && latency.p99 < 1_000.0,
            latency_ms: latency,
            outcomes: t.outcomes.clone(),
            per_order: None,
            batch: BTreeMap::new(),
        }
    })
}
