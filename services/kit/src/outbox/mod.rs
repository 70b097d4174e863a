//! A message's way out: events written as outbox rows in the transaction that decides them
//! (`write`), and the relay that publishes them, confirmed, once committed (`relay`).

pub(crate) mod relay;
pub(crate) mod write;
