//! Customers own their orders (OWASP API1, broken object-level authorization, closed): every
//! route of the Orders API and the notifications API, called by two customers and an operator
//! and by every kind of bad token, answers what docs/architecture.md ("The HTTP APIs") says,
//! and a refused call writes and announces nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shop::issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer};
use shop_tests::{Shop, order_body, signed, token};
use uuid::Uuid;

const ADA: &str = "ada";
const BOB: &str = "bob";
const OPERATOR: &str = "ops";

/// Who calls.
#[derive(Debug, Clone, Copy)]
enum As {
    Nobody,
    Expired,
    WrongIssuer,
    WrongAudience,
    WrongKey,
    Customer(&'static str),
    Operator,
}

impl As {
    const REFUSED: [Self; 5] = [
        Self::Nobody,
        Self::Expired,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::WrongKey,
    ];

    fn token(self) -> Option<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = |iss: &str, aud: &str, exp: i64| json!({ "iss": iss, "aud": aud, "sub": ADA, "scope": "shop:operate", "exp": exp });
        match self {
            Self::Nobody => None,
            Self::Expired => Some(signed(&claims(DEV_ISSUER, DEV_AUDIENCE, now - 3600))),
            Self::WrongIssuer => Some(signed(&claims("urn:elsewhere", DEV_AUDIENCE, now + 600))),
            Self::WrongAudience => Some(signed(&claims(DEV_ISSUER, "not-the-shop", now + 600))),
            Self::WrongKey => {
                let stranger = DevIssuer::generate().expect("a key nobody trusts");
                Some(
                    stranger
                        .sign(&claims(DEV_ISSUER, DEV_AUDIENCE, now + 600))
                        .expect("signed"),
                )
            }
            Self::Customer(customer) => Some(token(customer, false)),
            Self::Operator => Some(token(OPERATOR, true)),
        }
    }
}

async fn call(
    shop: &Shop,
    who: As,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    // A client without the tests' default token.
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = who.token() {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{who:?}: {challenge:?}");
    }
    let body = response.json().await.unwrap_or(Value::Null);
    let _ = shop;
    (status.as_u16(), body)
}

/// What the shop has written and announced so far.
async fn footprint(shop: &Shop) -> (i64, i64) {
    (
        shop.count("SELECT count(*) FROM orders.orders").await,
        shop.count("SELECT count(*) FROM orders.outbox").await,
    )
}

fn body_for(customer: &str) -> Value {
    let mut body = order_body("MUG-001", 1, "card", "GB");
    body["customer_id"] = json!(customer);
    body
}

async fn place_as(shop: &Shop, customer: &'static str) -> Uuid {
    let url = format!("{}/orders", shop.url("orders"));
    let (status, placed) = call(
        shop,
        As::Customer(customer),
        Method::POST,
        &url,
        Some(&body_for(customer)),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    placed["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an order id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_documented_and_refusals_change_nothing() {
    let shop = Shop::start_only(&["orders", "notifications"]).await;
    let orders = shop.url("orders");
    let notifications = shop.url("notifications");
    let adas = place_as(&shop, ADA).await;
    let bobs = place_as(&shop, BOB).await;

    let order = format!("{orders}/orders/{adas}");
    let timeline = format!("{order}/timeline");
    let cancel = format!("{order}/cancel");
    let list = format!("{orders}/orders");
    let notices = format!("{notifications}/notifications?order_id={adas}");
    let routes: [(Method, &str, Option<Value>); 6] = [
        (Method::GET, &order, None),
        (Method::GET, &timeline, None),
        (Method::POST, &cancel, Some(json!({}))),
        (Method::GET, &list, None),
        (Method::POST, &list, Some(body_for(ADA))),
        (Method::GET, &notices, None),
    ];

    // No proof, or a false one: 401 everywhere, nothing written or announced.
    let before = footprint(&shop).await;
    for who in As::REFUSED {
        for (method, url, body) in &routes {
            let (status, error) = call(&shop, who, method.clone(), url, body.as_ref()).await;
            assert_eq!(status, 401, "{who:?} {method} {url}: {error}");
            assert!(
                error["error"].is_string(),
                "{who:?} {method} {url}: {error}"
            );
        }
    }
    assert_eq!(
        footprint(&shop).await,
        before,
        "a refused call changed something"
    );

    // Another customer: ada's order does not exist for bob; an order for ada is not his to
    // place; the notices are an operator's to read.
    let bob = As::Customer(BOB);
    for url in [&order, &timeline] {
        let (status, error) = call(&shop, bob, Method::GET, url, None).await;
        assert_eq!(
            (status, error["error"].clone()),
            (404, json!("order_not_found")),
            "{url}"
        );
    }
    let (status, error) = call(&shop, bob, Method::POST, &cancel, Some(&json!({}))).await;
    assert_eq!(
        (status, error["error"].clone()),
        (404, json!("order_not_found"))
    );
    let (status, error) = call(&shop, bob, Method::POST, &list, Some(&body_for(ADA))).await;
    assert_eq!((status, error["error"].clone()), (403, json!("forbidden")));
    let (status, error) = call(&shop, bob, Method::GET, &notices, None).await;
    assert_eq!((status, error["error"].clone()), (403, json!("forbidden")));
    let (status, listed) = call(&shop, bob, Method::GET, &list, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    assert_eq!(ids, vec![bobs.to_string()], "bob sees only his own");
    assert_eq!(
        footprint(&shop).await,
        before,
        "another customer changed something"
    );

    // An unknown order answers exactly the same.
    let (status, error) = call(
        &shop,
        bob,
        Method::GET,
        &format!("{orders}/orders/{}", Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(
        (status, error["error"].clone()),
        (404, json!("order_not_found"))
    );

    // The operator sees everything, notices included.
    for url in [&order, &timeline, &notices] {
        let (status, body) = call(&shop, As::Operator, Method::GET, url, None).await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    let (_, listed) = call(&shop, As::Operator, Method::GET, &list, None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // The owner: reads, places for herself (naming herself or nobody), cancels.
    let ada = As::Customer(ADA);
    for url in [&order, &timeline] {
        let (status, body) = call(&shop, ada, Method::GET, url, None).await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    let (status, error) = call(&shop, ada, Method::GET, &notices, None).await;
    assert_eq!((status, error["error"].clone()), (403, json!("forbidden")));
    let mut anonymous_body = body_for(ADA);
    anonymous_body
        .as_object_mut()
        .map(|b| b.remove("customer_id"));
    let (status, placed) = call(&shop, ada, Method::POST, &list, Some(&anonymous_body)).await;
    assert_eq!(status, 202, "{placed}");
    let (_, mine) = call(&shop, ada, Method::GET, &list, None).await;
    let customers: Vec<&str> = mine
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|o| o["customer_id"].as_str())
        .collect();
    assert_eq!(
        customers,
        vec![ADA, ADA],
        "ada sees her two orders, no one else's"
    );
    let (status, cancelled) = call(&shop, ada, Method::POST, &cancel, Some(&json!({}))).await;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");

    // Open to anyone: the catalog and the probes.
    for url in [format!("{orders}/products"), format!("{orders}/healthz")] {
        let (status, _) = call(&shop, As::Nobody, Method::GET, &url, None).await;
        assert_eq!(status, 200, "{url}");
    }
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_of_customers_data_refuses_to_start_without_an_identity_provider() {
    let env = shop_tests::Env::new().await;
    let mut config = env.config();
    config.auth = None;
    let refused = (shop::registry::orders().bind)(config.clone()).await.err();
    assert!(
        matches!(refused, Some(service_kit::Error::NoIdentityProvider)),
        "{refused:?}"
    );
    // Said out loud, it starts, and says so where an operator looks.
    config.auth_disabled = true;
    let orders = shop_tests::RunningService::start("orders", config).await;
    let ready: Value = reqwest::get(format!("{}/readyz", orders.url))
        .await
        .expect("readyz answers")
        .json()
        .await
        .expect("JSON");
    assert!(
        ready["warning"]
            .as_str()
            .is_some_and(|w| w.contains("AUTH_DISABLED")),
        "{ready}"
    );
    orders.stop().await;
    env.cleanup().await;
}
