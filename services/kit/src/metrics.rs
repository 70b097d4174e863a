//! A few counters in the Prometheus text format. Each service instance owns its registry (no
//! global recorder), so several services can share one process in tests.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex, PoisonError},
};

#[derive(Clone, Default)]
pub struct Metrics {
    counters: Arc<Mutex<BTreeMap<(&'static str, String), u64>>>,
}

/// What each counter counts, for the `# HELP` lines.
const HELP: &[(&str, &str)] = &[
    (
        "shop_messages_total",
        "Deliveries handled, by event type and outcome",
    ),
    (
        "shop_outbox_published_total",
        "Outbox rows published and confirmed",
    ),
    (
        "shop_outbox_publish_failures_total",
        "Outbox publishes nacked, returned or timed out",
    ),
    ("shop_retries_total", "Deliveries sent to a retry queue"),
    (
        "shop_dead_letters_total",
        "Deliveries sent to the dead-letter queue",
    ),
    (
        "shop_broker_sessions_total",
        "Broker sessions opened (1 + reconnects)",
    ),
    (
        "shop_http_connections_refused_total",
        "Connections closed at once: the service already held HTTP_MAX_CONNECTIONS",
    ),
    (
        "shop_orders_shed_total",
        "New orders refused (503) because MAX_PENDING_ORDERS were not yet settled",
    ),
    (
        "shop_rows_pruned_total",
        "Sent outbox rows and inbox ids deleted by retention",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.entry((name, labels)).or_default() += n;
    }

    pub fn render(&self) -> String {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let mut last_name = "";
        for ((name, labels), value) in counters.iter() {
            if *name != last_name {
                if let Some((_, help)) = HELP.iter().find(|(n, _)| n == name) {
                    let _ = writeln!(out, "# HELP {name} {help}");
                }
                let _ = writeln!(out, "# TYPE {name} counter");
                last_name = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.inc(
            "shop_messages_total",
            &[("event", "OrderPlaced"), ("outcome", "applied")],
        );
        metrics.inc(
            "shop_messages_total",
            &[("event", "OrderPlaced"), ("outcome", "applied")],
        );
        metrics.add("shop_outbox_published_total", &[], 3);
        let text = metrics.render();
        assert!(text.contains("# TYPE shop_messages_total counter"));
        assert!(text.contains("shop_messages_total{event=\"OrderPlaced\",outcome=\"applied\"} 2"));
        assert!(text.contains("shop_outbox_published_total 3"));
    }
}
