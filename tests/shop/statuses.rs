//! The customer reads the same answers in both styles (docs/choosing.md, "Who owns each
//! fact"): for every story the order's timeline shows the same statuses in the same order, and
//! an order held at a step reads the same in `GET /orders/{id}` and in `GET /orders`. Each test
//! runs its story in the choreography, then orchestrated, and checks both against the one list.

use serde_json::{Value, json};
use service_kit::{Config, Style};
use shop_tests::{Shop, eventually, order_body};
use uuid::Uuid;

const STYLES: [Style; 2] = [Style::Choreography, Style::Orchestration];

/// What the order's timeline shows: the status (and whether settled) beside each message that
/// changed it, in the timeline's order.
async fn statuses(shop: &Shop, order_id: Uuid) -> Vec<(String, bool)> {
    let url = format!("{}/orders/{order_id}/timeline", shop.url("orders"));
    shop.get_json(&url)
        .await
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|entry| {
            let status = entry["status"].as_str()?.to_owned();
            Some((status, entry["settled"].as_bool().unwrap_or(false)))
        })
        .collect()
}

/// `(status, settled)` pairs, as a test writes them.
fn expected(statuses: &[(&str, bool)]) -> Vec<(String, bool)> {
    statuses
        .iter()
        .map(|(status, settled)| ((*status).to_owned(), *settled))
        .collect()
}

/// How each story ends: once the order is settled, its timeline shows `want`, and the audit
/// finds every invariant holding.
async fn ends_reading(shop: Shop, style: Style, order_id: Uuid, want: &[(&str, bool)]) {
    shop.settled_order(order_id).await;
    assert_eq!(statuses(&shop, order_id).await, expected(want), "{style:?}");
    shop.audit_and_stop().await;
}

/// Places `body` in a shop of each style and checks the statuses it settles through.
async fn settles_through(body: Value, want: &[(&str, bool)]) {
    for style in STYLES {
        let shop = Shop::start_in(style).await;
        let order_id = shop.place(&body).await;
        ends_reading(shop, style, order_id, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_story_reads_the_same_in_both_styles() {
    settles_through(
        order_body("MUG-001", 2, "card", "GB"),
        &[
            ("pending", false),
            ("paid", false),
            ("stock_reserved", false),
            ("confirmed", true),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_story_reads_the_same_in_both_styles() {
    let declined = order_body("TEE-001", 1, "card_declined", "US");
    settles_through(
        declined,
        &[
            ("pending", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
    let mut out_of_stock = order_body("MUG-001", 3, "card", "GB");
    out_of_stock["items"] =
        json!([{ "sku": "MUG-001", "quantity": 3 }, { "sku": "HOODIE-001", "quantity": 11 }]);
    settles_through(
        out_of_stock,
        &[
            ("pending", false),
            ("paid", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
    settles_through(
        order_body("BOOK-001", 2, "card", "AQ"),
        &[
            ("pending", false),
            ("paid", false),
            ("stock_reserved", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
}

/// What the customer reads of one order: its status from `GET /orders/{id}` and from
/// `GET /orders`.
async fn reads(shop: &Shop, order_id: Uuid) -> (Value, Option<Value>) {
    let one = shop.order(order_id).await["status"].clone();
    let listed = shop
        .get_json(&format!("{}/orders", shop.url("orders")))
        .await
        .as_array()
        .expect("a list")
        .iter()
        .find(|order| order["order_id"] == json!(order_id))
        .map(|order| order["status"].clone());
    (one, listed)
}

/// Waits until the customer reads `status`, from both.
async fn until_it_reads(shop: &Shop, order_id: Uuid, status: &str) {
    eventually(&format!("order {order_id} reads {status}"), || async {
        reads(shop, order_id).await == (json!(status), Some(json!(status)))
    })
    .await;
}

/// The steps of the money flow, each held by stopping the service that takes the next one.
const HELD_AT: [(&str, &str); 3] = [
    ("pending", "payment"),
    ("paid", "inventory"),
    ("stock_reserved", "shipping"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_held_at_each_step_reads_that_step_in_both_styles() {
    for style in STYLES {
        let mut shop = Shop::start_in(style).await;
        for (_, next) in HELD_AT {
            shop.stop_service(next).await;
        }
        let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
        for (status, next) in HELD_AT {
            until_it_reads(&shop, order_id, status).await;
            shop.start_service(next).await;
        }
        until_it_reads(&shop, order_id, "confirmed").await;
        shop.audit_and_stop().await;
    }
}

/// The customer cancels an order held at `step`: the same statuses in both styles, up to the
/// step, then cancelled, then settled once the held service is back.
async fn cancelled_at(step: usize, want: &[(&str, bool)]) {
    for style in STYLES {
        let mut shop = Shop::start_in(style).await;
        let (held_at, held) = HELD_AT[step];
        shop.stop_service(held).await;
        let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
        until_it_reads(&shop, order_id, held_at).await;
        let cancel = format!("{}/orders/{order_id}/cancel", shop.url("orders"));
        let response = shop.http.post(cancel).send().await.expect("reachable");
        assert_eq!(response.status(), 202, "{style:?}");
        shop.start_service(held).await;
        ends_reading(shop, style, order_id, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_pending_reads_the_same_in_both_styles() {
    cancelled_at(
        0,
        &[
            ("pending", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_when_paid_reads_the_same_in_both_styles() {
    cancelled_at(
        1,
        &[
            ("pending", false),
            ("paid", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_with_stock_reserved_reads_the_same_in_both_styles() {
    cancelled_at(
        2,
        &[
            ("pending", false),
            ("paid", false),
            ("stock_reserved", false),
            ("cancelled", false),
            ("cancelled", true),
        ],
    )
    .await;
}

fn short_deadline(config: &mut Config) {
    config.set_var("ORDER_DEADLINE_MS", "1000");
}

/// Expired with payment stopped: only orders is told the deadline; in both styles it is kept
/// and read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_order_reads_the_same_in_both_styles() {
    for style in STYLES {
        let mut shop = Shop::start_in(style).await;
        shop.stop_service("orders").await;
        shop.start_service_with("orders", short_deadline).await;
        shop.stop_service("payment").await;
        let order_id = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
        until_it_reads(&shop, order_id, "cancelled").await;
        assert_eq!(
            shop.order(order_id).await["cancellation_reason"],
            "deadline_exceeded",
            "{style:?}"
        );
        shop.start_service("payment").await;
        let want = [
            ("pending", false),
            ("cancelled", false),
            ("cancelled", true),
        ];
        ends_reading(shop, style, order_id, &want).await;
    }
}
