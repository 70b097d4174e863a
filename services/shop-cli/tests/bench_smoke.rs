//! `shop bench`, run as a user runs it, briefly: it starts its own shop, loads it, measures the
//! machine's ceilings and prints its figures as one JSON object on the last line of stdout.
//! Only that it ran and reported is asserted; how fast is for the benchmark to say, not a test.

mod support;

use serde_json::Value;

#[test]
fn a_short_bench_runs_and_prints_its_figures_as_json() {
    let output = support::run_shop(&["bench", "--rate", "20", "--duration", "3", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let figures: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));

    assert_eq!(figures["run"]["sent"], 60, "{figures}");
    assert!(
        figures["settled_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{figures}"
    );
    for quantile in ["p50", "p90", "p99", "max"] {
        assert!(
            figures["latency_ms"][quantile]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{quantile}: {figures}"
        );
    }
    let services = figures["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "inventory",
            "notifications",
            "orders",
            "payment",
            "shipping"
        ],
        "the shop's own services only"
    );
    for (name, service) in services {
        assert!(service["cpu_pct"].is_number(), "{name}: {service}");
        assert!(
            service["rss_mib"].as_f64().is_some_and(|mib| mib > 0.0),
            "{name}: {service}"
        );
    }
    // Every service that consumes reports its batches: at 20 orders/s mostly of one.
    let batch = figures["batch"].as_object().expect("batch");
    for name in [
        "inventory",
        "notifications",
        "orders",
        "payment",
        "shipping",
    ] {
        let b = &batch[name];
        assert!(
            b["batches"].as_u64().is_some_and(|n| n > 0)
                && b["mean"].as_f64().is_some_and(|m| m >= 1.0)
                && b["max"].as_f64() >= b["p50"].as_f64(),
            "{name}: {b}"
        );
    }
    for process in ["rabbitmq", "postgres"] {
        assert!(
            figures["infrastructure"][process]["cpu_pct"].is_number(),
            "{process}: {figures}"
        );
    }
    for ceiling in ["broker_msgs_per_s", "db_tx_per_s"] {
        assert!(
            figures["ceiling"][ceiling]
                .as_f64()
                .is_some_and(|r| r > 0.0),
            "{ceiling}: {figures}"
        );
    }
}

#[test]
fn a_short_history_bench_reports_the_live_path_both_ways_the_bytes_and_the_catch_ups() {
    let output = support::run_shop(&[
        "bench",
        "--history",
        "--rate",
        "10",
        "--duration",
        "2",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let figures: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));

    let rounds = figures["rounds"].as_array().expect("rounds");
    let bound: Vec<bool> = rounds
        .iter()
        .map(|round| round["history_bound"] == true)
        .collect();
    assert_eq!(bound, [false, true, false, true], "{figures}");
    for round in rounds {
        assert!(
            round["settled_per_s"].as_f64().is_some_and(|r| r > 0.0)
                && round["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{round}"
        );
    }
    // Only the bound rounds' orders are in the history: 2 rounds of 20.
    let stored = &figures["stored"];
    assert_eq!(stored["orders"], 40, "{stored}");
    assert!(
        stored["body_bytes_per_order"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{stored}"
    );
    let events = stored["events"].as_u64().expect("events");
    let catch_ups = figures["catch_ups"].as_array().expect("catch-ups");
    let listeners: Vec<&str> = catch_ups
        .iter()
        .filter_map(|c| c["listener"].as_str())
        .collect();
    assert_eq!(listeners, ["console", "sales"]);
    for catch_up in catch_ups {
        assert_eq!(catch_up["events_read"], events, "{catch_up}");
        assert!(
            catch_up["events_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{catch_up}"
        );
    }
}
