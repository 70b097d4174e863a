//! The Orders HTTP API: bad input gets a 4xx JSON error and changes nothing (no order, no
//! outbox row, no event); `Idempotency-Key` makes a retried POST return the same order.

use serde_json::{Value, json};
use shop_tests::{Shop, order_body, token};

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
        // An order is placed for the caller; naming anyone else is refused.
        (
            "someone else's customer_id",
            with(&["customer_id"], json!("bob")),
            403,
            "forbidden",
        ),
        (
            "empty customer",
            with(&["customer_id"], json!("")),
            403,
            "forbidden",
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
        ("NUL in a SKU", &["items", "0", "sku"][..]),
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
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}: an RFC 9457 problem"
        );
        let error: Value = response.json().await.expect("JSON error body");
        assert_eq!(error["error"], code, "{case}: {error}");
        assert_eq!(error["status"], status, "{case}: {error}");
        assert!(
            error["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!("problems/{code}"))),
            "{case}: {error}"
        );
        assert!(
            error["title"].as_str().is_some_and(|t| !t.is_empty())
                && error["detail"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: title and detail"
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

    // A key is its customer's own: another customer sending it places an order of their own,
    // neither refused as a reuse nor answered with this customer's order.
    let mut other = order_body("BOOK-001", 2, "card", "FR");
    other["customer_id"] = "bob".into();
    let bobs = shop
        .http
        .post(&url)
        .header("authorization", format!("Bearer {}", token("bob", false)))
        .header("idempotency-key", "retry-me")
        .json(&other)
        .send()
        .await
        .expect("reachable");
    assert_eq!(bobs.status(), 202);
    assert!(bobs.headers().get("idempotent-replayed").is_none());
    assert_ne!(
        bobs.json::<Value>().await.expect("JSON")["order_id"],
        first["order_id"]
    );

    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 3);
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.outbox WHERE event_type = 'OrderPlaced'")
            .await,
        3
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_sheds_new_orders_with_retry_after_until_it_drains() {
    // Only orders runs: nothing it accepts can settle, so the backlog only grows. Every queue
    // is declared first (as `shop up` does), so the others find those orders when they start.
    let mut shop = Shop::start_with(&["orders"], |config| {
        config.set_var("MAX_PENDING_ORDERS", "3")
    })
    .await;
    let config = shop.env.config();
    shop::provision::declare_topologies(
        &config.amqp_url,
        &config.namespace,
        config.style,
        &config.retry_delays,
        config.history,
    )
    .await
    .expect("every queue declared");
    let (http, url) = (shop.http.clone(), format!("{}/orders", shop.url("orders")));
    let post = move |key: String| {
        http.post(&url)
            .header("idempotency-key", key)
            .json(&order_body("MUG-001", 1, "card", "GB"))
            .send()
    };
    for i in 0..3 {
        let accepted = post(format!("within-{i}")).await.expect("reachable");
        assert_eq!(accepted.status(), 202);
    }

    let shed = post("one-too-many".to_owned()).await.expect("reachable");
    assert_eq!(shed.status(), 503);
    assert_eq!(
        shed.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let error: Value = shed.json().await.expect("a JSON error");
    assert_eq!(error["error"], "overloaded", "{error}");
    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 3);
    assert_eq!(
        shop_tests::metric(&shop.http, &shop.url("orders"), "shop_orders_shed_total").await,
        1
    );
    // An order already accepted is still answered: its retry is a replay, not a new order.
    let replay = post("within-0".to_owned()).await.expect("reachable");
    assert_eq!(replay.status(), 202);

    // The rest of the shop comes up, the backlog settles, and the shed request's retry (same
    // key) is a fresh attempt that goes through.
    for name in ["payment", "inventory", "shipping", "notifications"] {
        shop.start_service(name).await;
    }
    let deadline = tokio::time::Instant::now() + shop_tests::PATIENCE;
    let order_id: uuid::Uuid = loop {
        let response = post("one-too-many".to_owned()).await.expect("reachable");
        if response.status() == 202 {
            let placed: Value = response.json().await.expect("JSON");
            break placed["order_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("the accepted order's id");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry is still shed after the backlog had time to drain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(shop.settled_order(order_id).await["status"], "confirmed");
    shop.audit_and_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offered_far_more_than_it_settles_the_shop_sheds_some_and_settles_every_order_it_accepted()
{
    let shop = Shop::start_in_with(service_kit::Style::Choreography, |config| {
        config.set_var("MAX_PENDING_ORDERS", "10");
    })
    .await;
    let url = format!("{}/orders", shop.url("orders"));
    let answers = futures_util::future::join_all((0..150).map(|i| {
        shop.http
            .post(&url)
            .json(&order_body(
                ["MUG-001", "TEE-001", "STICKER-001"][i % 3],
                1,
                "card",
                "NL",
            ))
            .send()
    }))
    .await;
    let (mut accepted, mut shed) = (Vec::new(), 0);
    for answer in answers {
        let response = answer.expect("reachable");
        match response.status().as_u16() {
            202 => accepted.push(
                response.json::<Value>().await.expect("JSON")["order_id"]
                    .as_str()
                    .and_then(|id| id.parse::<uuid::Uuid>().ok())
                    .expect("an order id"),
            ),
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "150 at once against a bound of 10: some are shed");
    assert!(!accepted.is_empty(), "and some accepted");
    for order_id in &accepted {
        shop.settled_order(*order_id).await;
    }
    let report = shop.assert_audit_clean().await;
    assert_eq!(
        report.orders,
        accepted.len() as i64,
        "only accepted orders exist"
    );
    shop.stop().await;
}

/// Generated `POST /orders` bodies, valid and not, against an oracle written from the API's
/// documented rules (not from its code): never a 5xx, and accepted exactly when valid.
mod generated {
    use serde_json::{Value, json};
    use shop_tests::TEST_CUSTOMER;

    const SKUS: [&str; 5] = [
        "MUG-001",
        "TEE-001",
        "BOOK-001",
        "STICKER-001",
        "HOODIE-001",
    ];
    const MAX_TEXT: usize = 200;

    pub fn text(rng: &mut fastrand::Rng) -> Value {
        let choices: [&dyn Fn(&mut fastrand::Rng) -> String; 9] = [
            &|_| String::new(),
            &|_| "   ".to_owned(),
            &|rng| format!("ada-{}", rng.u32(..)),
            &|_| "Zoë Ångström 東京 🚀 \"quoted\" \\ back".to_owned(),
            &|_| "x".repeat(MAX_TEXT),
            &|_| "x".repeat(MAX_TEXT + 1),
            &|_| "nul\u{0}inside".to_owned(),
            &|_| "bell\u{7}tab\t".to_owned(),
            &|_| "  padded  ".to_owned(),
        ];
        Value::String(choices[rng.usize(..choices.len())](rng))
    }

    fn sku(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(..10) {
            0 => text(rng),
            1 => json!(format!(" {} ", SKUS[rng.usize(..SKUS.len())])),
            2 => json!("NOPE-404"),
            3 => json!(42),
            _ => json!(SKUS[rng.usize(..SKUS.len())]),
        }
    }

    fn quantity(rng: &mut fastrand::Rng) -> Value {
        [
            json!(1),
            json!(2),
            json!(1000),
            json!(1001),
            json!(0),
            json!(-1),
            json!(1_u64 << 40),
            json!("two"),
            json!(1.5),
            json!(null),
        ][rng.usize(..10)]
        .clone()
    }

    pub fn body(rng: &mut fastrand::Rng) -> Value {
        let items: Vec<Value> = (0..rng.usize(0..4))
            .map(|_| json!({ "sku": sku(rng), "quantity": quantity(rng) }))
            .collect();
        let countries = [
            json!("GB"),
            json!("nl"),
            json!(" gb "),
            json!("XX"),
            json!(""),
            json!(7),
        ];
        let country = countries[rng.usize(..countries.len())].clone();
        let methods = [
            json!("card"),
            json!("card_declined"),
            json!("iou"),
            json!(null),
        ];
        let method = methods[rng.usize(..methods.len())].clone();
        let mut address = json!({
            "name": if rng.bool() { json!("Ada Lovelace") } else { text(rng) },
            "line1": if rng.bool() { json!("12 St James's Square") } else { text(rng) },
            "city": if rng.bool() { json!("London") } else { text(rng) },
            "postal_code": if rng.bool() { json!("SW1Y 4JH") } else { text(rng) },
            "country": country,
        });
        if rng.u8(..10) == 0 {
            address.as_object_mut().map(|a| a.remove("city"));
        }
        let mut body = json!({
            "customer_id": if rng.bool() { json!(TEST_CUSTOMER) } else { text(rng) },
            "items": items,
            "payment_method": method,
            "shipping_address": address,
        });
        if body["payment_method"].is_null() {
            body.as_object_mut().map(|b| b.remove("payment_method"));
        }
        body
    }

    fn good_text(value: &Value) -> bool {
        value.as_str().is_some_and(|s| {
            let trimmed = s.trim();
            !trimmed.is_empty() && trimmed.len() <= MAX_TEXT && !s.contains('\u{0}')
        })
    }

    /// The documented rules: every field present and of its type; text 1–200 bytes once
    /// trimmed and free of NUL; 1–50 items of catalog SKUs, each once, 1–1000 of each; a known
    /// payment method (default card); an ISO country code.
    pub fn valid(body: &Value) -> bool {
        let address = &body["shipping_address"];
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let mut skus = std::collections::BTreeSet::new();
        let items_ok = !items.is_empty()
            && items.iter().all(|item| {
                let sku_ok = item["sku"]
                    .as_str()
                    .is_some_and(|s| SKUS.contains(&s.trim()) && skus.insert(s.trim().to_owned()));
                let quantity_ok = item["quantity"]
                    .as_i64()
                    .is_some_and(|q| (1..=1000).contains(&q));
                sku_ok && quantity_ok
            });
        let payment_ok = match body.get("payment_method") {
            None => true,
            Some(method) => method == "card" || method == "card_declined",
        };
        let country_ok = address["country"]
            .as_str()
            .is_some_and(|c| ["GB", "NL"].contains(&c.trim().to_uppercase().as_str()));
        // The order is the caller's: a customer_id, sent, must be theirs.
        body["customer_id"]
            .as_str()
            .is_some_and(|c| c.trim() == TEST_CUSTOMER)
            && items_ok
            && payment_ok
            && ["name", "line1", "city", "postal_code"]
                .iter()
                .all(|field| good_text(&address[*field]))
            && country_ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_orders_never_get_a_5xx_and_are_accepted_exactly_when_valid() {
    let shop = Shop::start_only(&["orders"]).await;
    let seed = std::env::var("ORDERS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut accepted = 0;
    for case in 0..200 {
        let body = generated::body(&mut rng);
        let response = shop.place_order(&body).await;
        let status = response.status().as_u16();
        assert!(
            status < 500,
            "case {case} (ORDERS_SEED={seed}): {status} for {body}"
        );
        let expected = if generated::valid(&body) { 202 } else { 422 };
        let verdict = if status == 202 { 202 } else { 422 };
        assert_eq!(
            verdict, expected,
            "case {case} (ORDERS_SEED={seed}): {status} for {body}"
        );
        if status == 202 {
            accepted += 1;
        } else {
            let error: Value = response.json().await.expect("a JSON error");
            assert!(error["error"].is_string(), "case {case}: {error}");
        }
    }
    assert_eq!(
        shop.count("SELECT count(*) FROM orders.orders").await,
        accepted,
        "ORDERS_SEED={seed}: exactly the accepted orders were written"
    );
    shop.stop().await;
}
