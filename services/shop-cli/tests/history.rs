//! `shop history` and `shop replay`, run as a user would against a shop of processes: an
//! order's story read from the broker's log matches what the services announced, and the
//! console, after losing its schema, is rebuilt from that log.

use std::{collections::BTreeSet, panic::AssertUnwindSafe, process::Command, time::Duration};

use futures_util::FutureExt;
use serde_json::Value;
use service_kit::Style;
use shop_lab::{harness, process_shop::ProcessShop};
use sqlx::PgPool;
use uuid::Uuid;

#[path = "support/processes.rs"]
mod processes;
use processes::start_shop;

const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `shop <args>` in the shop's namespace and database; its standard output.
fn shop_command(shop: &ProcessShop, args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .env("AMQP_URL", &shop.sandbox.amqp_url)
        .env("DATABASE_URL", &shop.sandbox.database_url)
        .env("SHOP_NAMESPACE", &shop.sandbox.namespace)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|e| format!("shop {args:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "shop {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout)
}

/// Places an order and waits until orders has settled it (read from its database).
async fn settled_order(shop: &ProcessShop, database: &PgPool) -> Result<Uuid, String> {
    let orders = shop.orders_urls().into_iter().next().ok_or("no orders")?;
    let body = harness::order_body("cust-history", "MUG-001", 1, "card", "GB");
    let placed: Value = reqwest::Client::new()
        .post(format!("{orders}/orders"))
        .bearer_auth(harness::token_for(&shop.issuer, &body).map_err(|e| e.to_string())?)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let order_id: Uuid = placed["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or(format!("no order id in {placed}"))?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let settled: Option<bool> =
            sqlx::query_scalar("SELECT settled FROM orders.orders WHERE id = $1")
                .bind(order_id)
                .fetch_optional(database)
                .await
                .map_err(|e| e.to_string())?;
        if settled == Some(true) {
            return Ok(order_id);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("order {order_id} not settled"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the services announced for an order: the message ids of their outboxes.
async fn announced(database: &PgPool, order_id: Uuid) -> Result<BTreeSet<String>, String> {
    let mut ids = BTreeSet::new();
    for schema in ["orders", "payment", "inventory", "shipping"] {
        let rows: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT message_id FROM {schema}.outbox WHERE correlation_id = $1"
        )))
        .bind(order_id)
        .fetch_all(database)
        .await
        .map_err(|e| e.to_string())?;
        ids.extend(rows.iter().map(Uuid::to_string));
    }
    Ok(ids)
}

async fn check(shop: &ProcessShop) -> Result<(), String> {
    let database = PgPool::connect(&shop.sandbox.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(settled_order(shop, &database).await?);
    }

    // The history's story of each order is what the services' outboxes announced.
    let order_id = orders[0].to_string();
    let story: Value =
        serde_json::from_str(&shop_command(shop, &["history", &order_id, "--json"])?)
            .map_err(|e| format!("shop history --json: {e}"))?;
    let told: BTreeSet<String> = story
        .as_array()
        .ok_or("a list")?
        .iter()
        .filter_map(|event| event["message_id"].as_str().map(str::to_owned))
        .collect();
    let expected = announced(&database, orders[0]).await?;
    if told != expected {
        return Err(format!("history {told:?}, outboxes {expected:?}"));
    }
    let table = shop_command(shop, &["history", &order_id])?;
    for event in ["OrderPlaced", "PaymentCompleted", "OrderConfirmed"] {
        if !table.contains(event) {
            return Err(format!("{event} missing from:\n{table}"));
        }
    }

    // The console loses its schema; `shop replay console` rebuilds it from the history.
    sqlx::query("DROP SCHEMA console CASCADE")
        .execute(&database)
        .await
        .map_err(|e| e.to_string())?;
    let replayed = shop_command(shop, &["replay", "console"])?;
    for order_id in &orders {
        let heard: BTreeSet<String> = sqlx::query_scalar::<_, Uuid>(
            "SELECT message_id FROM console.events WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_all(&database)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(Uuid::to_string)
        .collect();
        let expected = announced(&database, *order_id).await?;
        if heard != expected {
            return Err(format!(
                "after `{}` the console heard {heard:?} of {order_id}, the shop announced \
                 {expected:?}",
                replayed.trim()
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_tells_an_orders_story_and_replay_rebuilds_the_console() {
    service_kit::init_logs();
    let shop = start_shop("shop_cli_history", Style::Choreography, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = AssertUnwindSafe(check(&shop)).catch_unwind().await;
    shop.remove().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
