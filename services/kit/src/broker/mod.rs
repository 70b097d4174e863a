//! RabbitMQ, as the shop uses it: every exchange and queue (`topology`), the shop's history
//! (`history`, a stream), confirmed publishing (`publisher`), the messaging span, the style
//! marker, and the operator's dead-letter tools.

pub mod dead_letters;
pub mod headers;
pub mod history;
pub mod publisher;
pub(crate) mod span;
pub mod style;
pub mod topology;
