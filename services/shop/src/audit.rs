//! The auditor: checks the shop's invariants (docs/architecture.md, "Invariants") over every
//! service's schema and the dead-letter queues, independently of the services' own code. Each
//! service's schema may live on its own Postgres server: a check within one service runs as
//! SQL there; a check across services reads each side from its own database and compares.
//! Each violation names the order (or SKU) it concerns.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's number in docs/architecture.md, "Invariants".
    pub invariant: u8,
    /// The order or SKU concerned, if any.
    pub subject: Option<String>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(subject) => write!(f, "[{}] {subject}: {}", self.invariant, self.detail),
            None => write!(f, "[{}] {}", self.invariant, self.detail),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub orders: i64,
    pub confirmed: i64,
    pub cancelled: i64,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} orders: {} confirmed, {} cancelled, {} other",
            self.orders,
            self.confirmed,
            self.cancelled,
            self.orders - self.confirmed - self.cancelled
        )?;
        for violation in &self.violations {
            writeln!(f, "VIOLATION {violation}")?;
        }
        if self.is_clean() {
            writeln!(f, "all invariants hold")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot read the database")]
    Database(#[from] sqlx::Error),
    #[error("cannot inspect the broker")]
    Broker(#[from] lapin::Error),
    #[error("no database given for {0}")]
    NoDatabase(String),
    #[error("an audit did not finish within {0:?} (a connection left hanging by a restart?)")]
    TimedOut(std::time::Duration),
}

/// Where the dead-letter queues are, if they should be checked too.
pub struct Broker<'a> {
    pub amqp_url: &'a str,
    pub namespace: &'a str,
}

/// One rule: a query returning `(subject, detail)` for each violation of invariant `n`.
/// The databases the auditor reads: one per service, which may all be the same (one server,
/// one schema each) or each its own server.
#[derive(Clone)]
pub struct Databases {
    pools: BTreeMap<&'static str, PgPool>,
}

impl Databases {
    /// Every service's schema in one database.
    pub fn single(pool: &PgPool) -> Self {
        Self {
            pools: crate::registry::names()
                .map(|service| (service, pool.clone()))
                .collect(),
        }
    }

    /// Each service's schema where `pool_of` says (its own server, or a shared one).
    pub fn per_service(mut pool_of: impl FnMut(&'static str) -> PgPool) -> Self {
        Self {
            pools: crate::registry::names()
                .map(|service| (service, pool_of(service)))
                .collect(),
        }
    }

    fn of(&self, service: &str) -> Result<&PgPool, AuditError> {
        self.pools
            .get(service)
            .ok_or_else(|| AuditError::NoDatabase(service.to_owned()))
    }
}

/// A check one service's own database can answer: `(subject, detail)` rows are violations.
struct Rule {
    invariant: u8,
    service: &'static str,
    sql: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        invariant: 1,
        service: "orders",
        sql: "SELECT id::text, 'order is ' || status || ', not settled' FROM orders.orders
              WHERE NOT (status = 'confirmed' OR (status = 'cancelled' AND settled))",
    },
    Rule {
        invariant: 1,
        service: "orders",
        sql: "SELECT id::text, format('order is still %s %s s past its deadline',
                  status, round(extract(epoch FROM now() - deadline_at)))
              FROM orders.orders
              WHERE status IN ('pending', 'paid', 'stock_reserved')
                AND deadline_at < now() - interval '2 seconds'",
    },
    Rule {
        invariant: 2,
        service: "payment",
        sql: "SELECT correlation_id::text, format('%s announced %s times', event_type, count(*))
              FROM payment.outbox WHERE event_type IN ('PaymentCompleted', 'PaymentRefunded')
              GROUP BY correlation_id, event_type HAVING count(*) > 1",
    },
    Rule {
        invariant: 3,
        service: "inventory",
        sql: "SELECT s.sku, format('seeded %s but available %s + reserved %s (held by reservations: %s)',
                  s.seeded, s.available, s.reserved, COALESCE(h.held, 0))
              FROM inventory.stock s
              LEFT JOIN (SELECT i.sku, sum(i.quantity) AS held
                         FROM inventory.reservations r
                         JOIN inventory.order_items i ON i.order_id = r.order_id
                         WHERE r.status = 'reserved' GROUP BY i.sku) h ON h.sku = s.sku
              WHERE s.available < 0 OR s.reserved < 0
                 OR s.seeded <> s.available + s.reserved OR s.reserved <> COALESCE(h.held, 0)",
    },
];

/// The services whose outbox must be empty of unsent rows (those that announce anything).
fn announcing_services() -> impl Iterator<Item = &'static str> {
    crate::registry::names().filter(|service| {
        shared_events::CATALOG
            .iter()
            .chain(shared_events::COMMANDS)
            .any(|message| message.producer == *service)
    })
}

/// What each service's database says about one order, for the checks that span services
/// (read from each database on its own: they may be different servers).
#[derive(Default)]
struct Books {
    /// orders: id → (status, total).
    orders: BTreeMap<Uuid, (String, i64)>,
    /// payment: order id → (status, amount).
    payments: BTreeMap<Uuid, (String, i64)>,
    /// inventory: orders holding stock.
    reserved: BTreeSet<Uuid>,
    /// shipping: orders with a booked (not cancelled) shipment.
    booked: BTreeSet<Uuid>,
    /// notifications: order id → notices by kind.
    notices: BTreeMap<Uuid, BTreeMap<String, i64>>,
}

impl Books {
    async fn read(databases: &Databases) -> Result<Self, AuditError> {
        let orders: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT id, status::text, total_cents FROM orders.orders")
                .fetch_all(databases.of("orders")?)
                .await?;
        let payments: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT order_id, status::text, amount_cents FROM payment.payments")
                .fetch_all(databases.of("payment")?)
                .await?;
        let reserved: Vec<Uuid> = sqlx::query_scalar(
            "SELECT order_id FROM inventory.reservations WHERE status = 'reserved'",
        )
        .fetch_all(databases.of("inventory")?)
        .await?;
        let booked: Vec<Uuid> =
            sqlx::query_scalar("SELECT order_id FROM shipping.shipments WHERE status = 'booked'")
                .fetch_all(databases.of("shipping")?)
                .await?;
        let notices: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT order_id, kind, count(*) FROM notifications.notifications
             GROUP BY order_id, kind",
        )
        .fetch_all(databases.of("notifications")?)
        .await?;
        let mut books = Self {
            orders: orders.into_iter().map(|(id, s, t)| (id, (s, t))).collect(),
            payments: payments
                .into_iter()
                .map(|(id, s, a)| (id, (s, a)))
                .collect(),
            reserved: reserved.into_iter().collect(),
            booked: booked.into_iter().collect(),
            notices: BTreeMap::new(),
        };
        for (order_id, kind, count) in notices {
            books
                .notices
                .entry(order_id)
                .or_default()
                .insert(kind, count);
        }
        Ok(books)
    }

    fn status(&self, order_id: &Uuid) -> Option<&str> {
        self.orders.get(order_id).map(|(status, _)| status.as_str())
    }

    /// Invariants 2 to 5 across services.
    fn violations(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut violation = |invariant: u8, order_id: &Uuid, detail: String| {
            violations.push(Violation {
                invariant,
                subject: Some(order_id.to_string()),
                detail,
            });
        };
        for (order_id, (status, total)) in &self.orders {
            let settled = status == "confirmed" || status == "cancelled";
            let payment = self.payments.get(order_id);
            let charged = match payment {
                Some((payment_status, amount)) if payment_status == "charged" => *amount,
                _ => 0,
            };
            let owed = if status == "confirmed" { *total } else { 0 };
            if settled && charged != owed {
                violation(
                    2,
                    order_id,
                    format!(
                        "order is {status} with total {total} but charged - refunded = {charged}"
                    ),
                );
            }
            if settled {
                let count = |kind: &str| {
                    self.notices
                        .get(order_id)
                        .and_then(|kinds| kinds.get(kind))
                        .copied()
                        .unwrap_or(0)
                };
                let refunded =
                    payment.is_some_and(|(payment_status, _)| payment_status == "refunded");
                let (confirmations, cancellations, refunds) = (
                    count("order_confirmed"),
                    count("order_cancelled"),
                    count("payment_refunded"),
                );
                if confirmations != i64::from(status == "confirmed")
                    || cancellations != i64::from(status == "cancelled")
                    || refunds != i64::from(refunded)
                {
                    violation(
                        5,
                        order_id,
                        format!(
                            "{status} order: {confirmations} confirmation, {cancellations} \
                             cancellation, {refunds} refund notices ({} refunds)",
                            i64::from(refunded)
                        ),
                    );
                }
            }
        }
        for order_id in self.payments.keys() {
            if !self.orders.contains_key(order_id) {
                violation(
                    2,
                    order_id,
                    "payment for an order orders does not know".to_owned(),
                );
            }
        }
        let confirmed: BTreeSet<&Uuid> = self
            .orders
            .iter()
            .filter(|(_, (status, _))| status == "confirmed")
            .map(|(id, _)| id)
            .collect();
        for (invariant, held, what) in [
            (3, &self.reserved, "stock reservation"),
            (4, &self.booked, "shipment"),
        ] {
            for order_id in held.iter().filter(|id| !confirmed.contains(id)) {
                let status = self.status(order_id).unwrap_or("unknown");
                let state = if invariant == 3 { "reserved" } else { "booked" };
                violation(
                    invariant,
                    order_id,
                    format!("{what} is {state} but the order is {status}"),
                );
            }
            for order_id in confirmed.iter().filter(|id| !held.contains(id)) {
                violation(
                    invariant,
                    order_id,
                    format!("{what} is absent but the order is confirmed"),
                );
            }
        }
        violations
    }
}

/// Checks every invariant over the services' databases (and, given the broker, the
/// dead-letter queues).
pub async fn audit(
    databases: &Databases,
    broker: Option<&Broker<'_>>,
) -> Result<Report, AuditError> {
    let orders = databases.of("orders")?;
    let (total, confirmed, cancelled): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'confirmed'),
                count(*) FILTER (WHERE status = 'cancelled') FROM orders.orders",
    )
    .fetch_one(orders)
    .await?;
    let mut violations = Vec::new();
    for rule in RULES {
        let rows: Vec<(Option<String>, String)> = sqlx::query_as(rule.sql)
            .fetch_all(databases.of(rule.service)?)
            .await?;
        violations.extend(rows.into_iter().map(|(subject, detail)| Violation {
            invariant: rule.invariant,
            subject,
            detail,
        }));
    }
    violations.extend(Books::read(databases).await?.violations());
    for service in announcing_services() {
        let database = databases.of(service)?;
        // The saga's schema exists only where the shop ran orchestrated.
        let outbox = format!("{service}.outbox");
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&outbox)
            .fetch_one(database)
            .await?;
        if !exists {
            continue;
        }
        let (unsent, oldest): (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), min(created_at)::text FROM {outbox} WHERE sent_at IS NULL"
        )))
        .fetch_one(database)
        .await?;
        if let Some(oldest) = oldest.filter(|_| unsent > 0) {
            violations.push(Violation {
                invariant: 6,
                subject: Some(service.to_owned()),
                detail: format!("{unsent} outbox rows unsent, the oldest from {oldest}"),
            });
        }
    }
    if let Some(broker) = broker {
        // A broker that accepts the connection but never answers (a cluster node still coming
        // up) must not hang the audit: unanswered, the queues are not known to be empty.
        match tokio::time::timeout(BROKER_PATIENCE, dead_letters(broker)).await {
            Ok(found) => violations.extend(found?),
            Err(_) => violations.push(Violation {
                invariant: 6,
                subject: None,
                detail: format!(
                    "the broker did not say within {BROKER_PATIENCE:?} whether the dead-letter queues are empty"
                ),
            }),
        }
    }
    Ok(Report {
        orders: total,
        confirmed,
        cancelled,
        violations,
    })
}

/// How long the broker may take to answer one look at the dead-letter queues.
const BROKER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Invariant 6, broker side: every dead-letter queue is empty.
async fn dead_letters(broker: &Broker<'_>) -> Result<Vec<Violation>, AuditError> {
    let connection = Connection::connect(broker.amqp_url, ConnectionProperties::default()).await?;
    let mut violations = Vec::new();
    for service in crate::registry::names() {
        let queue = service_kit::topology::dead_letter_queue_name(broker.namespace, service);
        // A passive declare only reads the count; a queue that does not exist yet is empty.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(declared) = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            let count = declared.message_count();
            if count > 0 {
                violations.push(Violation {
                    invariant: 6,
                    subject: Some(queue.clone()),
                    detail: format!("{count} dead letters"),
                });
            }
            let _ = channel.close(200, "audited".into()).await;
        }
    }
    let _ = connection.close(200, "audited".into()).await;
    Ok(violations)
}

/// Audits until the shop is clean or `patience` runs out (orders still in flight are not
/// violations yet); returns the last report.
pub async fn audit_until_clean(
    databases: &Databases,
    broker: Option<&Broker<'_>>,
    patience: std::time::Duration,
) -> Result<Report, AuditError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        // One try may hang on a connection a database or broker restart left half-open: it is
        // given up and tried again rather than waited for.
        let report = match tokio::time::timeout(AUDIT_TIMEOUT, audit(databases, broker)).await {
            Ok(report) => Some(report?),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(AuditError::TimedOut(AUDIT_TIMEOUT));
            }
            Err(_) => None,
        };
        if let Some(report) = report
            && (report.is_clean() || tokio::time::Instant::now() >= deadline)
        {
            return Ok(report);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The longest one audit may take (a few hundred milliseconds is usual).
const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The order ids a report names (for tests and tooling).
pub fn orders_named(report: &Report) -> Vec<Uuid> {
    report
        .violations
        .iter()
        .filter_map(|v| v.subject.as_deref()?.parse().ok())
        .collect()
}
