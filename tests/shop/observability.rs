//! What an operator looks at from outside, kept honest: the Grafana dashboard queries only
//! series the services really export, and Prometheus (as compose runs it) scrapes every
//! service where it listens. promtool lints the exposition itself in CI.

use std::collections::BTreeSet;

use serde_json::Value;
use shop::SERVICES;
use shop_tests::{Shop, metrics_text, order_body};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/dashboards/shop.json"
);
/// Prometheus's configuration as compose mounts it in each style.
const PROMETHEUS: [(&str, service_kit::Style); 2] = [
    (
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/prometheus/prometheus.yml"
        ),
        service_kit::Style::Choreography,
    ),
    (
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/prometheus/prometheus.orchestration.yml"
        ),
        service_kit::Style::Orchestration,
    ),
];

/// Every `shop_…` series name in the dashboard's queries.
fn dashboard_series() -> BTreeSet<String> {
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut series = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let mut rest = expr;
            while let Some(start) = rest.find("shop_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                rest = &rest[start + name.len()..];
                series.insert(name);
            }
        }
    }
    series
}

/// The series names in an exposition: samples' names, so a histogram counts as its `_bucket`,
/// `_sum` and `_count`.
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_series_the_services_export() {
    let shop = Shop::start().await;
    // One saga of each outcome, so every labelled series has appeared.
    let confirmed = shop.place(&order_body("TEE-001", 1, "card", "DE")).await;
    let cancelled = shop.place(&order_body("TEE-001", 1, "card", "AQ")).await;
    shop.settled_order(confirmed).await;
    shop.settled_order(cancelled).await;

    let mut available = BTreeSet::new();
    for service in &shop.services {
        let text = metrics_text(&shop.http, &service.url).await;
        available.extend(exported(&text));
    }
    let queried = dashboard_series();
    assert!(queried.len() >= 8, "the dashboard queries {queried:?}");
    let missing: Vec<_> = queried.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series nobody exports: {missing:?}\nexported: {available:?}"
    );
    shop.stop().await;
}

#[test]
fn prometheus_scrapes_every_service_where_compose_runs_it_in_each_style() {
    for (file, style) in PROMETHEUS {
        let text = std::fs::read_to_string(file).expect("the Prometheus configuration");
        let config: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
        let job = &config["scrape_configs"][0];
        assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
        // Every replica: a DNS name per service (all its replicas' addresses) and its port.
        let targets: BTreeSet<String> = job["dns_sd_configs"]
            .as_sequence()
            .expect("dns_sd_configs")
            .iter()
            .flat_map(|group| {
                let port = group["port"].as_u64().unwrap_or_default();
                group["names"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |name| Some(format!("{}:{port}", name.as_str()?)))
            })
            .collect();
        let expected: BTreeSet<String> = SERVICES
            .iter()
            .filter(|s| s.runs_in(style))
            // Each on its management port, where a scrape never waits behind customers.
            .map(|s| format!("{}:9000", s.name))
            .collect();
        assert_eq!(targets, expected, "{file}");
    }
    let orchestrated = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.orchestration.yml"
    ))
    .expect("the override");
    assert!(
        orchestrated.contains(
            "./deploy/prometheus/prometheus.orchestration.yml:/etc/prometheus/prometheus.yml:ro"
        ),
        "the orchestrated compose mounts its Prometheus configuration"
    );
}
