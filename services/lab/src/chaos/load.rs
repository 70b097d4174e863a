//! The load: orders at a steady rate, each POST retried with its Idempotency-Key until
//! accepted, some cancelled by their customer right after.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::Value;
use shop::issuer::DevIssuer;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::options::*;
use super::verdict::*;
use crate::harness::{self};

/// What the load does with its `i`th order after placing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Wait,
    /// The customer cancels at once: cancelled (`202`), or too late (`409`: confirmed).
    Cancel,
}

/// The load's `i`th order: half buy the confirming SKU, an eighth are declined, an eighth are
/// cancelled by their customer right after placing them, a quarter go to a country nobody
/// ships to (a BOOK-001, whose 25 units may all be held by such orders still in flight, so the
/// stock reservation may fail first: both are right).
pub(super) fn order_body(i: usize) -> (Value, Expected, Then) {
    let (sku, method, country, expected, then) = match i % 8 {
        0 | 1 | 4 | 5 => (
            CONFIRMING_SKU,
            "card",
            "NL",
            Expected::ConfirmedWhileStockLasts,
            Then::Wait,
        ),
        2 => (
            "MUG-001",
            "card_declined",
            "GB",
            Expected::Cancelled(&["payment failed"]),
            Then::Wait,
        ),
        6 => (
            "MUG-001",
            "card",
            "GB",
            Expected::ConfirmedOrCancelledByCustomer,
            Then::Cancel,
        ),
        _ => (
            "BOOK-001",
            "card",
            "AQ",
            Expected::Cancelled(&["shipment failed", "stock reservation failed"]),
            Then::Wait,
        ),
    };
    let body = harness::order_body(&format!("chaos-{i}"), sku, 1, method, country);
    (body, expected, then)
}

/// The broker-restart probe: a SKU the load does not buy, so it is confirmed whatever the
/// load has sold.
pub(super) fn probe_body() -> (Value, Expected) {
    let body = harness::order_body("chaos-probe", "TEE-001", 1, "card", "NL");
    (body, Expected::Confirmed)
}

/// Step 2: the load, at a steady rate, each order retried with its key until accepted.
pub(super) async fn place_orders(
    http: reqwest::Client,
    issuer: Arc<DevIssuer>,
    orders_urls: Vec<String>,
    key_prefix: String,
    options: &ChaosOptions,
    journal: Journal,
) -> Vec<Placed> {
    let placed: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(64));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    let mut tasks = Vec::new();
    for i in 0..options.orders {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await;
        let placed = placed.clone();
        let key = format!("{key_prefix}-{i}");
        // Round robin over the orders replicas; a retry goes to the next one.
        let (http, issuer, mut orders_urls) = (http.clone(), issuer.clone(), orders_urls.clone());
        let replicas = orders_urls.len().max(1);
        orders_urls.rotate_left(i % replicas);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (body, mut expected, then) = order_body(i);
            let placed_order = match harness::token_for(&issuer, &body) {
                Ok(token) => place(&http, &orders_urls, &key, &body, &token).await,
                Err(e) => Err(e.into()),
            };
            match placed_order {
                Ok((order_id, tries)) => {
                    if then == Then::Cancel {
                        expected = cancel(&http, &orders_urls, order_id).await;
                    }
                    placed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Placed {
                            order_id,
                            expected,
                            tries,
                        });
                }
                Err(e) => journal.note(format!("LOST order {key}: {e}")),
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    let placed = placed.lock().unwrap_or_else(PoisonError::into_inner);
    placed.clone()
}

/// Asks to cancel the order until orders answers (a cancel is idempotent, so retrying is safe);
/// the outcome its answer commits the order to.
pub(super) async fn cancel(
    http: &reqwest::Client,
    orders_urls: &[String],
    order_id: Uuid,
) -> Expected {
    for attempt in 0..50 {
        let Some(orders_url) = orders_urls.get(attempt % orders_urls.len().max(1)) else {
            break;
        };
        let response = http
            .post(format!("{orders_url}/orders/{order_id}/cancel"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response.map(|r| r.status().as_u16()) {
            Ok(200 | 202) => return Expected::Cancelled(&[CUSTOMER_REQUEST]),
            Ok(409) => return Expected::Confirmed,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Expected::ConfirmedOrCancelledByCustomer
}

/// POSTs until the order is accepted, as its customer (`token`), with the same key every time,
/// trying the orders replicas in turn; `(order id, tries)`.
pub(super) async fn place(
    http: &reqwest::Client,
    orders_urls: &[String],
    key: &str,
    body: &Value,
    token: &str,
) -> anyhow::Result<(Uuid, u32)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut tries = 0;
    loop {
        let Some(orders_url) = orders_urls.get(tries as usize % orders_urls.len().max(1)) else {
            bail!("no orders replica to place order {key} with");
        };
        tries += 1;
        let response = http
            .post(format!("{orders_url}/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = response
            && response.status() == 202
            && let Ok(placed) = response.json::<Value>().await
            && let Some(id) = placed["order_id"].as_str().and_then(|id| id.parse().ok())
        {
            return Ok((id, tries));
        }
        if Instant::now() > deadline {
            bail!("order {key} not accepted after {tries} tries");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How orders says the order ended (`None` if it does not know the order).
pub(super) async fn order_ended(
    http: &reqwest::Client,
    orders_url: &str,
    order_id: Uuid,
) -> Option<Ended> {
    let response = http
        .get(format!("{orders_url}/orders/{order_id}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let order: Value = response.json().await.ok()?;
    Some(Ended {
        status: order["status"].as_str()?.to_owned(),
        reason: order["cancellation_reason"].as_str().map(str::to_owned),
    })
}
