//! The load and its mix.

use super::*;

/// What one order of the load is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Confirmed,
    CardDeclined,
    OutOfStock,
    Unshippable,
}

/// The mix, in hundredths: most orders go through, the rest take each compensation path.
pub(super) const MIX: [(Kind, u64); 4] = [
    (Kind::Confirmed, 85),
    (Kind::CardDeclined, 7),
    (Kind::Unshippable, 5),
    (Kind::OutOfStock, 3),
];

/// SKUs of the confirmed orders, in turn (each seeded with [`PLENTY`]).
pub(super) const SKUS: [&str; 4] = ["MUG-001", "TEE-001", "BOOK-001", "STICKER-001"];

/// The SKU whose stock is set to zero, for the out-of-stock share of the mix.
pub(super) const SOLD_OUT_SKU: &str = "HOODIE-001";

pub(super) fn kind_of(i: u64) -> Kind {
    let mut slot = i % 100;
    for (kind, share) in MIX {
        if slot < share {
            return kind;
        }
        slot -= share;
    }
    Kind::Confirmed
}

pub(super) fn order_body(i: u64) -> Value {
    let sku = SKUS[usize::try_from(i % 4).unwrap_or(0)];
    let (sku, method, country) = match kind_of(i) {
        Kind::Confirmed => (sku, "card", "NL"),
        Kind::CardDeclined => (sku, "card_declined", "GB"),
        Kind::Unshippable => (sku, "card", "AQ"),
        Kind::OutOfStock => (SOLD_OUT_SKU, "card", "DE"),
    };
    harness::order_body(&customer(i), sku, 1, method, country)
}

/// Customers the load places orders for, each with one token for the whole run (as a client
/// keeps its token), so signing and verifying cost what they cost a real shop.
pub(super) const CUSTOMERS: u64 = 100;

pub(super) fn customer(i: u64) -> String {
    format!("bench-{}", i % CUSTOMERS)
}

pub(super) fn mix_description() -> String {
    MIX.iter()
        .map(|(kind, share)| format!("{share}% {}", outcome_name(*kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn outcome_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Confirmed => "confirmed",
        Kind::CardDeclined => "cancelled: payment failed",
        Kind::OutOfStock => "cancelled: stock reservation failed",
        Kind::Unshippable => "cancelled: shipment failed",
    }
}

/// What one load did.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Offered {
    pub(super) offered_per_s: f64,
    pub(super) duration_s: f64,
    pub(super) sent: u64,
    pub(super) accepted: u64,
    /// Answered `503 overloaded`: shed by admission control (`MAX_PENDING_ORDERS`).
    pub(super) shed: u64,
    /// Any other answer, or none.
    pub(super) refused: u64,
    pub(super) settled: u64,
    pub(super) settled_per_s: f64,
    /// Orders not settled within [`DRAIN_TIME`] after the load stopped.
    pub(super) unsettled: u64,
    pub(super) latency_ms: Latency,
    pub(super) outcomes: BTreeMap<String, u64>,
    /// Whether the shop kept up: settled (nearly) all it was offered, at the rate offered.
    pub(super) kept_up: bool,
    /// A saturation step's own work per settled order and batches (the run's are reported
    /// at the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) per_order: Option<PerOrder>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) batch: BTreeMap<String, BatchFigures>,
}

impl Offered {
    /// Two loads one after the other, as one.
    pub(super) fn and(mut self, next: &Self) -> Self {
        self.duration_s = round1(self.duration_s + next.duration_s);
        self.sent += next.sent;
        self.accepted += next.accepted;
        self.shed += next.shed;
        self.refused += next.refused;
        self.settled += next.settled;
        self.unsettled += next.unsettled;
        self.settled_per_s = round1(self.settled as f64 / self.duration_s.max(0.001));
        for (outcome, n) in &next.outcomes {
            *self.outcomes.entry(outcome.clone()).or_default() += n;
        }
        self.kept_up &= next.kept_up;
        self.per_order = None;
        self.batch.clear();
        self
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Latency {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) max: f64,
}

impl Latency {
    pub(super) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| round1(micros as f64 / 1000.0);
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

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
