//! The service's metrics in the Prometheus text format, kept by `metrics-exporter-prometheus`.
//! Each service instance owns its recorder (no global one), so several services can share one
//! process in tests; `/metrics` renders it.

use std::{sync::Arc, time::Duration};

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use tokio_util::sync::CancellationToken;

/// Histogram buckets in seconds: a handler takes milliseconds, a saga tens of milliseconds to
/// seconds, a saga held up by a fault up to minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Batch size buckets: one per size up to 32 (the default `CONSUMER_BATCH_MAX`), so the
/// benchmark reads exact percentiles, coarser beyond.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0,
    18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0, 31.0, 32.0, 48.0,
    64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

const METADATA: Metadata<'static> = Metadata::new("shop", Level::INFO, None);

/// What a metric is: how it is exported and what it means (its `# HELP` line). A name ending
/// in `_seconds` is in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
    Gauge,
}

/// Every metric the kit reports for every service; a service adds its own
/// (`ServiceSpec::metrics`).
pub const KIT_METRICS: &[Metric] = &[
    Metric {
        name: "shop_messages_total",
        kind: MetricKind::Counter,
        help: "Deliveries handled, by event type and outcome (applied, duplicate, parked, unparked, retried, rejected, exhausted, malformed)",
    },
    Metric {
        name: "shop_outbox_published_total",
        kind: MetricKind::Counter,
        help: "Outbox rows published and confirmed",
    },
    Metric {
        name: "shop_outbox_publish_failures_total",
        kind: MetricKind::Counter,
        help: "Outbox publishes nacked, returned or timed out",
    },
    Metric {
        name: "shop_retries_total",
        kind: MetricKind::Counter,
        help: "Deliveries sent to a retry queue",
    },
    Metric {
        name: "shop_dead_letters_total",
        kind: MetricKind::Counter,
        help: "Deliveries sent to the dead-letter queue",
    },
    Metric {
        name: "shop_broker_sessions_total",
        kind: MetricKind::Counter,
        help: "Broker sessions opened (1 + reconnects)",
    },
    Metric {
        name: "shop_http_connections_refused_total",
        kind: MetricKind::Counter,
        help: "Connections refused (answered 503, or closed past 64 refusals at once): the \
               service held HTTP_MAX_CONNECTIONS, every one busy",
    },
    Metric {
        name: "shop_http_idle_connections_shed_total",
        kind: MetricKind::Counter,
        help: "Idle connections closed to admit a new one at HTTP_MAX_CONNECTIONS",
    },
    Metric {
        name: "shop_rows_pruned_total",
        kind: MetricKind::Counter,
        help: "Sent outbox rows and inbox ids deleted by retention",
    },
    Metric {
        name: "shop_handler_duration_seconds",
        kind: MetricKind::Histogram,
        help: "Time to apply one delivery in its batch's transaction (inbox, effect, outbox; the commit is the batch's), by event type",
    },
    Metric {
        name: "shop_consumer_batch_size",
        kind: MetricKind::Histogram,
        help: "Deliveries applied in one transaction",
    },
    Metric {
        name: "shop_outbox_unsent_rows",
        kind: MetricKind::Gauge,
        help: "Outbox rows not yet published",
    },
    Metric {
        name: "shop_outbox_oldest_unsent_age_seconds",
        kind: MetricKind::Gauge,
        help: "Age of the oldest unpublished outbox row (0 when none): the relay's lag",
    },
    Metric {
        name: "shop_history_replayed_total",
        kind: MetricKind::Counter,
        help: "History events read while catching up (REPLAY_FROM), by outcome: handled (through the routes), not_subscribed, older_than_inbox, before_requested",
    },
    Metric {
        name: "shop_history_replay_lag",
        kind: MetricKind::Gauge,
        help: "History events left to read before the catch-up reaches the end it set out for (0 once caught up)",
    },
    Metric {
        name: "shop_dead_letter_queue_depth",
        kind: MetricKind::Gauge,
        help: "Messages waiting in the service's dead-letter queue",
    },
];

/// Counters every service exports from its start, at 0: a rate over a series that does not
/// exist yet is no data, not zero, and an operator's panel must not go blank in good times.
const ZERO_FROM_START: &[&str] = &[
    "shop_outbox_published_total",
    "shop_outbox_publish_failures_total",
    "shop_retries_total",
    "shop_dead_letters_total",
    "shop_broker_sessions_total",
    "shop_http_connections_refused_total",
    "shop_http_idle_connections_shed_total",
];

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
}

impl Metrics {
    /// A registry describing the kit's metrics and the service's `own`.
    pub(crate) fn describing(own: &[Metric]) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("shop_consumer_batch_size".to_owned()),
                    BATCH_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        for metric in KIT_METRICS.iter().chain(own) {
            if ZERO_FROM_START.contains(&metric.name) {
                recorder
                    .register_counter(&Key::from_static_name(metric.name), &METADATA)
                    .increment(0);
            }
            let unit = metric.name.ends_with("_seconds").then_some(Unit::Seconds);
            let name = KeyName::from_const_str(metric.name);
            let help = SharedString::const_str(metric.help);
            match metric.kind {
                MetricKind::Counter => recorder.describe_counter(name, unit, help),
                MetricKind::Histogram => recorder.describe_histogram(name, unit, help),
                MetricKind::Gauge => recorder.describe_gauge(name, unit, help),
            }
        }
        Self {
            recorder: Arc::new(recorder),
        }
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
            .increment(n);
    }

    /// Records one observation of a histogram (seconds, for the `_seconds` ones).
    pub fn observe(&self, name: &'static str, labels: &[(&str, &str)], value: f64) {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
            .record(value);
    }

    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], value: f64) {
        self.recorder
            .register_gauge(&key(name, labels), &METADATA)
            .set(value);
    }

    pub fn render(&self) -> String {
        self.recorder.handle().run_upkeep();
        self.recorder.handle().render()
    }

    /// Folds histogram samples into their buckets now and then, so memory stays flat however
    /// rarely `/metrics` is scraped.
    pub(crate) async fn upkeep(self, shutdown: CancellationToken) {
        let handle = self.recorder.handle();
        loop {
            tokio::select! {
                () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

fn key(name: &'static str, labels: &[(&str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(k.to_string(), v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::describing(&[]);
        metrics.inc(
            "shop_messages_total",
            &[("event", "OrderPlaced"), ("outcome", "applied")],
        );
        metrics.inc(
            "shop_messages_total",
            &[("event", "OrderPlaced"), ("outcome", "applied")],
        );
        metrics.add("shop_outbox_published_total", &[], 3);
        metrics.observe(
            "shop_handler_duration_seconds",
            &[("event", "OrderPlaced")],
            0.004,
        );
        metrics.set("shop_outbox_unsent_rows", &[], 7.0);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE shop_messages_total counter"),
            "{text}"
        );
        assert!(
            text.contains("shop_messages_total{event=\"OrderPlaced\",outcome=\"applied\"} 2"),
            "{text}"
        );
        assert!(text.contains("shop_outbox_published_total 3"), "{text}");
        assert!(
            text.contains("# TYPE shop_handler_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "shop_handler_duration_seconds_bucket{event=\"OrderPlaced\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "shop_handler_duration_seconds_bucket{event=\"OrderPlaced\",le=\"0.0025\"} 0"
            ),
            "{text}"
        );
        assert!(text.contains("shop_outbox_unsent_rows 7"), "{text}");
        assert!(
            text.contains("# HELP shop_outbox_unsent_rows Outbox rows not yet published"),
            "{text}"
        );
    }
}
