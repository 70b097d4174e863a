//! A database per service: payment, inventory and shipping keep their schemas on a second
//! Postgres server (a cluster this test creates on this machine with Debian's
//! `pg_createcluster`, on a free port, and drops afterwards), orders, notifications and the
//! console on the first. The happy path, a failure path with its compensations, and the audit,
//! which reads each service's schema from its own server, all pass.

use std::process::Command;

use serde_json::json;
use shop::audit::{self, Databases};
use shop_tests::{Shop, amqp_url, order_body};
use sqlx::{Connection, PgConnection, PgPool};

/// Services whose schema lives on the second server.
const ON_THE_SECOND: [&str; 3] = ["payment", "inventory", "shipping"];

/// A Postgres cluster of this machine's version, trusted on 127.0.0.1, dropped when done.
struct SecondCluster {
    version: String,
    name: String,
    port: u16,
}

impl SecondCluster {
    fn create() -> Self {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("Debian's Postgres (/etc/postgresql)")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max()
            .expect("a Postgres version");
        let port = shop::fleet::free_port().expect("a free port");
        let name = format!("shop_test_{port}");
        let run = |program: &str, args: &[&str]| {
            let output = Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e} (Debian's postgresql-common)"));
            assert!(
                output.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let port_text = port.to_string();
        run(
            "pg_createcluster",
            &[&version, &name, "-p", &port_text, "--", "--auth=trust"],
        );
        run(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, &name, "start"],
        );
        Self {
            version,
            name,
            port,
        }
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for SecondCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_and_audits_across_two_postgres_servers() {
    let second = SecondCluster::create();
    let mut admin = PgConnection::connect(&second.admin_url())
        .await
        .expect("the second server answers");
    let mut shop = Shop::start_only(&[]).await;
    let database = shop.env.database.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("a database on the second server");
    let second_url = service_kit::config::with_database(&second.admin_url(), &database);

    for name in shop::registry::names_in(service_kit::Style::Choreography) {
        if ON_THE_SECOND.contains(&name) {
            shop.start_service_on(name, &second_url).await;
        } else {
            shop.start_service(name).await;
        }
    }

    let confirmed = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    let unshippable = shop.place(&order_body("BOOK-001", 1, "card", "AQ")).await;
    assert_eq!(shop.settled_order(confirmed).await["status"], "confirmed");
    let cancelled = shop.settled_order(unshippable).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        cancelled["cancellation_reason"],
        json!("shipment failed: no carrier serves AQ")
    );

    // Each schema is where it was put, and only there.
    let second_pool = PgPool::connect(&second_url).await.expect("second pool");
    for schema in shop::registry::names_in(service_kit::Style::Choreography) {
        let on_first: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&shop.env.pool)
                .await
                .expect("first server");
        let on_second: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&second_pool)
                .await
                .expect("second server");
        let second_expected = ON_THE_SECOND.contains(&schema);
        assert_eq!(
            (on_first, on_second),
            (!second_expected, second_expected),
            "{schema}"
        );
    }

    let databases = Databases::per_service(|service| {
        if ON_THE_SECOND.contains(&service) {
            second_pool.clone()
        } else {
            shop.env.pool.clone()
        }
    });
    let amqp = amqp_url();
    let broker = audit::Broker {
        amqp_url: &amqp,
        namespace: &shop.env.namespace,
    };
    let report = audit::audit_until_clean(&databases, Some(&broker), shop_tests::PATIENCE)
        .await
        .expect("the auditor runs");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.confirmed, report.cancelled), (1, 1));
    // The audit reads across the servers: a refund the first server cannot see is checked.
    sqlx::query("UPDATE payment.payments SET status = 'charged' WHERE status = 'refunded'")
        .execute(&second_pool)
        .await
        .expect("tamper");
    let tampered = audit::audit(&databases, None).await.expect("audit");
    assert!(
        audit::orders_named(&tampered).contains(&unshippable),
        "{tampered}"
    );

    second_pool.close().await;
    for service in shop::registry::names_in(service_kit::Style::Choreography) {
        shop.stop_service(service).await;
    }
    shop.stop().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
}
