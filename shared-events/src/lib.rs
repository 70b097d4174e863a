//! The event contract of the shop: the envelope every message travels in, the eleven
//! past-tense events of the catalog and their routing keys. No I/O lives here.
//!
//! Producers and consumers share only this crate: a payload field may be added, never renamed.

mod envelope;
mod events;

pub use envelope::{DecodeError, Envelope};
pub use events::*;

/// Facts every event type declares about itself.
pub trait Event: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The `type` of the envelope, e.g. `OrderPlaced`.
    const TYPE: &'static str;
    /// The payload version this build reads and writes.
    const VERSION: u32 = 1;
    /// The only service allowed to announce this event.
    const PRODUCER: &'static str;
    /// `<producer>.<event_in_snake_case>` on the events exchange.
    const ROUTING_KEY: &'static str;

    /// Every event of the catalog belongs to one order's saga.
    fn order_id(&self) -> uuid::Uuid;
}

/// One row of the catalog, for tooling (flow map, audits) that lists every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInfo {
    pub event_type: &'static str,
    pub producer: &'static str,
    pub routing_key: &'static str,
}
