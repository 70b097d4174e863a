//! The compose file kept honest without a Docker engine, and least privilege proven:
//!
//! - every variable and port the compose file gives a service is one that service reads and
//!   serves (and the ports are the README's);
//! - every service runs with exactly the compose environment, credentials included (hosts
//!   pointed at localhost, a fresh database and vhost), after `shop provision` created their
//!   Postgres roles and RabbitMQ users, and an order goes through;
//! - payment's role cannot read or write the orders schema; inventory's broker user cannot
//!   publish payment's routing keys;
//! - a forged event is not believed: OrderCancelled for a confirmed order, published with
//!   payment's rights under payment's own routing key, is dead-lettered by every subscriber
//!   with the reason and releases no stock; payment cannot sign a message as orders; each
//!   received event's publisher is the producer's own broker user;
//! - the shop's history is every service's to read and none's to write: a service restarted
//!   with `REPLAY_FROM=start` as its own user catches up, its inbox absorbing it all.
//!
//! Provisions through the RabbitMQ management API on 127.0.0.1:15672, as compose does; the
//! test enables the plugin first if the broker does not serve it yet.

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use serde_norway::Value;
use service_kit::{Config, Style, headers, publisher::envelope_properties};
use shared_events::{Envelope, Message, OrderCancelled, PaymentCompleted};
use shop::SERVICES;
use shop::provision::{Management, Settings};
use shop_tests::{
    Env, MANAGEMENT_URL, PATIENCE, RunningService, client, ensure_management_api, eventually,
    issuer_url, metric, order_body, token,
};
use sqlx::Connection as _;
use uuid::Uuid;

fn compose() -> Value {
    compose_file("docker-compose.yml")
}

fn compose_file(name: &str) -> Value {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut compose: Value = serde_norway::from_str(&text).expect("valid YAML");
    compose.apply_merge().expect("merge keys resolve");
    compose
}

/// What `docker compose` runs in `style`: the orchestrated twin is docker-compose.yml with
/// docker-compose.orchestration.yml over it (mappings merged, other values replaced).
fn compose_in(style: Style) -> Value {
    let mut compose = compose();
    if style == Style::Orchestration {
        merge(
            &mut compose,
            compose_file("docker-compose.orchestration.yml"),
        );
    }
    compose
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The environment compose would give `service`, with `${VAR:-default}` at its default.
fn environment(compose: &Value, service: &str) -> BTreeMap<String, String> {
    let env = compose["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{service} has an environment mapping"));
    env.iter()
        .map(|(k, v)| (text(k), with_defaults(&text(v))))
        .collect()
}

fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .map(|(_, d)| d)
            .expect("every variable has a default");
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_compose_file_sets_only_what_the_services_read_on_the_ports_they_serve() {
    for style in Style::ALL {
        compose_services_are_confined_and_probed(style);
    }
}

fn compose_services_are_confined_and_probed(style: Style) {
    let compose = compose_in(style);
    for entry in SERVICES.iter().filter(|entry| entry.runs_in(style)) {
        let (service, default_addr) = (entry.name, entry.default_addr);
        let spec = &compose["services"][service];
        assert_eq!(
            text(&spec["command"][0]),
            entry.binary,
            "{service} runs its own binary"
        );
        let env = environment(&compose, service);
        assert_eq!(
            env.get("SHOP_STYLE").map_or("choreography", String::as_str),
            style.name(),
            "{service} runs in {style} style"
        );
        for key in env.keys() {
            assert!(
                service_kit::config::VARIABLES.contains(&key.as_str())
                    || entry.variables.contains(&key.as_str()),
                "{service}: compose sets {key}, which the service does not read"
            );
        }
        let port = default_addr.port();
        assert_eq!(
            env["HTTP_ADDR"],
            format!("0.0.0.0:{port}"),
            "{service} listens on its README port"
        );
        let ports: Vec<String> = spec["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(text)
            .collect();
        // The public entry points keep their port; a consumer publishes its port on any free
        // host port, so `docker compose up --scale <consumer>=N` can run N of it.
        let expected = if ["orders", "console"].contains(&service) {
            format!("{port}:{port}")
        } else {
            port.to_string()
        };
        assert_eq!(
            ports,
            vec![expected],
            "{service} publishes exactly its port"
        );
        let probe: Vec<String> = spec["healthcheck"]["test"]
            .as_sequence()
            .expect("healthcheck")
            .iter()
            .map(text)
            .collect();
        assert_eq!(
            probe,
            vec![
                "CMD".to_owned(),
                "shop".into(),
                "probe".into(),
                "http://127.0.0.1:9000/readyz".into()
            ],
            "{service} is probed on its management port, never behind customers"
        );
        assert_eq!(env["HTTP_MANAGEMENT_ADDR"], "0.0.0.0:9000");
        assert!(
            env["DATABASE_URL"].starts_with(&format!("postgres://{service}:")),
            "{service} has its own role"
        );
        assert!(
            env["AMQP_URL"].starts_with(&format!("amqp://{service}:")),
            "{service} has its own broker user"
        );
        assert_eq!(
            text(&spec["depends_on"]["provision"]["condition"]),
            "service_completed_successfully"
        );
        assert!(spec["restart"].is_string(), "{service} restarts");
        // Spans go where the user says (`http://jaeger:4318` with the observability profile);
        // by default nowhere, so the shop runs quietly without a trace viewer.
        assert_eq!(
            text(&spec["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]),
            "${OTEL_EXPORTER_OTLP_ENDPOINT:-}",
            "{service} sends its spans to the trace viewer the user names"
        );
    }
    // What a registry alone can give runs behind a profile: the shop itself runs everywhere.
    for viewer in ["jaeger", "grafana"] {
        let profiles: Vec<String> = compose["services"][viewer]["profiles"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{viewer} runs behind a profile"))
            .iter()
            .map(text)
            .collect();
        assert_eq!(profiles, vec!["observability".to_owned()], "{viewer}");
    }
    assert!(
        text(&compose["services"]["jaeger"]["image"]).starts_with("jaegertracing/"),
        "a trace viewer runs with the observability profile"
    );
    for key in environment(&compose, "provision").keys() {
        assert!(
            Settings::variables().contains(key),
            "provision: {key} is not read"
        );
    }
    if style == Style::Orchestration {
        return;
    }
    for dependency in ["postgres", "rabbitmq"] {
        assert!(
            !text(&compose["services"][dependency]["healthcheck"]["test"][0]).is_empty(),
            "{dependency} has a health check"
        );
        assert_eq!(
            text(&compose["services"]["provision"]["depends_on"][dependency]["condition"]),
            "service_healthy"
        );
    }
    let management: Vec<String> = compose["services"]["rabbitmq"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(text)
        .collect();
    assert_eq!(
        management,
        vec!["${RABBITMQ_UI_PORT:-15672}:15672"],
        "the RabbitMQ UI is published"
    );
    for volume in ["postgres-data", "rabbitmq-data"] {
        assert!(
            compose["volumes"].get(volume).is_some(),
            "named volume {volume}"
        );
    }
}

#[test]
fn the_image_carries_every_binary_compose_runs_and_runs_them_as_non_root() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile"))
        .expect("Dockerfile at the workspace root");
    let compose = compose();
    let mut binaries: Vec<String> = vec!["shop".to_owned()];
    let orchestrated = compose_in(Style::Orchestration);
    for entry in &SERVICES {
        let command = text(&orchestrated["services"][entry.name]["command"][0]);
        assert_eq!(command, entry.binary);
        binaries.push(command);
    }
    binaries.push(text(&compose["services"]["provision"]["command"][0]));
    for binary in binaries {
        assert!(
            dockerfile.contains(&format!("--bin {binary}")),
            "the image builds {binary}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/{binary}")),
            "the image installs {binary}"
        );
    }
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.ends_with(" 0"),
        "runs as {user}"
    );
    assert!(
        dockerfile.contains("cargo chef cook"),
        "dependencies are a cached layer of their own"
    );
}

/// Compose's values, pointed at this machine: localhost, the test database and vhost.
/// Compose's values, pointed at this machine: localhost, the test database and vhost, the
/// tests' identity provider, and the console's token in `token_file`.
fn localize(value: &str, database: &str, vhost: &str, token_file: &str) -> String {
    value
        .replace(
            "@postgres:5432/shop",
            &format!("@127.0.0.1:5432/{database}"),
        )
        .replace("@rabbitmq:5672/%2f", &format!("@127.0.0.1:5672/{vhost}"))
        .replace("http://rabbitmq:15672", "http://127.0.0.1:15672")
        .replace("http://issuer:8079", &issuer_url())
        .replace("/var/run/shop/orders-token", token_file)
}

fn guest_management() -> Management {
    Management {
        base_url: MANAGEMENT_URL.to_owned(),
        user: "guest".to_owned(),
        password: "guest".to_owned(),
        http: reqwest::Client::new(),
    }
}

/// Deletes the test vhost (and with it every queue and exchange in it), even if the test fails.
struct VhostGuard(String);

impl Drop for VhostGuard {
    fn drop(&mut self) {
        let vhost = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime
                    .block_on(guest_management().delete("vhost", &format!("vhosts/{vhost}")));
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_with_the_compose_environment_and_each_service_is_confined() {
    runs_confined(Style::Choreography).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrated_twin_runs_with_its_compose_override_and_only_the_saga_commands() {
    runs_confined(Style::Orchestration).await;
}

async fn runs_confined(style: Style) {
    let compose = compose_in(style);
    let env = Env::new().await;
    ensure_management_api().await;
    let vhost = format!("test-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let guest = guest_management();
    guest
        .create_vhost(&vhost)
        .await
        .expect("create the test's vhost");
    let _vhost_guard = VhostGuard(vhost.clone());
    // The console's token, as compose's issuer writes it for the console.
    let token_file = std::env::temp_dir().join(format!("{vhost}-orders-token"));
    std::fs::write(&token_file, token(console::DEMO_CUSTOMER, false)).expect("the token file");
    let token_file = token_file.display().to_string();
    guest
        .allow_everything(&vhost, "guest")
        .await
        .expect("guest on the test vhost");

    // The administrator compose's provision step logs in as.
    let provision_env: BTreeMap<String, String> = environment(&compose, "provision")
        .into_iter()
        .map(|(k, v)| (k, localize(&v, &env.database, &vhost, &token_file)))
        .collect();
    let settings =
        Settings::from_lookup(|name| provision_env.get(name).cloned()).expect("settings");
    let (admin_user, admin_password) = settings.broker_admin.clone();
    guest
        .http
        .put(format!("{MANAGEMENT_URL}/api/users/{admin_user}"))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({ "password": admin_password, "tags": "administrator" }))
        .send()
        .await
        .expect("create the compose administrator")
        .error_for_status()
        .expect("administrator created");
    guest
        .allow_everything(&vhost, &admin_user)
        .await
        .expect("administrator on the vhost");
    shop::provision::apply(&settings)
        .await
        .expect("provisioning");

    // The services, with exactly their compose environment (only the listen port differs, so
    // tests can run in parallel; the compose ports are checked above).
    let mut running = Vec::new();
    let mut service_env = BTreeMap::new();
    for entry in SERVICES.iter().filter(|entry| entry.runs_in(style)) {
        let (service, default_addr) = (entry.name, entry.default_addr);
        let mut vars: BTreeMap<String, String> = environment(&compose, service)
            .into_iter()
            .map(|(k, v)| (k, localize(&v, &env.database, &vhost, &token_file)))
            .collect();
        vars.insert("HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        vars.insert("HTTP_MANAGEMENT_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        vars.insert("DB_POOL_SIZE".to_owned(), "3".to_owned());
        let config = Config::from_lookup(default_addr, |name| vars.get(name).cloned())
            .expect("compose config is valid");
        service_env.insert(service, vars);
        running.push(RunningService::start(service, config).await);
    }

    let http = client();
    let orders_url = &running[0].url;
    let order_id = place(&http, orders_url, &order_body("MUG-001", 1, "card", "GB")).await;
    eventually("order confirmed", || async {
        order(&http, orders_url, &order_id).await["status"] == "confirmed"
    })
    .await;
    // A failure with every compensation, each service believing the others' users: a country
    // nobody ships to (charged, reserved, then refunded, released, cancelled, voided).
    let unshippable = place(&http, orders_url, &order_body("BOOK-001", 1, "card", "AQ")).await;
    eventually("the unshippable order cancelled and settled", || async {
        let order = order(&http, orders_url, &unshippable).await;
        order["status"] == "cancelled" && order["settled"] == true
    })
    .await;

    // Postgres: payment's role owns payment, and cannot touch orders.
    let payment_url = &service_env["payment"]["DATABASE_URL"];
    let mut as_payment = sqlx::PgConnection::connect(payment_url)
        .await
        .expect("payment's role logs in");
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM payment.payments")
        .fetch_one(&mut as_payment)
        .await
        .expect("payment reads its own schema");
    assert_eq!(own, 2, "the confirmed order's payment and the refunded one");
    for sql in [
        "SELECT count(*) FROM orders.orders",
        "UPDATE orders.orders SET status = 'cancelled'",
        "INSERT INTO orders.products (sku, name, price_cents) VALUES ('FREE', 'free', 1)",
        "SELECT count(*) FROM inventory.stock",
    ] {
        let denied = sqlx::query(sql)
            .execute(&mut as_payment)
            .await
            .expect_err(sql);
        let code = denied
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {denied}");
    }
    let _ = as_payment.close().await;

    // RabbitMQ: inventory may publish its own events, not payment's, nor read payment's queue.
    let inventory_amqp = &service_env["inventory"]["AMQP_URL"];
    let connection = Connection::connect(inventory_amqp, ConnectionProperties::default())
        .await
        .expect("inventory logs in");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let publish = |routing_key: &'static str| {
        let channel = channel.clone();
        async move {
            channel
                .basic_publish(
                    "shop.events".into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await?
                .await
        }
    };
    // A key of its own that nobody is bound to: allowed, and poisons no queue.
    publish("inventory.permission_probe")
        .await
        .expect("its own routing keys are allowed");
    let refused = publish("payment.payment_completed")
        .await
        .expect_err("another service's key is refused");
    assert!(
        refused.to_string().contains("ACCESS_REFUSED") || refused.to_string().contains("access"),
        "{refused}"
    );
    let channel = connection.create_channel().await.expect("a new channel");
    let reading = channel
        .basic_consume(
            "shop.payment".into(),
            "intruder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("payment's queue is not inventory's to read");
    assert!(
        reading.to_string().contains("ACCESS_REFUSED") || reading.to_string().contains("access"),
        "{reading}"
    );
    if style == Style::Orchestration {
        // Only the saga sends commands: a participant's user may not write to the exchange.
        let channel = connection.create_channel().await.expect("a new channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let commanding = channel
            .basic_publish(
                "shop.commands".into(),
                "payment.refund_payment".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await;
        let refused = match commanding {
            Ok(confirm) => confirm.await.err(),
            Err(e) => Some(e),
        };
        assert!(
            refused.is_some_and(|e| e.to_string().contains("ACCESS_REFUSED")),
            "inventory may not send a command"
        );
    }
    let _ = connection.close(200, "done".into()).await;

    let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let order_id: Uuid = order_id.parse().expect("an order id");
    if style == Style::Choreography {
        forged_events_are_not_believed(&service_env, &running, &amqp_url, order_id).await;
    }
    received_events_name_their_producers_user(&http, orders_url, order_id).await;
    history_is_read_not_written(&service_env, &mut running).await;

    let broker = shop::audit::Broker {
        amqp_url: &amqp_url,
        namespace: "shop",
    };
    let report = shop::audit::audit_until_clean(
        &shop::audit::Databases::single(&env.pool),
        Some(&broker),
        Duration::from_secs(30),
    )
    .await
    .expect("audit");
    assert!(report.is_clean(), "{report}");

    for service in running {
        service.stop().await;
    }
    let _ = std::fs::remove_file(&token_file);
    env.cleanup().await;
}

/// Under least privilege every service may read the shop's history and none may write it:
/// inventory's user cannot put a message into the stream, and notifications, restarted as its
/// own user to catch up from the start, reads it all (its inbox absorbs what it already had:
/// the audit after this finds one notice per order).
async fn history_is_read_not_written(
    service_env: &BTreeMap<&str, BTreeMap<String, String>>,
    running: &mut Vec<RunningService>,
) {
    let connection = Connection::connect(
        &service_env["inventory"]["AMQP_URL"],
        ConnectionProperties::default(),
    )
    .await
    .expect("inventory logs in");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let written = match channel
        .basic_publish(
            "".into(),
            "shop.history".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await.err(),
        Err(e) => Some(e),
    };
    assert!(
        written.is_some_and(|e| e.to_string().contains("ACCESS_REFUSED")),
        "inventory may not write the history"
    );
    let _ = connection.close(200, "done".into()).await;

    let index = running
        .iter()
        .position(|service| service.name == "notifications")
        .expect("notifications runs");
    running.remove(index).stop().await;
    let mut vars = service_env["notifications"].clone();
    vars.insert("REPLAY_FROM".to_owned(), "start".to_owned());
    let entry = shop::registry::find("notifications").expect("notifications");
    let config = Config::from_lookup(entry.default_addr, |name| vars.get(name).cloned())
        .expect("compose config is valid");
    let notifications = RunningService::start("notifications", config).await;
    let readyz = format!("{}/readyz", notifications.url);
    eventually("notifications caught up as its own user", || async {
        let readiness: serde_json::Value = match client().get(&readyz).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        readiness["replay"]["caught_up"] == true
            && readiness["replay"]["handled"].as_u64() >= Some(3)
    })
    .await;
    running.push(notifications);
}

/// Places an order (it must be accepted); its id.
async fn place(http: &reqwest::Client, orders_url: &str, body: &serde_json::Value) -> String {
    let response = http
        .post(format!("{orders_url}/orders"))
        .json(body)
        .send()
        .await
        .expect("orders");
    assert_eq!(response.status(), 202);
    let placed: serde_json::Value = response.json().await.expect("JSON");
    placed["order_id"].as_str().expect("id").to_owned()
}

async fn order(http: &reqwest::Client, orders_url: &str, order_id: &str) -> serde_json::Value {
    http.get(format!("{orders_url}/orders/{order_id}"))
        .send()
        .await
        .expect("orders")
        .json()
        .await
        .expect("JSON")
}

/// The probe that found the hole: with payment's publishing rights, a copy of an
/// OrderCancelled retargeted at a confirmed order, under `payment.payment_completed` (a key
/// inventory binds). Every subscriber of that key dead-letters it with the reason; no stock
/// moves. Payment cannot sign a message as orders either: the broker refuses the `user-id`.
async fn forged_events_are_not_believed(
    service_env: &BTreeMap<&str, BTreeMap<String, String>>,
    running: &[RunningService],
    amqp_url: &str,
    order_id: Uuid,
) {
    let as_payment = Connection::connect(
        &service_env["payment"]["AMQP_URL"],
        ConnectionProperties::default(),
    )
    .await
    .expect("payment logs in");
    let channel = as_payment.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let forged = Envelope::new(
        &OrderCancelled {
            order_id,
            reason: "customer_request".to_owned(),
        },
        None,
    );
    let confirm = channel
        .basic_publish(
            "shop.events".into(),
            PaymentCompleted::ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &forged.to_json(),
            envelope_properties(&forged).with_user_id("payment".into()),
        )
        .await
        .expect("payment may publish under its own key")
        .await
        .expect("confirmed");
    assert!(confirm.is_ack(), "the broker took it: only the body lies");

    let subscribers = ["orders", "inventory", "console"];
    let broker = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("guest on the test vhost");
    let reader = broker.create_channel().await.expect("channel");
    for service in subscribers {
        let queue = format!("shop.{service}.dlq");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let letter = loop {
            let got = reader
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(message) = got {
                break Some(message.delivery.properties);
            }
            if tokio::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(letter.is_some(), "{service} dead-letters the forgery");
        let reason = letter
            .and_then(|properties| {
                service_kit::publisher::header_text(&properties, headers::DEAD_LETTER_REASON)
            })
            .unwrap_or_default();
        assert_eq!(
            reason,
            "OrderCancelled arrived under payment.payment_completed; only orders announces it \
             (under orders.order_cancelled)",
            "{service}"
        );
    }
    let _ = broker.close(200, "done".into()).await;
    let inventory = running
        .iter()
        .find(|service| service.name == "inventory")
        .expect("inventory runs");
    let refused = metric(
        &reqwest::Client::new(),
        &inventory.url,
        "shop_messages_total{event=\"OrderCancelled\",outcome=\"untrusted\"}",
    )
    .await;
    assert_eq!(refused, 1, "counted");
    let mut as_inventory = sqlx::PgConnection::connect(&service_env["inventory"]["DATABASE_URL"])
        .await
        .expect("inventory's role logs in");
    let (reserved, released): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT reserved FROM inventory.stock WHERE sku = 'MUG-001')::int8,
                (SELECT count(*) FROM inventory.outbox
                 WHERE event_type = 'StockReleased' AND correlation_id = $1)",
    )
    .bind(order_id)
    .fetch_one(&mut as_inventory)
    .await
    .expect("inventory's stock");
    assert_eq!(
        (reserved, released),
        (1, 0),
        "the confirmed order keeps its unit"
    );
    let _ = as_inventory.close().await;

    // The right key, but signed as another service: the broker itself refuses it.
    let channel = as_payment.create_channel().await.expect("a new channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let impersonating = async {
        channel
            .basic_publish(
                "shop.events".into(),
                PaymentCompleted::ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_user_id("orders".into()),
            )
            .await?
            .await
    }
    .await;
    let refused = impersonating.expect_err("a user-id other than the connection's is refused");
    assert!(
        refused.to_string().contains("PRECONDITION_FAILED")
            || refused.to_string().contains("user_id"),
        "{refused}"
    );
    let _ = as_payment.close(200, "done".into()).await;
}

/// The timeline names the broker user that published each event orders received: the
/// producer's own.
async fn received_events_name_their_producers_user(
    http: &reqwest::Client,
    orders_url: &str,
    order_id: Uuid,
) {
    let timeline: serde_json::Value = http
        .get(format!("{orders_url}/orders/{order_id}/timeline"))
        .send()
        .await
        .expect("orders")
        .json()
        .await
        .expect("JSON");
    let received: Vec<(String, String)> = timeline
        .as_array()
        .expect("a list")
        .iter()
        .filter(|entry| entry["orders_role"] == "received")
        .map(|entry| {
            (
                entry["producer"].as_str().unwrap_or_default().to_owned(),
                entry["published_by"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(!received.is_empty(), "{timeline}");
    for (producer, published_by) in received {
        assert_eq!(published_by, producer, "{timeline}");
    }
}

#[test]
fn the_cluster_profile_gives_every_service_all_three_nodes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/compose/rabbitmq-cluster.yml"
    );
    let yaml = std::fs::read_to_string(path).expect("deploy/compose/rabbitmq-cluster.yml");
    let mut cluster: Value = serde_norway::from_str(&yaml).expect("valid YAML");
    cluster.apply_merge().expect("merge keys resolve");
    for node in ["rabbitmq-2", "rabbitmq-3"] {
        assert_eq!(
            text(&cluster["services"][node]["hostname"]),
            node,
            "{node} is a node of its own"
        );
        // A quorum queue gets members on the nodes in the cluster when it is declared: the
        // queues are declared once every node has joined, or losing one could lose a majority.
        assert_eq!(
            text(&cluster["services"]["provision"]["depends_on"][node]["condition"]),
            "service_healthy",
            "provision waits for {node}"
        );
    }
    // The saga is the orchestration override's (docker-compose.orchestration.yml).
    for entry in SERVICES
        .iter()
        .filter(|entry| entry.runs_in(Style::Choreography))
    {
        let service = entry.name;
        let urls = with_defaults(&text(
            &cluster["services"][service]["environment"]["AMQP_URL"],
        ));
        let mut config = Config::defaults(entry.default_addr);
        config.amqp_url = urls;
        let hosts: Vec<String> = config
            .amqp_urls()
            .iter()
            .map(|url| {
                let uri: lapin::uri::AMQPUri = url.parse().expect("an AMQP URL");
                assert_eq!(uri.authority.userinfo.username, service, "its own user");
                uri.authority.host
            })
            .collect();
        assert_eq!(
            hosts,
            ["rabbitmq", "rabbitmq-2", "rabbitmq-3"],
            "{service} knows every node"
        );
    }
}
