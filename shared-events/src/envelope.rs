use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Message;

/// The CloudEvents version of every message on the wire.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";
/// The content type of a CloudEvent in structured mode (the whole event is the JSON body).
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Every event's CloudEvents `type` is `shop.<Event>.v<version>`.
const TYPE_PREFIX: &str = "shop.";
/// Every event's CloudEvents `source` is `urn:shop:<producing service>`.
const SOURCE_PREFIX: &str = "urn:shop:";
const DATA_CONTENT_TYPE: &str = "application/json";

/// One event of the shop. On the wire it is a CloudEvent 1.0 in structured JSON mode
/// (docs/architecture.md, "The envelope"), so any CloudEvents SDK reads it.
///
/// The payload stays raw JSON until a consumer that knows the type asks for it, so a message
/// of an unknown type or version can still be read, logged and dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CloudEvent", into = "CloudEvent")]
pub struct Envelope {
    pub message_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub producer: String,
    /// The order id: every event of one order's saga shares it.
    pub correlation_id: Uuid,
    /// The `message_id` of the event that caused this one; `None` for a saga's first event.
    pub causation_id: Option<Uuid>,
    /// The W3C trace context of the span that sent this message (the CloudEvents
    /// distributed-tracing extension); `None` when it was sent outside any trace.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub payload: serde_json::Value,
}

/// The CloudEvents attributes of an envelope, as they travel.
#[derive(Serialize, Deserialize)]
struct CloudEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    /// Extension attributes: lower-case letters and digits only, as CloudEvents requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlationid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causationid: Option<Uuid>,
    /// The distributed-tracing extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

impl From<Envelope> for CloudEvent {
    fn from(envelope: Envelope) -> Self {
        Self {
            specversion: CLOUDEVENTS_SPEC_VERSION.to_owned(),
            id: envelope.message_id.to_string(),
            source: format!("{SOURCE_PREFIX}{}", envelope.producer),
            event_type: cloudevents_type(&envelope.event_type, envelope.version),
            subject: Some(envelope.correlation_id.to_string()),
            time: Some(envelope.occurred_at),
            datacontenttype: Some(DATA_CONTENT_TYPE.to_owned()),
            correlationid: Some(envelope.correlation_id),
            causationid: envelope.causation_id,
            traceparent: envelope.traceparent,
            tracestate: envelope.tracestate,
            data: Some(envelope.payload),
        }
    }
}

impl TryFrom<CloudEvent> for Envelope {
    type Error = String;

    /// Accepts a valid CloudEvent 1.0 that carries everything a shop event has.
    fn try_from(event: CloudEvent) -> Result<Self, String> {
        if event.specversion != CLOUDEVENTS_SPEC_VERSION {
            return Err(format!(
                "specversion {:?} is not CloudEvents {CLOUDEVENTS_SPEC_VERSION}",
                event.specversion
            ));
        }
        let message_id =
            Uuid::parse_str(&event.id).map_err(|_| format!("id {:?} is not a UUID", event.id))?;
        let producer = event
            .source
            .strip_prefix(SOURCE_PREFIX)
            .filter(|service| !service.is_empty())
            .ok_or_else(|| format!("source {:?} is not {SOURCE_PREFIX}<service>", event.source))?;
        let (event_type, version) = parse_cloudevents_type(&event.event_type)?;
        let correlation_id = event
            .correlationid
            .ok_or("the correlationid attribute (the order id) is missing")?;
        if let Some(subject) = &event.subject
            && *subject != correlation_id.to_string()
        {
            return Err(format!(
                "subject {subject:?} is not the order id {correlation_id}"
            ));
        }
        if let Some(content_type) = &event.datacontenttype
            && content_type != DATA_CONTENT_TYPE
        {
            return Err(format!(
                "datacontenttype {content_type:?} is not {DATA_CONTENT_TYPE}"
            ));
        }
        Ok(Self {
            message_id,
            event_type: event_type.to_owned(),
            version,
            occurred_at: event.time.ok_or("the time attribute is missing")?,
            producer: producer.to_owned(),
            correlation_id,
            causation_id: event.causationid,
            traceparent: event.traceparent,
            tracestate: event.tracestate,
            payload: event.data.ok_or("the data attribute is missing")?,
        })
    }
}

/// `shop.PaymentCompleted.v1` for version 1 of PaymentCompleted.
pub fn cloudevents_type(event_type: &str, version: u32) -> String {
    format!("{TYPE_PREFIX}{event_type}.v{version}")
}

fn parse_cloudevents_type(ce_type: &str) -> Result<(&str, u32), String> {
    let invalid = || format!("type {ce_type:?} is not shop.<Event>.v<version>");
    let (name, version) = ce_type
        .strip_prefix(TYPE_PREFIX)
        .and_then(|rest| rest.rsplit_once(".v"))
        .ok_or_else(invalid)?;
    let version = version.parse().map_err(|_| invalid())?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid());
    }
    Ok((name, version))
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a shop CloudEvent: {0}")]
    Malformed(serde_json::Error),
    #[error("expected a {expected} event, got {actual}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error(
        "unsupported version {actual} of {event_type} (this build reads versions {oldest} to {newest})"
    )]
    UnsupportedVersion {
        event_type: &'static str,
        actual: u32,
        oldest: u32,
        newest: u32,
    },
    #[error("cannot upgrade {event_type} from version {from}: {reason}")]
    Upgrade {
        event_type: &'static str,
        from: u32,
        reason: String,
    },
    #[error("invalid {event_type} payload: {error}")]
    InvalidPayload {
        event_type: &'static str,
        error: serde_json::Error,
    },
}

impl Envelope {
    /// Wraps a new fact. `causation_id` is the message that led to it, if any.
    pub fn new<E: Message>(event: &E, causation_id: Option<Uuid>) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            version: E::VERSION,
            // Microseconds: what Postgres and most JSON readers keep without rounding.
            occurred_at: Utc::now().trunc_subsecs(6),
            producer: E::PRODUCER.to_owned(),
            correlation_id: event.order_id(),
            causation_id,
            // Set by the sender from the span it is in (the service kit's telemetry).
            traceparent: None,
            tracestate: None,
            // Catalog payloads are plain structs with string keys: serializing them cannot fail.
            payload: serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(DecodeError::Malformed)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The CloudEvents `type`: `shop.<Event>.v<version>`.
    pub fn cloudevents_type(&self) -> String {
        cloudevents_type(&self.event_type, self.version)
    }

    /// The typed payload, if this envelope carries a readable `E`.
    pub fn decode<E: Message>(&self) -> Result<E, DecodeError> {
        if self.event_type != E::TYPE {
            return Err(DecodeError::WrongType {
                expected: E::TYPE,
                actual: self.event_type.clone(),
            });
        }
        if !(E::OLDEST_READ..=E::VERSION).contains(&self.version) {
            return Err(DecodeError::UnsupportedVersion {
                event_type: E::TYPE,
                actual: self.version,
                oldest: E::OLDEST_READ,
                newest: E::VERSION,
            });
        }
        let payload = if self.version < E::VERSION {
            // The one place an old version is known: it becomes the current shape here, so
            // no handler ever sees two shapes of one event.
            E::upgrade(self.version, self.payload.clone(), self.occurred_at).map_err(|reason| {
                DecodeError::Upgrade {
                    event_type: E::TYPE,
                    from: self.version,
                    reason,
                }
            })?
        } else {
            self.payload.clone()
        };
        serde_json::from_value(payload).map_err(|error| DecodeError::InvalidPayload {
            event_type: E::TYPE,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OrderConfirmed, PaymentFailed};

    #[test]
    fn new_envelope_correlates_by_order_and_points_at_its_cause() {
        let order_id = Uuid::now_v7();
        let cause = Uuid::now_v7();
        let envelope = Envelope::new(&OrderConfirmed { order_id }, Some(cause));
        assert_eq!(envelope.correlation_id, order_id);
        assert_eq!(envelope.causation_id, Some(cause));
        assert_eq!(envelope.producer, "orders");
        assert_eq!(envelope.event_type, "OrderConfirmed");
        assert_eq!(envelope.message_id.get_version_num(), 7);
        assert_eq!(
            envelope.decode::<OrderConfirmed>().ok(),
            Some(OrderConfirmed { order_id })
        );
    }

    #[test]
    fn decode_rejects_wrong_type_and_version() {
        let mut envelope = Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::nil(),
            },
            None,
        );
        assert!(matches!(
            envelope.decode::<PaymentFailed>(),
            Err(DecodeError::WrongType { .. })
        ));
        envelope.version = 2;
        assert!(matches!(
            envelope.decode::<OrderConfirmed>(),
            Err(DecodeError::UnsupportedVersion { actual: 2, .. })
        ));
    }

    #[test]
    fn on_the_wire_it_is_a_structured_cloudevent() {
        let order_id = Uuid::now_v7();
        let cause = Uuid::now_v7();
        let mut envelope = Envelope::new(&OrderConfirmed { order_id }, Some(cause));
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        envelope.traceparent = Some(traceparent.to_owned());
        let wire: serde_json::Value = serde_json::from_slice(&envelope.to_json()).expect("JSON");
        assert_eq!(wire["specversion"], "1.0");
        assert_eq!(wire["id"], envelope.message_id.to_string());
        assert_eq!(wire["source"], "urn:shop:orders");
        assert_eq!(wire["type"], "shop.OrderConfirmed.v1");
        assert_eq!(wire["subject"], order_id.to_string());
        assert_eq!(wire["datacontenttype"], "application/json");
        assert_eq!(wire["correlationid"], order_id.to_string());
        assert_eq!(wire["causationid"], cause.to_string());
        assert_eq!(wire["traceparent"], traceparent);
        assert!(wire.get("tracestate").is_none(), "absent, not null");
        assert_eq!(wire["data"]["order_id"], order_id.to_string());
        assert_eq!(
            Envelope::from_json(&envelope.to_json()).ok(),
            Some(envelope),
            "round trip"
        );
    }

    #[test]
    fn a_message_that_is_not_a_shop_cloudevent_is_refused_with_the_reason() {
        let valid = Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
            None,
        );
        let wire: serde_json::Value = serde_json::from_slice(&valid.to_json()).expect("JSON");
        let broken = |change: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut event = wire.as_object().expect("an object").clone();
            change(&mut event);
            let bytes = serde_json::to_vec(&event).expect("JSON");
            match Envelope::from_json(&bytes) {
                Err(DecodeError::Malformed(e)) => e.to_string(),
                other => panic!("accepted {event:?}: {other:?}"),
            }
        };
        type Change = dyn Fn(&mut serde_json::Map<String, serde_json::Value>);
        let cases: [(&Change, &str); 9] = [
            (&|e| drop(e.remove("specversion")), "specversion"),
            (
                &|e| drop(e.insert("specversion".into(), "0.3".into())),
                "specversion",
            ),
            (
                &|e| drop(e.insert("id".into(), "order-1".into())),
                "not a UUID",
            ),
            (
                &|e| drop(e.insert("source".into(), "/payment".into())),
                "source",
            ),
            (
                &|e| drop(e.insert("type".into(), "OrderConfirmed".into())),
                "type",
            ),
            (
                &|e| drop(e.insert("type".into(), "shop.OrderConfirmed.one".into())),
                "type",
            ),
            (&|e| drop(e.remove("correlationid")), "correlationid"),
            (&|e| drop(e.remove("time")), "time"),
            (&|e| drop(e.remove("data")), "data"),
        ];
        for (change, expected) in cases {
            let reason = broken(change);
            assert!(
                reason.contains(expected),
                "{reason:?} should name {expected}"
            );
        }
        let other_subject = broken(&|e| drop(e.insert("subject".into(), "x".into())));
        assert!(other_subject.contains("subject"), "{other_subject}");
        let other_content =
            broken(&|e| drop(e.insert("datacontenttype".into(), "text/plain".into())));
        assert!(other_content.contains("datacontenttype"), "{other_content}");
    }

    #[test]
    fn cloudevents_types_name_the_event_and_its_version() {
        assert_eq!(cloudevents_type("OrderPlaced", 1), "shop.OrderPlaced.v1");
        assert_eq!(
            parse_cloudevents_type("shop.OrderPlaced.v12"),
            Ok(("OrderPlaced", 12))
        );
        assert!(parse_cloudevents_type("shop..v1").is_err());
        assert!(parse_cloudevents_type("shop.Order.Placed.v1").is_err());
        assert!(parse_cloudevents_type("com.example.OrderPlaced.v1").is_err());
    }

    #[test]
    fn malformed_json_is_a_decode_error_not_a_panic() {
        assert!(matches!(
            Envelope::from_json(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
