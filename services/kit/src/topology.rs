//! Every exchange and queue a service declares, in one place: re-declaring a queue with other
//! arguments fails with PRECONDITION_FAILED, so no declaration lives anywhere else.
//!
//! ```text
//! <ns>.events (topic) --routing keys from Routes--> <ns>.<service> (quorum)
//!      handler failed, try again later:  publish to <ns>.<service>.retry.<ms>ms
//!                                        (TTL, then dead-lettered back to <ns>.<service>)
//!      out of tries or malformed:        publish to <ns>.<service>.dlq
//!      redelivered past the limit:       broker dead-letters to <ns>.<service>.dlq
//! ```

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Redeliveries (crashes, nacks) the broker allows before it dead-letters a message itself.
/// Handler failures do not count here: they go through the retry queues.
pub const DELIVERY_LIMIT: i64 = 20;

pub fn exchange_name(namespace: &str) -> String {
    format!("{namespace}.events")
}

pub fn queue_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}")
}

pub fn dead_letter_queue_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}.dlq")
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_queue: String,
    /// One queue per delay step; the name carries the delay, so changing the delays declares
    /// new queues instead of clashing with the old ones.
    pub retry_queues: Vec<(String, Duration)>,
    pub routing_keys: Vec<&'static str>,
}

impl Topology {
    pub fn new(
        namespace: &str,
        service: &str,
        routing_keys: Vec<&'static str>,
        retry_delays: &[Duration],
    ) -> Self {
        let queue = queue_name(namespace, service);
        let retry_queues = retry_delays
            .iter()
            .map(|delay| (format!("{queue}.retry.{}ms", delay.as_millis()), *delay))
            .collect();
        Self {
            exchange: exchange_name(namespace),
            dead_letter_queue: dead_letter_queue_name(namespace, service),
            queue,
            retry_queues,
            routing_keys,
        }
    }

    /// The retry queue that delays the given attempt (2 = first retry); the last step repeats.
    pub fn retry_queue_for(&self, next_attempt: u32) -> &str {
        let step = (next_attempt.saturating_sub(2) as usize).min(self.retry_queues.len() - 1);
        &self.retry_queues[step].0
    }

    /// Idempotent: the same service declaring twice (or two instances) is fine.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;

        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                args(&[("x-queue-type", text("quorum"))]),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable,
                args(&[
                    ("x-queue-type", text("quorum")),
                    ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text(&self.dead_letter_queue)),
                ]),
            )
            .await?;
        for (retry_queue, delay) in &self.retry_queues {
            // Classic queues: a per-queue TTL expires messages strictly in order, which is
            // exactly a delay line, and dead-lettering sends them back to the work queue.
            let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            channel
                .queue_declare(
                    retry_queue.as_str().into(),
                    durable,
                    args(&[
                        ("x-message-ttl", AMQPValue::LongLongInt(ttl_ms)),
                        ("x-dead-letter-exchange", text("")),
                        ("x-dead-letter-routing-key", text(&self.queue)),
                    ]),
                )
                .await?;
        }
        for routing_key in &self.routing_keys {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    (*routing_key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

pub(crate) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub(crate) fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_the_namespace() {
        let topology = Topology::new(
            "t1",
            "payment",
            vec!["orders.order_placed"],
            &[Duration::from_millis(100), Duration::from_secs(2)],
        );
        assert_eq!(topology.exchange, "t1.events");
        assert_eq!(topology.queue, "t1.payment");
        assert_eq!(topology.dead_letter_queue, "t1.payment.dlq");
        assert_eq!(topology.retry_queue_for(2), "t1.payment.retry.100ms");
        assert_eq!(topology.retry_queue_for(3), "t1.payment.retry.2000ms");
        assert_eq!(topology.retry_queue_for(9), "t1.payment.retry.2000ms");
    }
}
