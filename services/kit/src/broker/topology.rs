//! Every exchange and queue a service declares, in one place: re-declaring a queue with other
//! arguments fails with PRECONDITION_FAILED, so no declaration lives anywhere else.
//!
//! ```text
//! <ns>.events (topic) --routing keys from Routes--> <ns>.<service> (quorum work queue)
//! <ns>.commands (topic; orchestrated style) --the commands it handles--> the same work queue
//! <ns>.events --#--> <ns>.history (the shop's stream, declared once for all: `history`)
//!
//! <ns>.<service>.private (direct; only this service publishes to it)
//!     --<ns>.<service>.retry.<ms>ms--> delay queue (quorum, TTL) --expired--> back to the work queue
//!     --<ns>.<service>.dlq-----------> dead-letter queue (quorum)
//!     --<ns>.<service>---------------> the work queue (expired retries, re-driven dead letters)
//! ```
//!
//! Every queue is a quorum queue and every dead-lettering is `at-least-once`: a message moving
//! between queues is never dropped, even across a broker restart. The private exchange keeps
//! the service off the default exchange, so its broker user can be limited to its own names.

use std::time::Duration;

use lapin::{
    Channel, Consumer, ExchangeKind,
    options::{
        BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Redeliveries (crashes, nacks) the broker allows before it dead-letters a message itself.
/// Handler failures do not count here: they go through the retry queues.
pub const DELIVERY_LIMIT: i64 = 20;

pub fn exchange_name(namespace: &str) -> String {
    format!("{namespace}.events")
}

/// Where the saga sends commands in the orchestrated style; only its broker user may write here.
pub fn commands_exchange_name(namespace: &str) -> String {
    format!("{namespace}.commands")
}

pub fn queue_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}")
}

pub fn dead_letter_queue_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}.dlq")
}

pub fn private_exchange_name(namespace: &str, service: &str) -> String {
    format!("{namespace}.{service}.private")
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub commands_exchange: String,
    /// Whether this service uses the commands exchange (the orchestrated style).
    pub uses_commands: bool,
    /// Where retries, dead letters and re-driven messages are published.
    pub private_exchange: String,
    pub queue: String,
    pub dead_letter_queue: String,
    /// One queue per delay step; the name carries the delay, so changing the delays declares
    /// new queues instead of clashing with the old ones.
    pub retry_queues: Vec<(String, Duration)>,
    pub routing_keys: Vec<&'static str>,
    /// The commands it handles, bound on the commands exchange.
    pub command_keys: Vec<&'static str>,
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
            commands_exchange: commands_exchange_name(namespace),
            uses_commands: false,
            command_keys: Vec::new(),
            private_exchange: private_exchange_name(namespace, service),
            dead_letter_queue: dead_letter_queue_name(namespace, service),
            queue,
            retry_queues,
            routing_keys,
        }
    }

    /// In the orchestrated style: declares the commands exchange and binds `command_keys`.
    pub fn with_commands(mut self, command_keys: Vec<&'static str>) -> Self {
        self.uses_commands = true;
        self.command_keys = command_keys;
        self
    }

    /// The exchange a message of this type is published to: commands to the commands
    /// exchange, events to the events exchange.
    pub fn exchange_for(&self, message_type: &str) -> &str {
        match shared_events::message_info(message_type) {
            Some(info) if info.is_command() => &self.commands_exchange,
            _ => &self.exchange,
        }
    }

    /// The retry queue that delays the given attempt (2 = first retry); the last step repeats.
    pub fn retry_queue_for(&self, next_attempt: u32) -> &str {
        let step = (next_attempt.saturating_sub(2) as usize).min(self.retry_queues.len() - 1);
        &self.retry_queues[step].0
    }

    /// Idempotent: the same service declaring twice (or two instances) is fine.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        declare_exchange(channel, &self.exchange).await?;
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.private_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;

        self.declare_queue(channel, &self.dead_letter_queue, &[])
            .await?;
        self.declare_queue(
            channel,
            &self.queue,
            &[
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                ("x-dead-letter-routing-key", text(&self.dead_letter_queue)),
            ],
        )
        .await?;
        for (retry_queue, delay) in &self.retry_queues {
            let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            self.declare_queue(
                channel,
                retry_queue,
                &[
                    ("x-message-ttl", AMQPValue::LongLongInt(ttl_ms)),
                    ("x-dead-letter-routing-key", text(&self.queue)),
                ],
            )
            .await?;
        }

        for routing_key in &self.routing_keys {
            bind(channel, &self.queue, &self.exchange, routing_key).await?;
        }
        // A binding outlives the table that asked for it: the other style's (a shop switched
        // from one to the other on the same broker) would bring messages no route handles.
        for event in shared_events::CATALOG {
            if !self.routing_keys.contains(&event.routing_key) {
                unbind(channel, &self.queue, &self.exchange, event.routing_key).await?;
            }
        }
        if self.uses_commands {
            declare_exchange(channel, &self.commands_exchange).await?;
        }
        for routing_key in &self.command_keys {
            bind(channel, &self.queue, &self.commands_exchange, routing_key).await?;
        }
        // Each queue of the service is reachable on the private exchange under its own name.
        let own_queues = std::iter::once(&self.queue)
            .chain(std::iter::once(&self.dead_letter_queue))
            .chain(self.retry_queues.iter().map(|(queue, _)| queue));
        for queue in own_queues {
            bind(channel, queue, &self.private_exchange, queue).await?;
        }
        Ok(())
    }

    /// A durable quorum queue; one with a dead-letter routing key dead-letters, at least once,
    /// through the private exchange.
    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        extra: &[(&str, AMQPValue)],
    ) -> Result<(), lapin::Error> {
        let mut arguments = vec![("x-queue-type", text("quorum"))];
        if extra
            .iter()
            .any(|(key, _)| *key == "x-dead-letter-routing-key")
        {
            arguments.extend([
                ("x-dead-letter-exchange", text(&self.private_exchange)),
                ("x-dead-letter-strategy", text("at-least-once")),
                // Required by at-least-once dead-lettering.
                ("x-overflow", text("reject-publish")),
            ]);
        }
        arguments.extend(extra.iter().cloned());
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.into(), durable, args(&arguments))
            .await?;
        Ok(())
    }

    /// Deletes everything this service declared except the shared events exchange.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let own_queues = std::iter::once(&self.queue)
            .chain(std::iter::once(&self.dead_letter_queue))
            .chain(self.retry_queues.iter().map(|(queue, _)| queue));
        for queue in own_queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.private_exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
    }
}

/// A durable topic exchange: the shop's events (`<ns>.events`), or its commands.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// An exclusive, auto-deleted queue bound to every routing key of the events exchange and of
/// the commands exchange (both declared if need be), consumed at once: how tools (the tests'
/// spy, the chaos run) watch the flow without taking messages from any service. The queue goes
/// away with the channel.
pub async fn tap(channel: &Channel, namespace: &str, tag: &str) -> Result<Consumer, lapin::Error> {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    for exchange in [exchange_name(namespace), commands_exchange_name(namespace)] {
        declare_exchange(channel, &exchange).await?;
        bind(channel, queue.name().as_str(), &exchange, "#").await?;
    }
    channel
        .basic_consume(
            queue.name().clone(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Removes a binding; one that does not exist is no error.
async fn unbind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            FieldTable::default(),
        )
        .await
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
        assert_eq!(topology.commands_exchange, "t1.commands");
        assert_eq!(topology.exchange_for("ChargePayment"), "t1.commands");
        assert_eq!(topology.exchange_for("PaymentCompleted"), "t1.events");
        assert_eq!(topology.private_exchange, "t1.payment.private");
        assert_eq!(topology.queue, "t1.payment");
        assert_eq!(topology.dead_letter_queue, "t1.payment.dlq");
        assert_eq!(topology.retry_queue_for(2), "t1.payment.retry.100ms");
        assert_eq!(topology.retry_queue_for(3), "t1.payment.retry.2000ms");
        assert_eq!(topology.retry_queue_for(9), "t1.payment.retry.2000ms");
    }
}
