//! The auditor: checks the shop's invariants (docs/architecture.md, "Invariants") over everything in a shop's database (each
//! service's schema) and its dead-letter queues, independently of the services' own code.
//! Each violation names the order (or SKU) it concerns.

use std::fmt;

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
}

/// Where the dead-letter queues are, if they should be checked too.
pub struct Broker<'a> {
    pub amqp_url: &'a str,
    pub namespace: &'a str,
}

/// One rule: a query returning `(subject, detail)` for each violation of invariant `n`.
struct Rule {
    invariant: u8,
    sql: &'static str,
}

/// `settled` recomputed from the columns, independently of the orders crate.
const RULES: &[Rule] = &[
    Rule {
        invariant: 1,
        sql: "SELECT id::text, 'order is ' || status || ', not settled' FROM orders.orders
              WHERE NOT (status = 'confirmed' OR (status = 'cancelled' AND settled))",
    },
    Rule {
        invariant: 1,
        sql: "SELECT id::text, format('order is still %s %s s past its deadline',
                  status, round(extract(epoch FROM now() - deadline_at)))
              FROM orders.orders
              WHERE status IN ('pending', 'paid', 'stock_reserved')
                AND deadline_at < now() - interval '2 seconds'",
    },
    Rule {
        invariant: 2,
        sql: "SELECT o.id::text, format('order is %s with total %s but charged - refunded = %s',
                  o.status, o.total_cents, COALESCE(CASE p.status WHEN 'charged' THEN p.amount_cents END, 0))
              FROM orders.orders o LEFT JOIN payment.payments p ON p.order_id = o.id
              WHERE o.status IN ('confirmed', 'cancelled')
                AND COALESCE(CASE p.status WHEN 'charged' THEN p.amount_cents END, 0)
                    <> CASE o.status WHEN 'confirmed' THEN o.total_cents ELSE 0 END",
    },
    Rule {
        invariant: 2,
        sql: "SELECT p.order_id::text, 'payment for an order orders does not know'
              FROM payment.payments p LEFT JOIN orders.orders o ON o.id = p.order_id
              WHERE o.id IS NULL",
    },
    Rule {
        invariant: 2,
        sql: "SELECT correlation_id::text, format('%s announced %s times', event_type, count(*))
              FROM payment.outbox WHERE event_type IN ('PaymentCompleted', 'PaymentRefunded')
              GROUP BY correlation_id, event_type HAVING count(*) > 1",
    },
    Rule {
        invariant: 3,
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
    Rule {
        invariant: 3,
        sql: "SELECT COALESCE(r.order_id, o.id)::text,
                  format('stock reservation is %s but the order is %s',
                         COALESCE(r.status::text, 'absent'), COALESCE(o.status::text, 'unknown'))
              FROM (SELECT order_id, status FROM inventory.reservations WHERE status = 'reserved') r
              FULL JOIN (SELECT id, status FROM orders.orders WHERE status = 'confirmed') o
                  ON o.id = r.order_id
              WHERE r.order_id IS NULL OR o.id IS NULL",
    },
    Rule {
        invariant: 4,
        sql: "SELECT COALESCE(s.order_id, o.id)::text,
                  format('shipment is %s but the order is %s',
                         CASE WHEN s.order_id IS NULL THEN 'absent' ELSE 'booked' END,
                         COALESCE(o.status::text, 'not confirmed'))
              FROM (SELECT order_id FROM shipping.shipments WHERE status = 'booked') s
              FULL JOIN (SELECT id, status FROM orders.orders WHERE status = 'confirmed') o
                  ON o.id = s.order_id
              WHERE s.order_id IS NULL OR o.id IS NULL",
    },
    Rule {
        invariant: 5,
        sql: "SELECT o.id::text, format('%s order: %s confirmation, %s cancellation, %s refund notices (%s refunds)',
                  o.status, count(*) FILTER (WHERE n.kind = 'order_confirmed'),
                  count(*) FILTER (WHERE n.kind = 'order_cancelled'),
                  count(*) FILTER (WHERE n.kind = 'payment_refunded'),
                  CASE WHEN p.status = 'refunded' THEN 1 ELSE 0 END)
              FROM orders.orders o
              LEFT JOIN notifications.notifications n ON n.order_id = o.id
              LEFT JOIN payment.payments p ON p.order_id = o.id
              WHERE o.status IN ('confirmed', 'cancelled')
              GROUP BY o.id, o.status, p.status
              HAVING count(*) FILTER (WHERE n.kind = 'order_confirmed')
                         <> CASE WHEN o.status = 'confirmed' THEN 1 ELSE 0 END
                  OR count(*) FILTER (WHERE n.kind = 'order_cancelled')
                         <> CASE WHEN o.status = 'cancelled' THEN 1 ELSE 0 END
                  OR count(*) FILTER (WHERE n.kind = 'payment_refunded')
                         <> CASE WHEN p.status = 'refunded' THEN 1 ELSE 0 END",
    },
    Rule {
        invariant: 6,
        sql: "SELECT schema, format('%s outbox rows unsent, the oldest from %s', n, oldest)
              FROM (SELECT 'orders' AS schema, count(*) AS n, min(created_at) AS oldest
                        FROM orders.outbox WHERE sent_at IS NULL
                    UNION ALL SELECT 'payment', count(*), min(created_at)
                        FROM payment.outbox WHERE sent_at IS NULL
                    UNION ALL SELECT 'inventory', count(*), min(created_at)
                        FROM inventory.outbox WHERE sent_at IS NULL
                    UNION ALL SELECT 'shipping', count(*), min(created_at)
                        FROM shipping.outbox WHERE sent_at IS NULL) unsent
              WHERE n > 0",
    },
];

pub async fn audit(pool: &PgPool, broker: Option<&Broker<'_>>) -> Result<Report, AuditError> {
    let (orders, confirmed, cancelled): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'confirmed'),
                count(*) FILTER (WHERE status = 'cancelled') FROM orders.orders",
    )
    .fetch_one(pool)
    .await?;
    let mut violations = Vec::new();
    for rule in RULES {
        let rows: Vec<(Option<String>, String)> = sqlx::query_as(rule.sql).fetch_all(pool).await?;
        violations.extend(rows.into_iter().map(|(subject, detail)| Violation {
            invariant: rule.invariant,
            subject,
            detail,
        }));
    }
    if let Some(broker) = broker {
        violations.extend(dead_letters(broker).await?);
    }
    Ok(Report {
        orders,
        confirmed,
        cancelled,
        violations,
    })
}

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
    pool: &PgPool,
    broker: Option<&Broker<'_>>,
    patience: std::time::Duration,
) -> Result<Report, AuditError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let report = audit(pool, broker).await?;
        if report.is_clean() || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The order ids a report names (for tests and tooling).
pub fn orders_named(report: &Report) -> Vec<Uuid> {
    report
        .violations
        .iter()
        .filter_map(|v| v.subject.as_deref()?.parse().ok())
        .collect()
}
