//! A shop on a fresh database and namespace, and the instruments to watch it: what the chaos
//! run and the integration tests share.
//!
//! - [`Sandbox`]: a database and a `SHOP_NAMESPACE` of their own on the shared Postgres and
//!   RabbitMQ, deleted again by [`Sandbox::cleanup`]; creating one first checks that both are
//!   reachable and says what to start if not.
//! - [`EventTap`]: records every event published on the namespace's exchange, reconnecting
//!   through broker restarts, without taking messages from any service.
//! - [`order_body`], [`set_stock`]: placing orders, and stock to place them against;
//!   [`order_placed`]: the event of one, for tests that play orders' part.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, ExchangeDeleteOptions, QueueDeleteOptions},
};
use serde_json::{Value, json};
use service_kit::{CancellationToken, topology};
use shared_events::{Envelope, OrderLine, OrderPlaced, ShippingAddress};
use sqlx::{Connection as _, PgConnection};
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use shop::{issuer::DevIssuer, registry};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "PostgreSQL is not reachable at {server}: start it (on this machine kind: \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or point \
         the admin database URL elsewhere"
    )]
    PostgresUnreachable { server: String, source: sqlx::Error },
    #[error(
        "RabbitMQ is not reachable at {server}: start it (`rabbitmq-server -detached`) or point \
         the AMQP URL elsewhere"
    )]
    RabbitUnreachable {
        server: String,
        source: lapin::Error,
    },
    #[error("cannot create the database {database}")]
    CreateDatabase {
        database: String,
        source: sqlx::Error,
    },
    #[error("cannot make a token: {0}")]
    Token(String),
}

/// `scheme://host:port` of a URL, without credentials or path: safe to print.
pub fn server_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

/// Listeners a sandbox may run that the registry does not list: sales, the late joiner.
const LISTENERS_BEYOND_THE_REGISTRY: &[&str] = &["sales"];

/// A database and a namespace of their own.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub namespace: String,
    pub database: String,
    /// The sandbox's database; it carries the admin URL's credentials: do not print it.
    pub database_url: String,
    admin_url: String,
    pub amqp_url: String,
}

impl Sandbox {
    /// Creates `<prefix>_<id>` on the server of `admin_url` and picks the namespace
    /// `<prefix>-<id>`, after checking that Postgres and RabbitMQ both answer.
    pub async fn create(
        admin_url: &str,
        amqp_url: &str,
        prefix: &str,
    ) -> Result<Self, HarnessError> {
        let id = &Uuid::new_v4().simple().to_string()[..12];
        let database = format!("{prefix}_{id}");
        let mut admin = PgConnection::connect(admin_url).await.map_err(|source| {
            HarnessError::PostgresUnreachable {
                server: server_of(admin_url),
                source,
            }
        })?;
        let broker = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .map_err(|source| HarnessError::RabbitUnreachable {
                server: server_of(amqp_url),
                source,
            })?;
        let _ = broker.close(200, "reachable".into()).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .map_err(|source| HarnessError::CreateDatabase {
                database: database.clone(),
                source,
            })?;
        let _ = admin.close().await;
        Ok(Self {
            namespace: format!("{}-{id}", prefix.replace('_', "-")),
            database_url: service_kit::config::with_database(admin_url, &database),
            database,
            admin_url: admin_url.to_owned(),
            amqp_url: amqp_url.to_owned(),
        })
    }

    /// Deletes the database and every exchange and queue of the namespace. `retry_delays`
    /// are the delay sets the services ran with (retry queue names carry their delay).
    /// `extra_services` are names beyond the registry that declared queues (test doubles).
    pub async fn cleanup(&self, retry_delays: &[&[Duration]], extra_services: &[&str]) {
        if let Ok(connection) =
            Connection::connect(&self.amqp_url, ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            let mut services: Vec<&str> = registry::names().collect();
            services.extend_from_slice(LISTENERS_BEYOND_THE_REGISTRY);
            services.extend_from_slice(extra_services);
            for service in services {
                for delays in retry_delays {
                    let _ = topology::Topology::new(&self.namespace, service, vec![], delays)
                        .delete(&channel)
                        .await;
                }
            }
            let history = service_kit::history::history_name(&self.namespace);
            let _ = channel
                .queue_delete(history.as_str().into(), QueueDeleteOptions::default())
                .await;
            for exchange in [
                topology::exchange_name(&self.namespace),
                topology::commands_exchange_name(&self.namespace),
            ] {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "sandbox removed".into()).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// An event as the broker delivered it to the tap: enough to read it and to deliver it again.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    pub envelope: Envelope,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    /// When the tap received it.
    pub received_at: Instant,
}

/// Where the tap puts what it sees: kept in memory to be asked for, or handed on as it comes.
#[derive(Clone)]
enum Sink {
    Keep(Arc<Mutex<Vec<Seen>>>),
    Forward(mpsc::UnboundedSender<Seen>),
}

/// How long closing an [`EventTap`] may take.
const TAP_CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// Records everything published on a namespace's exchanges, events and commands (an exclusive
/// queue bound `#` to both),
/// reconnecting when the broker goes away. Bodies that are not envelopes are skipped.
pub struct EventTap {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl EventTap {
    /// Starts recording once the tap's queue is bound, so nothing published afterwards is
    /// missed. Declares the exchange if no service has yet.
    pub async fn start(amqp_url: &str, namespace: &str) -> Result<Self, lapin::Error> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        Self::open(amqp_url, namespace, seen.clone(), Sink::Keep(seen)).await
    }

    /// Like [`EventTap::start`], but hands each event to `sender` instead of keeping it (for
    /// long runs: nothing accumulates here). [`EventTap::all`] stays empty.
    pub async fn forward(
        amqp_url: &str,
        namespace: &str,
        sender: mpsc::UnboundedSender<Seen>,
    ) -> Result<Self, lapin::Error> {
        Self::open(amqp_url, namespace, Arc::default(), Sink::Forward(sender)).await
    }

    async fn open(
        amqp_url: &str,
        namespace: &str,
        seen: Arc<Mutex<Vec<Seen>>>,
        sink: Sink,
    ) -> Result<Self, lapin::Error> {
        let stop = CancellationToken::new();
        let first = Self::session(amqp_url, namespace).await?;
        let task = tokio::spawn(Self::record(
            amqp_url.to_owned(),
            namespace.to_owned(),
            first,
            sink,
            stop.clone(),
        ));
        Ok(Self { seen, stop, task })
    }

    async fn session(
        amqp_url: &str,
        namespace: &str,
    ) -> Result<(Connection, lapin::Consumer), lapin::Error> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let consumer = topology::tap(&channel, namespace, "event-tap").await?;
        Ok((connection, consumer))
    }

    async fn record(
        amqp_url: String,
        namespace: String,
        first: (Connection, lapin::Consumer),
        sink: Sink,
        stop: CancellationToken,
    ) {
        let mut session = Some(first);
        while !stop.is_cancelled() {
            let (connection, mut deliveries) = match session.take() {
                Some(session) => session,
                None => match Self::session(&amqp_url, &namespace).await {
                    Ok(session) => session,
                    Err(_) => {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            () = stop.cancelled() => break,
                        }
                    }
                },
            };
            loop {
                let delivery = tokio::select! {
                    next = deliveries.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        _ => break,
                    },
                    () = stop.cancelled() => break,
                };
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                if let Ok(envelope) = Envelope::from_json(&delivery.data) {
                    let seen = Seen {
                        routing_key: delivery.routing_key.to_string(),
                        envelope,
                        body: delivery.data,
                        properties: delivery.properties,
                        received_at: Instant::now(),
                    };
                    match &sink {
                        Sink::Keep(kept) => kept
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(seen),
                        Sink::Forward(sender) => {
                            let _ = sender.send(seen);
                        }
                    }
                }
            }
            let _ = connection.close(200, "tap done".into()).await;
        }
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn for_order(&self, order_id: Uuid) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.envelope.correlation_id == order_id)
            .collect()
    }

    /// Stops recording. A tap still connecting (to a broker that accepted the connection and
    /// then said nothing) is not waited for past [`TAP_CLOSE_PATIENCE`].
    pub async fn close(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(TAP_CLOSE_PATIENCE, self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Sets the stock of `skus` to `units`, all available, in a sandbox's database (a run that
/// owns its database reseeds it: the auditor then checks sales against the new seed). SKUs an
/// order already holds are left alone.
pub async fn set_stock(pool: &sqlx::PgPool, skus: &[&str], units: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inventory.stock SET seeded = $1, available = $1
          WHERE sku = ANY($2) AND reserved = 0",
    )
    .bind(units)
    .bind(skus)
    .execute(pool)
    .await?;
    Ok(())
}

/// A valid order body for the seeded catalog.
pub fn order_body(
    customer_id: &str,
    sku: &str,
    quantity: u32,
    payment_method: &str,
    country: &str,
) -> Value {
    json!({
        "customer_id": customer_id,
        "items": [{ "sku": sku, "quantity": quantity }],
        "payment_method": payment_method,
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": country
        }
    })
}

/// The OrderPlaced that orders would announce for `quantity` of `sku` at 12.50 (customer
/// `cust-7`, paid by card, shipped to the US), for tests that publish orders' events themselves.
pub fn order_placed(order_id: Uuid, sku: &str, quantity: u32) -> OrderPlaced {
    OrderPlaced {
        order_id,
        customer_id: "cust-7".to_owned(),
        items: vec![OrderLine {
            sku: sku.to_owned(),
            quantity,
            unit_price_cents: 1250,
        }],
        total_cents: 1250 * i64::from(quantity),
        payment_method: "card".to_owned(),
        shipping_address: ShippingAddress {
            name: "Grace Hopper".to_owned(),
            line1: "1 Navy Yard".to_owned(),
            city: "Arlington".to_owned(),
            postal_code: "22202".to_owned(),
            country: "US".to_owned(),
        },
        currency: "EUR".to_owned(),
        deadline_at: chrono::Utc::now() + chrono::TimeDelta::minutes(10),
    }
}

/// A client that calls as an operator of the shop `issuer` signs for (any order is its to
/// read and cancel); a request placing an order sends its customer's own token instead.
pub fn operator_client(issuer: &DevIssuer) -> Result<reqwest::Client, HarnessError> {
    let token = issuer
        .token("lab-operator", true, Duration::from_secs(24 * 3600))
        .map_err(|e| HarnessError::Token(e.to_string()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| HarnessError::Token("not a header value".to_owned()))?;
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| HarnessError::Token(e.to_string()))
}

/// The token of the customer an order body names, for placing it.
pub fn token_for(issuer: &DevIssuer, body: &Value) -> Result<String, HarnessError> {
    let customer = body["customer_id"].as_str().unwrap_or_default();
    issuer
        .token(customer, false, Duration::from_secs(3600))
        .map_err(|e| HarnessError::Token(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_of_drops_credentials_and_path() {
        assert_eq!(
            server_of("postgres://u:secret@db:5432/shop?sslmode=disable"),
            "postgres://db:5432"
        );
        assert_eq!(
            server_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672"
        );
    }
}
