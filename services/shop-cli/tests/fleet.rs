//! The fleet of service processes (`shop up`, the lab, the process-based tests) believes a
//! service is up only when it answers as itself: a process that took its port (another shop's
//! service of the same name) is not it, and a process that exits at start is started again on
//! another port, then reported.

use std::time::Duration;

use axum::{Json, Router, routing::get};
use shop::fleet::{Fleet, FleetError, Identity, Output, Ports, ServiceProcess};

/// A `/readyz` answering as payment of the shop `namespace`, on a port of its own.
async fn payment_of(namespace: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("bound").port();
    let readyz = move || async move {
        Json(serde_json::json!({ "service": "payment", "namespace": namespace, "ready": true }))
    };
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/readyz", get(readyz))).await
    });
    port
}

/// A fleet of the shop `namespace` whose services log into a folder of their own (returned,
/// to be removed after).
fn fleet_of(namespace: &str, env: Vec<(&'static str, String)>) -> (Fleet, std::path::PathBuf) {
    let logs = std::env::temp_dir().join(format!("shop-fleet-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&logs).expect("a log folder");
    let mut all = vec![("SHOP_NAMESPACE", namespace.to_owned())];
    all.extend(env);
    let mut fleet = Fleet::new(
        env!("CARGO_BIN_EXE_shop").as_ref(),
        Ports::Free,
        Output::LogFiles(logs.clone()),
        all,
    );
    fleet.ready_patience = Duration::from_secs(2);
    (fleet, logs)
}

#[tokio::test]
async fn another_shops_service_on_the_port_is_not_taken_for_ours() {
    let http = reqwest::Client::new();
    let port = payment_of("another-shop").await;
    let (mut fleet, logs) = fleet_of("our-shop", vec![]);
    fleet.services.push(ServiceProcess {
        name: "payment",
        replica: 0,
        port,
        child: None,
    });
    match fleet.wait_ready(&http).await {
        Err(FleetError::NotReady { answered, .. }) => assert_eq!(
            answered,
            Some(Identity {
                service: "payment".to_owned(),
                namespace: "another-shop".to_owned(),
                ready: true,
            }),
            "it says who answered instead"
        ),
        other => panic!("another shop's payment taken for ours: {other:?}"),
    }

    let ours = payment_of("our-shop").await;
    fleet.services[0].port = ours;
    fleet.wait_ready(&http).await.expect("our own payment");
    let _ = std::fs::remove_dir_all(logs);
}

#[tokio::test]
async fn a_service_that_exits_at_start_is_tried_again_on_other_ports_then_reported() {
    let http = reqwest::Client::new();
    // A setting it refuses: each process stops at once, as one whose port was taken does.
    let (mut fleet, logs) = fleet_of("our-shop", vec![("AMQP_HEARTBEAT_SECS", "0".to_owned())]);
    let started = fleet.start(&http, 1, |name| name == "payment").await;
    match started {
        Err(FleetError::Exited { what, tries, .. }) => {
            assert_eq!((what.as_str(), tries), ("payment", 3));
        }
        other => panic!("a payment that cannot start was not reported: {other:?}"),
    }
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(logs);
}
