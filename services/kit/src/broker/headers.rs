//! Headers the consumer sets on messages it retries or dead-letters, read back when a copy
//! returns (a retry, a re-driven dead letter) and by the operator's dead-letter tools.

/// 1 for the first delivery, 2 for the first retry, ...
pub const ATTEMPT: &str = "x-shop-attempt";
/// The routing key the event was published with (retries travel under other keys).
pub const ORIGINAL_ROUTING_KEY: &str = "x-shop-original-routing-key";
/// The broker user that first published it (a copy is published by this service).
pub const ORIGINAL_PUBLISHER: &str = "x-shop-original-publisher";
pub const DEAD_LETTER_REASON: &str = "x-shop-dead-letter-reason";
/// When it was dead-lettered (RFC 3339), for grouping dead letters by cause over time.
pub const DEAD_LETTERED_AT: &str = "x-shop-dead-lettered-at";
pub const LAST_ERROR: &str = "x-shop-last-error";
