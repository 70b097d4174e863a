//! One order, one trace across the six services, as an OpenTelemetry backend receives it: the
//! services run as processes (each its own `service.name`) exporting OTLP over HTTP to a
//! receiver inside this test, which decodes the protobuf with the OpenTelemetry protocol's
//! own types. With `SHOP_OTLP_SAMPLES=<dir>` it also keeps every export it received there, for
//! CI to read with the OpenTelemetry project's Python protocol package.

use std::{
    collections::{BTreeMap, BTreeSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::header, routing::post};
use futures_util::FutureExt;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::span::SpanKind,
};
use prost::Message;
use serde_json::Value as Json;
use service_kit::{Style, topology};
use shop_lab::{harness, process_shop::ProcessShop};
use tokio::net::TcpListener;

#[path = "support/processes.rs"]
mod processes;
use processes::start_shop;

const PATIENCE: Duration = Duration::from_secs(60);

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
}

impl Received {
    fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP trace receiver on a free port: every span of every export, decoded.
async fn start_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

async fn receive(
    State(spans): State<Spans>,
    body: Bytes,
) -> ([(header::HeaderName, &'static str); 1], Vec<u8>) {
    if let Ok(dir) = std::env::var("SHOP_OTLP_SAMPLES") {
        let path = std::path::Path::new(&dir).join(format!("{}.pb", uuid::Uuid::now_v7()));
        std::fs::write(&path, &body).expect("write an OTLP sample");
    }
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    spans.lock().expect("spans").extend(received);
    // An empty ExportTraceServiceResponse: everything accepted.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::new(),
    )
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(n)) => n.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_every_service() {
    one_order_is_one_trace(Style::Choreography).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_orchestrated_order_is_one_trace_through_the_saga() {
    one_order_is_one_trace(Style::Orchestration).await;
}

async fn one_order_is_one_trace(style: Style) {
    let (endpoint, spans) = start_receiver().await;
    let shop = start_shop(
        "shop_traces",
        style,
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A failed assertion must not leave the run's database, queues and logs behind.
    let result = AssertUnwindSafe(check_one_order(&shop, style, &spans))
        .catch_unwind()
        .await;
    shop.remove().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn check_one_order(shop: &ProcessShop, style: Style, spans: &Spans) -> Result<(), String> {
    let sandbox = &shop.sandbox;
    let orders = shop
        .orders_urls()
        .into_iter()
        .next()
        .ok_or("no orders process")?;
    let http = reqwest::Client::new();

    // The caller's own trace: the order's trace continues it.
    let caller_trace = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let body = harness::order_body("cust-trace", "MUG-001", 1, "card", "GB");
    let placed: Json = http
        .post(format!("{orders}/orders"))
        .bearer_auth(harness::token_for(&shop.issuer, &body).map_err(|e| e.to_string())?)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let order_id = placed["order_id"].as_str().ok_or("no order id")?.to_owned();

    // The order goes all the way first: a trace is only whole once the flow is. Read from the
    // database, not the API: a request would start a trace of its own.
    let database = sqlx::PgPool::connect(&sandbox.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let order_uuid: uuid::Uuid = order_id.parse().map_err(|e| format!("{e}"))?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let settled: Option<(String, bool)> =
            sqlx::query_as("SELECT status::text, settled FROM orders.orders WHERE id = $1")
                .bind(order_uuid)
                .fetch_optional(&database)
                .await
                .map_err(|e| e.to_string())?;
        match settled {
            Some((status, true)) if status == "confirmed" => break,
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!(
                    "order {order_id} did not settle as confirmed: {settled:?}"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    database.close().await;

    // Every delivery the happy path makes: each message of its story on the flow map, once
    // per subscriber.
    let chain = shop::map::messages_of(&shop::map::stories(style, shop::map::Scenario::Happy));
    let deliveries: usize = chain
        .iter()
        .map(|message| shop::map::consumers(style, message).len())
        .sum();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let trace = loop {
        let trace: Vec<Received> = spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|span| span.trace_id == caller_trace)
            .cloned()
            .collect();
        // Each process exports on its own schedule: a publish span may arrive after the
        // spans of the deliveries it caused.
        let of = |k: SpanKind| trace.iter().filter(|s| s.kind == kind(k)).count();
        if of(SpanKind::Consumer) >= deliveries && of(SpanKind::Producer) >= chain.len() {
            break trace;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "order {order_id}: {deliveries} consumer and {} producer spans expected, got \
                 {trace:#?}",
                chain.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    let expected: BTreeSet<&str> = shop::registry::names_in(style).collect();
    assert_eq!(services, expected, "every service took part in the trace");

    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let of_kind = |k: SpanKind| trace.iter().filter(move |s| s.kind == kind(k));

    let servers: Vec<&Received> = of_kind(SpanKind::Server).collect();
    assert_eq!(servers.len(), 1, "{servers:#?}");
    let post = servers[0];
    assert_eq!(post.service, "orders");
    assert_eq!(post.name, "POST /orders");
    assert_eq!(
        post.parent_span_id, caller_span,
        "the caller's span is its parent"
    );
    assert_eq!(post.attribute("http.request.method"), "POST");
    assert_eq!(post.attribute("http.route"), "/orders");
    assert_eq!(post.attribute("http.response.status_code"), "202");
    // Every span of the order's trace names the order, as the logs inside them do.
    for span in &trace {
        assert_eq!(span.attribute("order_id"), order_id, "{span:#?}");
    }

    let producers: BTreeMap<&str, &Received> = of_kind(SpanKind::Producer)
        .map(|s| (s.attribute("messaging.message.id"), s))
        .collect();
    assert_eq!(
        producers.len(),
        chain.len(),
        "one publish per event: {producers:#?}"
    );
    for producer in producers.values() {
        assert_eq!(producer.attribute("messaging.system"), "rabbitmq");
        assert_eq!(producer.attribute("messaging.operation.type"), "send");
        assert_eq!(
            producer.attribute("messaging.message.conversation_id"),
            order_id
        );
        let key = producer.attribute("messaging.rabbitmq.destination.routing_key");
        assert!(!key.is_empty(), "{producer:#?}");
        let exchange = match shared_events::message_info(producer.attribute("event_type")) {
            Some(info) if info.is_command() => topology::commands_exchange_name(&sandbox.namespace),
            _ => topology::exchange_name(&sandbox.namespace),
        };
        assert_eq!(
            producer.attribute("messaging.destination.name"),
            format!("{exchange}:{key}"),
        );
        assert_eq!(
            producer.name,
            format!(
                "publish {}",
                producer.attribute("messaging.destination.name")
            )
        );
        // Written by the POST (OrderPlaced) or by the handler of the event before it.
        let parent = by_id
            .get(producer.parent_span_id.as_str())
            .ok_or_else(|| format!("the parent of {producer:#?} is not in the trace"))?;
        assert_eq!(parent.service, producer.service, "{producer:#?}");
        assert!(
            parent.kind == kind(SpanKind::Server) || parent.kind == kind(SpanKind::Consumer),
            "{parent:#?}"
        );
    }

    for consumer in of_kind(SpanKind::Consumer) {
        assert_eq!(consumer.attribute("messaging.system"), "rabbitmq");
        assert_eq!(consumer.attribute("messaging.operation.type"), "process");
        assert_eq!(
            consumer.attribute("messaging.message.conversation_id"),
            order_id
        );
        assert!(consumer.name.starts_with("process "), "{consumer:#?}");
        // A child of the very publish that sent the message it handled.
        let producer = producers
            .get(consumer.attribute("messaging.message.id"))
            .ok_or_else(|| format!("no publish of the message {consumer:#?} handled"))?;
        assert_eq!(consumer.parent_span_id, producer.span_id, "{consumer:#?}");
        assert_ne!(consumer.service, "", "{consumer:#?}");
    }
    Ok(())
}

fn kind(k: SpanKind) -> i32 {
    k as i32
}
