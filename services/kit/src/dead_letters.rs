//! Inspecting and re-driving a service's dead-letter queue: the operator's side of "nothing is
//! lost". A re-driven message goes back to the service's work queue with a fresh attempt
//! count; its inbox still guarantees at most one effect.

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use shared_events::Envelope;
use uuid::Uuid;

use crate::{
    consumer::headers,
    publisher::{Outgoing, PublishError, Publisher, header_text, header_u32},
    topology,
};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// One dead letter, as much of it as can be read.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<Uuid>,
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub event_type: Option<String>,
    pub order_id: Option<Uuid>,
    pub reason: String,
    pub attempts: Option<u32>,
    pub original_routing_key: Option<String>,
}

impl DeadLetter {
    fn read(body: &[u8], properties: &BasicProperties) -> Self {
        let envelope = Envelope::from_json(body).ok();
        // Dead-lettered by the consumer: our header says why. By the broker (delivery limit):
        // its x-death header does.
        let reason = header_text(properties, headers::DEAD_LETTER_REASON)
            .or_else(|| broker_death_reason(properties))
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            message_id: envelope.as_ref().map(|e| e.message_id),
            occurred_at: envelope.as_ref().map(|e| e.occurred_at),
            event_type: envelope.as_ref().map(|e| e.event_type.clone()),
            order_id: envelope.as_ref().map(|e| e.correlation_id),
            reason,
            attempts: header_u32(properties, headers::ATTEMPT),
            original_routing_key: header_text(properties, headers::ORIGINAL_ROUTING_KEY)
                .or_else(|| broker_death_routing_key(properties)),
        }
    }
}

/// The broker's record of how it dead-lettered a message (past its delivery limit).
fn broker_death(properties: &BasicProperties) -> Option<&FieldTable> {
    let AMQPValue::FieldArray(deaths) = properties.headers().as_ref()?.inner().get("x-death")?
    else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(death) => Some(death),
        _ => None,
    }
}

fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

fn broker_death_reason(properties: &BasicProperties) -> Option<String> {
    let reason = text_of(broker_death(properties)?.inner().get("reason")?)?;
    Some(format!("broker: {reason}"))
}

/// The routing key a message the broker dead-lettered was first published under.
fn broker_death_routing_key(properties: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(keys) = broker_death(properties)?.inner().get("routing-keys")? else {
        return None;
    };
    text_of(keys.as_slice().first()?)
}

/// Reads every dead letter of `service` without removing any: all are fetched unacked on one
/// channel, and closing the channel returns them to the queue in order.
pub async fn list(
    amqp_url: &str,
    namespace: &str,
    service: &str,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = topology::dead_letter_queue_name(namespace, service);
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
    {
        letters.push(DeadLetter::read(
            &message.delivery.data,
            &message.delivery.properties,
        ));
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(letters)
}

/// What a re-drive did.
#[derive(Debug, Default)]
pub struct Redriven {
    pub moved: usize,
    /// Left in the queue: older than `DEAD_LETTER_MAX_AGE_SECS`. The inbox may have forgotten
    /// a copy that was applied, so re-driving one could apply it twice.
    pub too_old: Vec<DeadLetter>,
}

/// Moves dead letters of `service` (all, or just `only`) back to its work queue for another
/// round of attempts; each copy is confirmed before its dead letter is acked. A letter that
/// occurred more than `max_age` ago stays where it is (see [`Redriven::too_old`]).
pub async fn redrive(
    amqp_url: &str,
    namespace: &str,
    service: &str,
    only: Option<Uuid>,
    max_age: std::time::Duration,
) -> Result<Redriven, DeadLetterError> {
    let oldest =
        chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::TimeDelta::MAX);
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let publisher = Publisher::open(&connection, amqp_url).await?;
    let dead_letter_queue = topology::dead_letter_queue_name(namespace, service);
    let work_queue = topology::queue_name(namespace, service);
    let private_exchange = topology::private_exchange_name(namespace, service);
    let mut redriven = Redriven::default();
    let mut skipped = Vec::new();
    while let Some(message) = channel
        .basic_get(
            dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await?
    {
        let delivery = message.delivery;
        let letter = DeadLetter::read(&delivery.data, &delivery.properties);
        if only.is_some() && letter.message_id != only {
            skipped.push(delivery);
            continue;
        }
        if letter.occurred_at.is_some_and(|at| at < oldest) {
            redriven.too_old.push(letter);
            skipped.push(delivery);
            continue;
        }
        let mut fresh = FieldTable::default();
        if let Some(old) = delivery.properties.headers() {
            for (key, value) in old.inner() {
                if key.as_str() != headers::ATTEMPT && key.as_str() != headers::DEAD_LETTER_REASON {
                    fresh.insert(key.clone(), value.clone());
                }
            }
        }
        // How it was first published, which the copy (published by this tool) must still say;
        // a letter the broker dead-lettered (no reason of ours) has its original key in its
        // x-death and its original user-id, not our headers.
        let by_broker = header_text(&delivery.properties, headers::DEAD_LETTER_REASON).is_none();
        let first_published = [
            (
                headers::ORIGINAL_ROUTING_KEY,
                letter.original_routing_key.clone(),
            ),
            (
                headers::ORIGINAL_PUBLISHER,
                by_broker
                    .then(|| {
                        delivery
                            .properties
                            .user_id()
                            .as_ref()
                            .map(|u| u.to_string())
                    })
                    .flatten(),
            ),
        ];
        for (name, value) in first_published {
            if let Some(value) = value
                && !fresh.inner().contains_key(name)
            {
                fresh.insert(name.into(), AMQPValue::LongString(value.into()));
            }
        }
        let copy = Outgoing {
            exchange: &private_exchange,
            routing_key: &work_queue,
            body: &delivery.data,
            properties: delivery.properties.clone().with_headers(fresh),
        };
        match publisher.publish(copy).await {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                redriven.moved += 1;
            }
            Err(e) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                let _ = delivery.acker.nack(requeue).await;
                return Err(e.into());
            }
        }
    }
    for delivery in skipped {
        delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await?;
    }
    let _ = channel.close(200, "redriven".into()).await;
    let _ = connection.close(200, "redriven".into()).await;
    Ok(redriven)
}
