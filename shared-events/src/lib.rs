//! The event contract of the shop: the envelope every message travels in, the past-tense
//! events of the catalog, their producers, routing keys and versions. No I/O lives here.
//!
//! Producers and consumers share only this crate: a payload field may be added, never renamed.
//! A new version of an event is additive, and the one place that knows an old version is the
//! event's `upgrade` (docs/architecture.md, "Versions").

mod envelope;
mod events;

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
    }
}

/// Facts every event type declares about itself.
pub trait Event: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The `type` of the envelope, e.g. `OrderPlaced`.
    const TYPE: &'static str;
    /// The payload version this build writes, and reads.
    const VERSION: u32 = 1;
    /// The oldest version this build still reads: anything from it up to [`Event::VERSION`]
    /// is upgraded to the current shape by [`Event::upgrade`] before any handler sees it.
    const OLDEST_READ: u32 = Self::VERSION;
    /// The only service allowed to announce this event.
    type Producer: Participant;
    /// The producer's name, as it travels in the envelope.
    const PRODUCER: &'static str = <Self::Producer as Participant>::NAME;
    /// `<producer>.<event_in_snake_case>` on the events exchange.
    const ROUTING_KEY: &'static str;
    /// This event's row of the catalog.
    const INFO: EventInfo = EventInfo {
        event_type: Self::TYPE,
        producer: Self::PRODUCER,
        routing_key: Self::ROUTING_KEY,
        version: Self::VERSION,
        oldest_read: Self::OLDEST_READ,
    };

    /// Every event of the catalog belongs to one order's saga.
    fn order_id(&self) -> uuid::Uuid;

    /// Brings the payload of version `from` (at least [`Event::OLDEST_READ`], below
    /// [`Event::VERSION`]) to the current version's shape.
    fn upgrade(from: u32, payload: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = from;
        Ok(payload)
    }
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

/// One row of the catalog, for tooling (flow map, audits) that lists every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInfo {
    pub event_type: &'static str,
    pub producer: &'static str,
    pub routing_key: &'static str,
    /// The version producers write; consumers read every version from `oldest_read` to it.
    pub version: u32,
    pub oldest_read: u32,
}
