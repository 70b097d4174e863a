use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// The JSON body of every message on the wire (docs/architecture.md, "The envelope").
///
/// The payload stays raw JSON until a consumer that knows the type asks for it, so a message
/// of an unknown type or version can still be read, logged and dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub payload: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed envelope: {0}")]
    Malformed(serde_json::Error),
    #[error("expected a {expected} event, got {actual}")]
    WrongType {
        expected: &'static str,
        actual: String,
    },
    #[error("unsupported version {actual} of {event_type} (this build reads {supported})")]
    UnsupportedVersion {
        event_type: &'static str,
        actual: u32,
        supported: u32,
    },
    #[error("invalid {event_type} payload: {error}")]
    InvalidPayload {
        event_type: &'static str,
        error: serde_json::Error,
    },
}

impl Envelope {
    /// Wraps a new fact. `causation_id` is the message that led to it, if any.
    pub fn new<E: Event>(event: &E, causation_id: Option<Uuid>) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            version: E::VERSION,
            // Microseconds: what Postgres and most JSON readers keep without rounding.
            occurred_at: Utc::now().trunc_subsecs(6),
            producer: E::PRODUCER.to_owned(),
            correlation_id: event.order_id(),
            causation_id,
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

    /// The typed payload, if this envelope carries a readable `E`.
    pub fn decode<E: Event>(&self) -> Result<E, DecodeError> {
        if self.event_type != E::TYPE {
            return Err(DecodeError::WrongType {
                expected: E::TYPE,
                actual: self.event_type.clone(),
            });
        }
        if self.version != E::VERSION {
            return Err(DecodeError::UnsupportedVersion {
                event_type: E::TYPE,
                actual: self.version,
                supported: E::VERSION,
            });
        }
        serde_json::from_value(self.payload.clone()).map_err(|error| DecodeError::InvalidPayload {
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
    fn malformed_json_is_a_decode_error_not_a_panic() {
        assert!(matches!(
            Envelope::from_json(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
