//! The broker side of a test: the spy on the exchange, a publisher that plays a producer,
//! messages taken from queues (dead letters, or held back from a stopped service), rows put
//! straight into an outbox, and the management API the least-privilege test provisions
//! through.

use super::*;

/// The RabbitMQ management API, which the least-privilege test provisions through (as
/// compose's provision step does). A fresh broker does not serve it: the first test that
/// needs it enables the plugin (`rabbitmq-plugins`, as the broker's administrator), so the
/// README's one test command needs no step before it.
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

pub async fn ensure_management_api() {
    static ENABLING: Mutex<()> = Mutex::const_new(());
    let _turn = ENABLING.lock().await;
    let http = reqwest::Client::new();
    let overview = format!("{MANAGEMENT_URL}/api/overview");
    let answers = || async {
        http.get(&overview)
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    if answers().await {
        return;
    }
    let enabled = tokio::process::Command::new("rabbitmq-plugins")
        .args(["enable", "--quiet", "rabbitmq_management"])
        .output()
        .await;
    let hint = "enable it with `rabbitmq-plugins enable rabbitmq_management` (as root)";
    match enabled {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the RabbitMQ management API is not reachable on {MANAGEMENT_URL} and enabling it \
             failed ({}): {hint}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) => panic!(
            "the RabbitMQ management API is not reachable on {MANAGEMENT_URL} and \
             rabbitmq-plugins cannot be run ({e}): {hint}"
        ),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !answers().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the RabbitMQ management plugin was enabled but {MANAGEMENT_URL} does not answer"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records everything published on the namespace's exchange.
pub struct Spy(EventTap);

impl Spy {
    pub async fn start(namespace: &str) -> Self {
        let tap = EventTap::start(&amqp_url(), namespace)
            .await
            .unwrap_or_else(|e| panic!("the spy cannot tap the exchange: {}", ErrorChain(&e)));
        Self(tap)
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.all()
    }

    pub fn for_order(&self, order_id: Uuid) -> Vec<Seen> {
        self.0.for_order(order_id)
    }

    pub fn types_for(&self, order_id: Uuid) -> Vec<String> {
        self.for_order(order_id)
            .into_iter()
            .map(|s| s.envelope.event_type)
            .collect()
    }

    /// Waits until the spy has seen an `E` for the order; returns it.
    pub async fn wait_for<E: Message>(&self, order_id: Uuid) -> Seen {
        let event_type = E::TYPE;
        eventually(&format!("{event_type} for {order_id}"), || async {
            self.for_order(order_id)
                .iter()
                .any(|s| s.envelope.event_type == event_type)
        })
        .await;
        self.for_order(order_id)
            .into_iter()
            .find(|s| s.envelope.event_type == event_type)
            .expect("just seen")
    }

    /// Stops the spy. With `SHOP_WIRE_SAMPLES` set to a directory, every message it saw is
    /// written there first (body, content type, string headers, routing key), for validators
    /// we did not write (CI checks them with a CloudEvents SDK).
    pub async fn close(self) {
        if let Some(dir) = std::env::var_os("SHOP_WIRE_SAMPLES") {
            write_wire_samples(std::path::Path::new(&dir), &self.all());
        }
        self.0.close().await;
    }
}

fn write_wire_samples(dir: &std::path::Path, seen: &[Seen]) {
    std::fs::create_dir_all(dir).expect("sample directory");
    for message in seen {
        let headers: serde_json::Map<String, serde_json::Value> = message
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .keys()
                    .filter_map(|name| {
                        let value = header_text(&message.properties, name.as_str())?;
                        Some((name.to_string(), value.into()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sample = json!({
            "routing_key": message.routing_key,
            "content_type": message.properties.content_type().as_ref().map(ToString::to_string),
            "message_id": message.properties.message_id().as_ref().map(ToString::to_string),
            "type": message.properties.kind().as_ref().map(ToString::to_string),
            "headers": headers,
            "body": String::from_utf8_lossy(&message.body),
        });
        let path = dir.join(format!("{}.json", message.envelope.message_id));
        std::fs::write(&path, sample.to_string()).expect("sample written");
    }
}

/// Publishes envelopes onto a namespace's exchange as a producer would (confirmed).
pub struct TestPublisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl TestPublisher {
    pub async fn new(namespace: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let exchange = topology::exchange_name(namespace);
        topology::declare_exchange(&channel, &exchange)
            .await
            .expect("declare the exchange");
        Self {
            connection,
            channel,
            exchange,
        }
    }

    pub async fn publish(&self, routing_key: &str, envelope: &Envelope) {
        self.publish_raw(
            routing_key,
            &envelope.to_json(),
            envelope_properties(envelope),
        )
        .await;
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker took the message");
        assert!(confirm.take_message().is_none(), "message was routed");
    }

    /// Puts a message taken from `service`'s queue back at the end of that queue alone (not
    /// through the exchange: the other subscribers had their copy).
    pub async fn redeliver(&self, namespace: &str, service: &str, message: &TakenMessage) {
        let queue = topology::queue_name(namespace, service);
        self.put(namespace, service, &queue, message).await;
    }

    /// Puts a message straight into one of `service`'s queues (its work, delay or dead-letter
    /// queue), as its consumer moves a message on: through its private exchange, saying under
    /// which routing key the message was first published.
    pub async fn put(&self, namespace: &str, service: &str, queue: &str, message: &TakenMessage) {
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        if !headers.inner().contains_key(headers::ORIGINAL_ROUTING_KEY) {
            let event_type = message.envelope().event_type;
            let event = CATALOG
                .iter()
                .find(|event| event.event_type == event_type)
                .expect("an event of the catalog");
            headers.insert(
                headers::ORIGINAL_ROUTING_KEY.into(),
                AMQPValue::LongString(event.routing_key.into()),
            );
        }
        let confirm = self
            .channel
            .basic_publish(
                topology::private_exchange_name(namespace, service)
                    .as_str()
                    .into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                message.properties.clone().with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker took the message");
        assert!(confirm.take_message().is_none(), "{queue} exists");
    }

    /// Messages waiting in `queue` that the broker has not yet sent to any consumer.
    pub async fn ready(&self, queue: &str) -> u32 {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .expect("the queue exists")
            .message_count()
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "publisher done".into()).await;
    }
}

/// A message taken from a queue (a dead-letter queue, or a stopped service's own).
#[derive(Debug)]
pub struct TakenMessage {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl TakenMessage {
    /// The same message carrying `envelope` instead (its AMQP properties to match).
    pub fn carrying(envelope: &Envelope) -> Self {
        Self {
            body: envelope.to_json(),
            properties: envelope_properties(envelope),
        }
    }

    pub fn envelope(&self) -> Envelope {
        Envelope::from_json(&self.body).expect("a shop CloudEvent")
    }
}

impl TakenMessage {
    pub fn header(&self, name: &str) -> Option<String> {
        service_kit::publisher::header_text(&self.properties, name)
    }
}

/// Waits until `<ns>.<service>.dlq` holds `count` messages and takes them.
pub async fn take_dead_letters(namespace: &str, service: &str, count: usize) -> Vec<TakenMessage> {
    take(&topology::dead_letter_queue_name(namespace, service), count).await
}

/// Waits until a stopped service's queue holds `count` messages and takes them out, to hold
/// them back and deliver them later ([`TestPublisher::redeliver`]), after what came behind.
pub async fn take_queued(namespace: &str, service: &str, count: usize) -> Vec<TakenMessage> {
    take(&topology::queue_name(namespace, service), count).await
}

async fn take(queue: &str, count: usize) -> Vec<TakenMessage> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable");
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while taken.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} messages in {queue}, got {}",
            taken.len()
        );
        let got = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        match got {
            Some(message) => taken.push(TakenMessage {
                body: message.delivery.data,
                properties: message.delivery.properties,
            }),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    taken
}

/// Records an event straight into a service's outbox, as a transaction that committed while
/// no relay was listening would have.
pub async fn insert_outbox_row<E: Event>(pool: &PgPool, schema: &str, event: &E) -> Envelope {
    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut *conn)
        .await
        .expect("search_path");
    let announced = Outbox::<E::Producer>::append(&mut conn, event, None)
        .await
        .expect("insert outbox row");
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .expect("reset search_path");
    announced.into_envelope()
}
