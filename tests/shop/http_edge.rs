//! The HTTP edge, the same on every service: a client slow with its headers is cut off, a
//! kept-alive connection left idle is closed, oversized headers get a `431` problem, a body
//! that never finishes a `408`. (The bound on connections: `front_door`.)

use std::time::Duration;

use serde_json::Value;
use service_kit::Config;
use shop_tests::{Shop, TEST_CUSTOMER, client_builder, token};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Far longer than any limit below: a connection still open after it was not closed.
const GENEROUS: Duration = Duration::from_secs(5);

fn quick_timeouts(config: &mut Config) {
    config.http_header_timeout = Duration::from_millis(400);
}

async fn connect(shop: &Shop, service: &str) -> TcpStream {
    let url = shop.url(service);
    TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("the service accepts connections")
}

/// Whether the server closes `stream` within `limit` (reading, and discarding, whatever it
/// sends first).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A client that keeps no idle connection, so it holds no slot between requests.
/// A client of its own (no pooled connection), calling as the tests' customer.
fn fresh_client() -> reqwest::Client {
    client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_with_its_headers_is_cut_off_while_others_are_served() {
    let shop = Shop::start_with(&["payment"], quick_timeouts).await;
    let mut slow = connect(&shop, "payment").await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: shop\r\nx-slow: ")
        .await
        .expect("half a request");

    let healthy = fresh_client()
        .get(format!("{}/healthz", shop.url("payment")))
        .send()
        .await
        .expect("served meanwhile");
    assert_eq!(healthy.status(), 200);
    assert!(
        closed_within(&mut slow, GENEROUS).await,
        "the slow client is disconnected after the header timeout"
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_left_idle_is_closed() {
    let shop = Shop::start_with(&["payment"], quick_timeouts).await;
    let mut idle = connect(&shop, "payment").await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .expect("a whole request");
    let mut response = [0_u8; 1024];
    let read = idle.read(&mut response).await.expect("a response");
    assert!(
        String::from_utf8_lossy(&response[..read]).starts_with("HTTP/1.1 200"),
        "served first"
    );
    assert!(
        closed_within(&mut idle, GENEROUS).await,
        "then closed once idle past the timeout"
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_a_431_problem() {
    let shop = Shop::start_only(&["orders"]).await;
    let url = format!("{}/orders", shop.url("orders"));
    for size in [40 * 1024, 200 * 1024] {
        let response = fresh_client()
            .get(&url)
            .header("x-padding", "x".repeat(size))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 431, "{size} bytes");
        let error: Value = response.json().await.expect("a JSON error");
        assert_eq!(error["error"], "headers_too_large", "{error}");
    }
    let normal = fresh_client()
        .get(&url)
        .header("x-padding", "x".repeat(1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(normal.status(), 200);
    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 0);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_never_finishes_gets_a_408_problem_and_writes_nothing() {
    let shop = Shop::start_with(&["orders"], |config| {
        config.http_request_timeout = Duration::from_millis(500);
    })
    .await;
    let mut dawdler = connect(&shop, "orders").await;
    let request = format!(
        "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: 100\r\n\r\n{{\"customer_id\": ",
        token(TEST_CUSTOMER, false)
    );
    dawdler
        .write_all(request.as_bytes())
        .await
        .expect("headers and a little of the body");
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    let deadline = tokio::time::Instant::now() + GENEROUS;
    while !String::from_utf8_lossy(&answer).contains("request_timeout") {
        match tokio::time::timeout_at(deadline, dawdler.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 0);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_and_body_limits_are_settings() {
    let shop = Shop::start_with(&["orders"], |config| {
        config.http_max_header_bytes = 4096;
        config.http_max_body_bytes = 2048;
    })
    .await;
    let url = format!("{}/orders", shop.url("orders"));
    let client = fresh_client();
    let headers = client
        .get(&url)
        .header("x-padding", "x".repeat(6 * 1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(headers.status(), 431);
    let body = client
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024])
        .send()
        .await
        .expect("an answer");
    assert_eq!(body.status(), 413);
    let error: Value = body.json().await.expect("a JSON error");
    assert!(
        error["detail"].as_str().is_some_and(|m| m.contains("2048")),
        "{error}"
    );
    assert_eq!(shop.count("SELECT count(*) FROM orders.orders").await, 0);
    shop.stop().await;
}
