//! The Orders HTTP API: bad input gets a 4xx JSON error and changes nothing (no order, no
//! outbox row, no event); `Idempotency-Key` makes a retried POST return the same order.

use serde_json::{Value, json};
use shop_tests::{Shop, order_body};

async fn assert_nothing_happened(shop: &Shop) {
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.orders").await,
        0,
        "no order written"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.order_items").await,
        0,
        "no item written"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.outbox").await,
        0,
        "no event recorded"
    );
    // Anything that had been recorded would be published within a sweep; give it one.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(shop.spy.all().is_empty(), "no event published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_get_a_json_error_and_change_nothing() {
    let shop = Shop::start_only(&["orders"]).await;
    let url = format!("{}/orders", shop.url("orders"));
    let valid = order_body("MUG-001", 1, "card", "GB");
    let with = |path: &[&str], value: Value| {
        let mut body = valid.clone();
        let (last, parents) = path.split_last().expect("a path");
        let mut target = &mut body;
        for key in parents {
            target = if let Ok(i) = key.parse::<usize>() {
                &mut target[i]
            } else {
                &mut target[*key]
            };
        }
        target[*last] = value;
        body
    };
    let many_items: Vec<Value> = (0..51)
        .map(|i| json!({ "sku": format!("SKU-{i}"), "quantity": 1 }))
        .collect();

    let mut json_cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown SKU",
            with(&["items", "0", "sku"], json!("NOPE-404")),
            422,
            "unknown_sku",
        ),
        (
            "zero quantity",
            with(&["items", "0", "quantity"], json!(0)),
            422,
            "invalid_quantity",
        ),
        (
            "negative quantity",
            with(&["items", "0", "quantity"], json!(-2)),
            422,
            "invalid_quantity",
        ),
        (
            "huge quantity",
            with(&["items", "0", "quantity"], json!(1_000_000)),
            422,
            "invalid_quantity",
        ),
        (
            "empty item list",
            with(&["items"], json!([])),
            422,
            "empty_items",
        ),
        (
            "oversized item list",
            with(&["items"], json!(many_items)),
            422,
            "too_many_items",
        ),
        (
            "duplicate SKU",
            with(
                &["items"],
                json!([{"sku": "MUG-001", "quantity": 1}, {"sku": "MUG-001", "quantity": 2}]),
            ),
            422,
            "duplicate_sku",
        ),
        (
            "empty customer",
            with(&["customer_id"], json!("")),
            422,
            "invalid_customer_id",
        ),
        (
            "unknown payment method",
            with(&["payment_method"], json!("iou")),
            422,
            "invalid_payment_method",
        ),
        (
            "bad country",
            with(&["shipping_address", "country"], json!("Narnia")),
            422,
            "invalid_country",
        ),
        (
            "empty city",
            with(&["shipping_address", "city"], json!(" ")),
            422,
            "invalid_address",
        ),
        (
            "missing address",
            {
                let mut b = valid.clone();
                b.as_object_mut().map(|o| o.remove("shipping_address"));
                b
            },
            422,
            "invalid_body",
        ),
        (
            "quantity as text",
            with(&["items", "0", "quantity"], json!("two")),
            422,
            "invalid_body",
        ),
    ];
    // Postgres cannot store a NUL in text: every string field refuses it up front.
    for (case, path) in [
        ("NUL in customer_id", &["customer_id"][..]),
        ("NUL in a SKU", &["items", "0", "sku"]),
        ("NUL in payment_method", &["payment_method"]),
        ("NUL in the name", &["shipping_address", "name"]),
        ("NUL in line1", &["shipping_address", "line1"]),
        ("NUL in the city", &["shipping_address", "city"]),
        (
            "NUL in the postal code",
            &["shipping_address", "postal_code"],
        ),
        ("NUL in the country", &["shipping_address", "country"]),
    ] {
        let original = path
            .iter()
            .fold(&valid, |v, key| match key.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[*key],
            })
            .as_str()
            .unwrap_or("x")
            .to_owned();
        json_cases.push((
            case,
            with(path, json!(format!("{original}\u{0}"))),
            422,
            "invalid_body",
        ));
    }
    for (case, body, status, code) in json_cases {
        let response = shop.place_order(&body).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let error: Value = response.json().await.expect("JSON error body");
        assert_eq!(error["error"], code, "{case}: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: message"
        );
    }

    let raw_cases = vec![
        (
            "malformed JSON",
            Some("application/json"),
            b"{\"customer_id\": ".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            Some("text/plain"),
            valid.to_string().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            None,
            valid.to_string().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            Some("application/json"),
            vec![b' '; 65 * 1024],
            413,
            "payload_too_large",
        ),
    ];
    for (case, content_type, body, status, code) in raw_cases {
        let mut request = shop.http.post(&url).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("reachable");
        assert_eq!(response.status().as_u16(), status, "{case}");
        let error: Value = response.json().await.expect("JSON error body");
        assert_eq!(error["error"], code, "{case}: {error}");
    }

    for (path, status, code) in [
        ("/orders/not-a-uuid", 400, "invalid_order_id"),
        (
            "/orders/01a205fb-c1c3-745e-bdf9-3e919a2ad904",
            404,
            "order_not_found",
        ),
    ] {
        let response = shop
            .http
            .get(format!("{}{path}", shop.url("orders")))
            .send()
            .await
            .expect("reachable");
        assert_eq!(response.status().as_u16(), status, "{path}");
        let error: Value = response.json().await.expect("JSON error body");
        assert_eq!(error["error"], code);
    }

    assert_nothing_happened(&shop).await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_with_the_same_idempotency_key_returns_the_same_order() {
    let shop = Shop::start_only(&["orders"]).await;
    let url = format!("{}/orders", shop.url("orders"));
    let body = order_body("BOOK-001", 1, "card", "FR");
    let post = |key: &'static str, body: Value| {
        shop.http
            .post(&url)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };

    let first = post("retry-me", body.clone()).await.expect("reachable");
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("JSON");
    let second = post("retry-me", body.clone()).await.expect("reachable");
    assert_eq!(second.status(), 202);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second: Value = second.json().await.expect("JSON");
    assert_eq!(first["order_id"], second["order_id"]);

    // Concurrent retries race to insert; still one order.
    let racing = futures_util::future::join_all((0..8).map(|_| post("race", body.clone()))).await;
    let ids: std::collections::BTreeSet<String> =
        futures_util::future::join_all(racing.into_iter().map(|r| async {
            let response = r.expect("reachable");
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.expect("JSON")["order_id"].to_string()
        }))
        .await
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 1, "one order for one key");

    let reused = post("retry-me", order_body("BOOK-001", 2, "card", "FR"))
        .await
        .expect("reachable");
    assert_eq!(reused.status(), 422);
    assert_eq!(
        reused.json::<Value>().await.expect("JSON")["error"],
        "idempotency_key_reused"
    );

    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 2);
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.outbox WHERE event_type = 'OrderPlaced'")
            .await,
        2
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_order_list_are_served() {
    let shop = Shop::start_only(&["orders"]).await;
    let products = shop
        .get_json(&format!("{}/products", shop.url("orders")))
        .await;
    let mug = products
        .as_array()
        .and_then(|p| p.iter().find(|p| p["sku"] == "MUG-001"))
        .expect("the mug is in the catalog");
    assert_eq!(mug["price_cents"], 1250);

    let first = shop.place(&order_body("MUG-001", 1, "card", "GB")).await;
    let second = shop.place(&order_body("TEE-001", 3, "card", "US")).await;
    let listed = shop
        .get_json(&format!("{}/orders?limit=10", shop.url("orders")))
        .await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![second.to_string(), first.to_string()],
        "newest first"
    );
    let order = shop.order(second).await;
    assert_eq!(order["total_cents"], 3 * 1999);
    assert_eq!(order["status"], "pending");
    assert_eq!(order["settled"], false);
    assert_eq!(order["payment_method"], "card");
    shop.stop().await;
}
