//! The message contract of the shop: the envelope every message travels in, the past-tense
//! events of the catalog, the imperative commands of the orchestrated style (docs/choosing.md),
//! their producers, routing keys and versions. No I/O lives here.
//!
//! Producers and consumers share only this crate: a payload field may be added, never renamed.
//! A new version of an event is additive, and the one place that knows an old version is the
//! event's `upgrade` (docs/architecture.md, "Versions").

mod commands;
mod envelope;
mod events;

pub use commands::*;
pub use envelope::{
    CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_SPEC_VERSION, DecodeError, Envelope, cloudevents_type,
};
pub use events::*;

/// One of the shop's services as the contract knows it: a name, and (through
/// [`Event::Producer`]) the events only it may announce.
pub trait Participant: Send + Sync + 'static {
    /// The service's name: its schema, its queue, its broker user, its `producer` field.
    const NAME: &'static str;
}

/// The participants of the choreography. A type, not a string, so that announcing another
/// service's event is a compile error (see `service_kit::Ctx::announce`).
pub mod participants {
    use crate::Participant;

    macro_rules! participants {
        ($($participant:ident => $name:literal,)+) => {
            $(
                #[derive(Debug, Clone, Copy)]
                pub struct $participant;

                impl Participant for $participant {
                    const NAME: &'static str = $name;
                }
            )+
        };
    }

    participants! {
        Orders => "orders",
        Payment => "payment",
        Inventory => "inventory",
        Shipping => "shipping",
        Notifications => "notifications",
        Console => "console",
        Saga => "saga",
    }
}

/// Facts every message type (an event or a command) declares about itself.
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The `type` of the envelope, e.g. `OrderPlaced`.
    const TYPE: &'static str;
    /// The payload version this build writes, and reads.
    const VERSION: u32 = 1;
    /// The oldest version this build still reads: anything from it up to [`Event::VERSION`]
    /// is upgraded to the current shape by [`Event::upgrade`] before any handler sees it.
    const OLDEST_READ: u32 = Self::VERSION;
    /// The only service allowed to send this message.
    type Producer: Participant;
    /// The producer's name, as it travels in the envelope.
    const PRODUCER: &'static str = <Self::Producer as Participant>::NAME;
    /// An event: `<producer>.<event_in_snake_case>` on the events exchange. A command:
    /// `<handler>.<command_in_snake_case>` on the commands exchange.
    const ROUTING_KEY: &'static str;
    const KIND: Kind;
    /// This message's row of the catalog.
    const INFO: MessageInfo = MessageInfo {
        event_type: Self::TYPE,
        producer: Self::PRODUCER,
        routing_key: Self::ROUTING_KEY,
        version: Self::VERSION,
        oldest_read: Self::OLDEST_READ,
        kind: Self::KIND,
    };

    /// Every message of the catalog belongs to one order's saga.
    fn order_id(&self) -> uuid::Uuid;

    /// Brings the payload of version `from` (at least [`Event::OLDEST_READ`], below
    /// [`Event::VERSION`]) to the current version's shape; `occurred_at` is the message's time,
    /// for a field an older version implied (an order's deadline).
    fn upgrade(
        from: u32,
        payload: serde_json::Value,
        occurred_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<serde_json::Value, String> {
        let _ = (from, occurred_at);
        Ok(payload)
    }
}

/// A past-tense fact, announced on the events exchange to whoever subscribes.
pub trait Event: Message {}

/// An imperative request of the orchestrated style, sent on the commands exchange to the one
/// service that handles it (`Kind::Command`'s `handler`), and answered with an event.
pub trait Command: Message {}

/// Whether a message is a fact for anyone or a request to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Event,
    Command { handler: &'static str },
}

/// A type's JSON Schema as draft 07 with every subschema inlined, so it can be embedded in
/// another document (an AsyncAPI message payload) without dangling references.
fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

/// One row of the catalog, for tooling (flow map, audits) that lists every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub event_type: &'static str,
    pub producer: &'static str,
    pub routing_key: &'static str,
    /// The version producers write; consumers read every version from `oldest_read` to it.
    pub version: u32,
    pub oldest_read: u32,
    pub kind: Kind,
}

impl MessageInfo {
    pub fn is_command(&self) -> bool {
        matches!(self.kind, Kind::Command { .. })
    }
}

/// The catalog's row of a message type, event or command.
pub fn message_info(message_type: &str) -> Option<&'static MessageInfo> {
    CATALOG
        .iter()
        .chain(COMMANDS)
        .find(|info| info.event_type == message_type)
}
