//! Inspecting and re-driving a service's dead-letter queue: the operator's side of "nothing is
//! lost". Dead letters are grouped by cause (service, event type and a fingerprint of the
//! reason with its particulars taken out: the same failure in many orders is one group), and a
//! group is re-driven as one. A re-driven message goes back to the service's work queue with a
//! fresh attempt count; its inbox still guarantees at most one effect. Every re-drive is recorded
//! in the service's schema (`redrives`: when, by whom, which messages).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use shared_events::Envelope;
use uuid::Uuid;

use crate::broker::{
    headers,
    publisher::{Outgoing, PublishError, Publisher, header_text, header_u32},
    topology,
};

mod record;

pub use record::{RedriveRecord, history, record};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("cannot record the re-drive in the service's database")]
    Database(#[from] sqlx::Error),
}

/// One dead letter, as much of it as can be read.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<Uuid>,
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub event_type: Option<String>,
    pub order_id: Option<Uuid>,
    pub reason: String,
    /// A fingerprint of `reason` with its particulars taken out (see [`cause_of`]).
    pub cause: String,
    /// When it was dead-lettered (by the consumer or the broker); else when it occurred.
    pub dead_lettered_at: Option<DateTime<Utc>>,
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
        let dead_lettered_at = header_text(properties, headers::DEAD_LETTERED_AT)
            .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| broker_death_time(properties))
            .or_else(|| envelope.as_ref().map(|e| e.occurred_at));
        Self {
            message_id: envelope.as_ref().map(|e| e.message_id),
            occurred_at: envelope.as_ref().map(|e| e.occurred_at),
            event_type: envelope.as_ref().map(|e| e.event_type.clone()),
            order_id: envelope.as_ref().map(|e| e.correlation_id),
            cause: cause_of(&reason),
            dead_lettered_at,
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

fn broker_death_time(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    match broker_death(properties)?.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => DateTime::from_timestamp(i64::try_from(*seconds).ok()?, 0),
        _ => None,
    }
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
    let letters = list_on(&connection, namespace, service).await;
    let _ = connection.close(200, "listed".into()).await;
    letters
}

/// [`list`] on a connection the caller keeps (the console looks every few seconds).
pub async fn list_on(
    connection: &Connection,
    namespace: &str,
    service: &str,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
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
    Ok(letters)
}

/// The fingerprint of a dead letter's reason: 12 hex digits of a hash of the reason with what
/// differs from one message to the next (ids, numbers, quoted values) taken out, so the same
/// failure in many orders has one cause.
pub fn cause_of(reason: &str) -> String {
    format!("{:012x}", fnv1a(template_of(reason).as_bytes()) >> 16)
}

/// `reason` with its particulars replaced: ids by `<id>`, quoted text by `"…"`, numbers by `<n>`.
pub fn template_of(reason: &str) -> String {
    let mut template = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(c) = rest.chars().next() {
        if let Some(len) = uuid_at(rest) {
            template.push_str("<id>");
            rest = &rest[len..];
        } else if c == '"' {
            let end = rest[1..].find('"').map_or(rest.len(), |at| at + 2);
            template.push_str("\"…\"");
            rest = &rest[end..];
        } else if c.is_ascii_digit() {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .unwrap_or(rest.len());
            template.push_str("<n>");
            rest = &rest[end..];
        } else {
            template.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    template
}

/// The length of a UUID (36 characters, hyphenated) at the start of `text`, if there is one.
fn uuid_at(text: &str) -> Option<usize> {
    let candidate = text.get(..36)?;
    Uuid::parse_str(candidate).ok().map(|_| 36)
}

/// FNV-1a, 64 bits: stable across processes and versions (the std hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Dead letters of one service with one cause.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Group {
    pub service: String,
    pub event_type: String,
    pub cause: String,
    pub count: usize,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The reason with its particulars taken out (see [`template_of`]).
    pub reason: String,
}

/// `letters` of `service` grouped by event type and cause, largest group first.
pub fn group(service: &str, letters: &[DeadLetter]) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for letter in letters {
        let event_type = letter.event_type.clone().unwrap_or_else(|| "?".to_owned());
        let group = groups
            .entry((event_type.clone(), letter.cause.clone()))
            .or_insert_with(|| Group {
                service: service.to_owned(),
                event_type,
                cause: letter.cause.clone(),
                count: 0,
                first_seen: None,
                last_seen: None,
                reason: template_of(&letter.reason),
            });
        group.count += 1;
        if let Some(at) = letter.dead_lettered_at {
            group.first_seen = Some(group.first_seen.map_or(at, |first| first.min(at)));
            group.last_seen = Some(group.last_seen.map_or(at, |last| last.max(at)));
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.cause.cmp(&b.cause)));
    groups
}

/// Which dead letters a re-drive moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Message(Uuid),
    Cause(String),
}

impl Selection {
    fn takes(&self, letter: &DeadLetter) -> bool {
        match self {
            Self::All => true,
            Self::Message(id) => letter.message_id == Some(*id),
            Self::Cause(cause) => letter.cause == *cause,
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => write!(f, "all"),
            Self::Message(id) => write!(f, "message {id}"),
            Self::Cause(cause) => write!(f, "cause {cause}"),
        }
    }
}

/// What a re-drive did.
#[derive(Debug, Default)]
pub struct Redriven {
    /// The messages moved back (an unreadable one has no id and is counted only in `moved`).
    pub moved: usize,
    pub message_ids: Vec<Uuid>,
    /// Left in the queue: older than `DEAD_LETTER_MAX_AGE_SECS`. The inbox may have forgotten
    /// a copy that was applied, so re-driving one could apply it twice.
    pub too_old: Vec<DeadLetter>,
}

/// Moves the dead letters of `service` that `selection` takes back to its work queue for
/// another round of attempts; each copy is confirmed before its dead letter is acked. A letter
/// that occurred more than `max_age` ago stays where it is (see [`Redriven::too_old`]).
pub async fn redrive(
    amqp_url: &str,
    namespace: &str,
    service: &str,
    selection: &Selection,
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
        if !selection.takes(&letter) {
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
                redriven.message_ids.extend(letter.message_id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_in_many_orders_has_one_cause() {
        let a =
            "order 0192f3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6 not found after 10 attempts over 12.5 s";
        let b = "order 0192f3c4-0000-7c8d-9e0f-000000000000 not found after 3 attempts over 0.3 s";
        assert_eq!(
            template_of(a),
            "order <id> not found after <n> attempts over <n> s"
        );
        assert_eq!(cause_of(a), cause_of(b));
        assert_eq!(cause_of(a).len(), 12);
        let quoted = |value| format!("currency {value} not accepted");
        assert_eq!(cause_of(&quoted("\"XYZ\"")), cause_of(&quoted("\"ABC\"")));
    }

    #[test]
    fn different_failures_have_different_causes() {
        assert_ne!(
            cause_of("card declined"),
            cause_of("the database cannot store this message's data")
        );
        assert_ne!(
            cause_of("order <id> not found"),
            cause_of("stock <id> not found")
        );
    }

    fn letter(event: &str, reason: &str, at: i64) -> DeadLetter {
        DeadLetter {
            message_id: Some(Uuid::now_v7()),
            occurred_at: None,
            event_type: Some(event.to_owned()),
            order_id: None,
            reason: reason.to_owned(),
            cause: cause_of(reason),
            dead_lettered_at: DateTime::from_timestamp(at, 0),
            attempts: Some(1),
            original_routing_key: None,
        }
    }

    #[test]
    fn groups_count_by_event_type_and_cause_with_first_and_last_seen() {
        let letters = [
            letter("OrderPlaced", "bad data 1", 30),
            letter("OrderPlaced", "bad data 2", 10),
            letter("OrderPlaced", "bad data 3", 20),
            letter("OrderCancelled", "bad data 4", 40),
            letter("OrderPlaced", "card declined", 50),
        ];
        let groups = group("payment", &letters);
        assert_eq!(groups.len(), 3);
        let first = &groups[0];
        assert_eq!(
            (
                first.event_type.as_str(),
                first.count,
                first.reason.as_str()
            ),
            ("OrderPlaced", 3, "bad data <n>")
        );
        assert_eq!(first.first_seen, DateTime::from_timestamp(10, 0));
        assert_eq!(first.last_seen, DateTime::from_timestamp(30, 0));
        assert!(Selection::Cause(first.cause.clone()).takes(&letters[1]));
        assert!(!Selection::Cause(first.cause.clone()).takes(&letters[4]));
    }
}
