//! Publishing with publisher confirms and `mandatory`: a message counts as sent only when the
//! broker acknowledged it AND routed it to at least one queue.

use std::time::Duration;

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use shared_events::{CLOUDEVENTS_CONTENT_TYPE, Envelope};

/// How long to wait for a confirm: a broker under a resource alarm blocks publishers, and a
/// row must not stay locked forever behind it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed: reconnect before trying again.
    #[error("broker channel failed")]
    Channel(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("unroutable: {reply_code} {reply_text} (no queue is bound to this routing key)")]
    Returned { reply_code: u16, reply_text: String },
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// Whether the connection itself is in doubt, as opposed to this one message.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Self::Channel(_) | Self::Timeout(_))
    }
}

/// A message ready to go: where to, and what.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// The connection's broker user, stamped on every message as its `user-id`.
    user: ShortString,
}

impl Publisher {
    /// A channel in confirm mode on a connection used for publishing only: a broker that blocks
    /// publishers then cannot stall the acks of the consuming connection. `amqp_url` is the
    /// one the connection was made with: its user signs every message.
    pub async fn open(connection: &Connection, amqp_url: &str) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            user: broker_user(amqp_url).into(),
        })
    }

    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(message).await?.await
    }

    /// Sends every message before waiting for any confirm (one round trip per batch, not per
    /// message), then reports each message's fate in order.
    pub async fn publish_all(&self, messages: Vec<Outgoing<'_>>) -> Vec<Result<(), PublishError>> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            pending.push(self.send(message).await);
        }
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            results.push(match sent {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Sends one message; the future it returns yields the broker's verdict, so a caller can
    /// go on sending while confirms are on their way.
    pub(crate) async fn send(
        &self,
        message: Outgoing<'_>,
    ) -> Result<impl Future<Output = Result<(), PublishError>> + Send + 'static, PublishError> {
        // The broker refuses a `user-id` other than the connection's own, so a consumer can
        // believe it: this is who published the message (a copy's original publisher travels
        // in a header, see `provenance`).
        let properties = message.properties.with_user_id(self.user.clone());
        // On a connection that died without lapin noticing yet, even the send can hang.
        let send = self.channel.basic_publish(
            ShortString::from(message.exchange),
            ShortString::from(message.routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            message.body,
            properties,
        );
        match tokio::time::timeout(CONFIRM_TIMEOUT, send).await {
            Ok(sent) => Ok(await_confirm(sent?)),
            Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
        }
    }
}

/// The broker's verdict on one message: confirmed and routed, or why not.
async fn await_confirm(confirm: PublisherConfirm) -> Result<(), PublishError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
        Ok(Err(e)) => Err(PublishError::Channel(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Returned {
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.to_string(),
        }),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        // The channel is opened in confirm mode; an unconfirmed publish would be a lie.
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
    }
}

/// The user an AMQP URL logs in as (`guest`, the broker's default, when it names none).
pub fn broker_user(amqp_url: &str) -> String {
    amqp_url.parse::<lapin::uri::AMQPUri>().map_or_else(
        |_| "guest".to_owned(),
        |uri| uri.authority.userinfo.username,
    )
}

/// AMQP properties mirroring the CloudEvent (docs/architecture.md, "The envelope"): persistent,
/// its content type, id, type, order id, time and producer, with `causation_id` and the W3C
/// `traceparent` and `tracestate` in the headers.
pub fn envelope_properties(envelope: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(causation_id) = envelope.causation_id {
        headers.insert(
            "causation_id".into(),
            AMQPValue::LongString(LongString::from(causation_id.to_string())),
        );
    }
    let trace_context = [
        ("traceparent", &envelope.traceparent),
        ("tracestate", &envelope.tracestate),
    ];
    for (name, value) in trace_context {
        if let Some(value) = value {
            headers.insert(
                name.into(),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
    }
    let timestamp = u64::try_from(envelope.occurred_at.timestamp())
        .unwrap_or_else(|_| u64::try_from(Utc::now().timestamp()).unwrap_or(0));
    BasicProperties::default()
        .with_message_id(envelope.message_id.to_string().into())
        .with_type(ShortString::try_new(envelope.cloudevents_type()).unwrap_or_default())
        .with_correlation_id(envelope.correlation_id.to_string().into())
        .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_timestamp(timestamp)
        .with_app_id(ShortString::try_new(envelope.producer.as_str()).unwrap_or_default())
        .with_headers(headers)
}

/// A header as text, whatever string type the sender used.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A header as an unsigned number, whatever integer type the sender used.
pub fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_events::OrderConfirmed;
    use uuid::Uuid;

    #[test]
    fn properties_mirror_the_envelope() {
        let cause = Uuid::now_v7();
        let mut envelope = Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
            Some(cause),
        );
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        envelope.traceparent = Some(traceparent.to_owned());
        let properties = envelope_properties(&envelope);
        assert_eq!(
            properties.message_id().as_ref().map(|s| s.to_string()),
            Some(envelope.message_id.to_string())
        );
        assert_eq!(
            properties.correlation_id().as_ref().map(|s| s.to_string()),
            Some(envelope.correlation_id.to_string())
        );
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(
            header_text(&properties, "causation_id"),
            Some(cause.to_string())
        );
        assert_eq!(
            header_text(&properties, "traceparent").as_deref(),
            Some(traceparent)
        );
        assert_eq!(header_text(&properties, "tracestate"), None);
    }
}
