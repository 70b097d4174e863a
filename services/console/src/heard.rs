//! What the console keeps of each event it hears, as its API shows it, and the tag its
//! operations share in its OpenAPI document.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// The tag of the console's operations in its OpenAPI document.
pub(crate) const TAG: &str = "console";

/// One event as the page shows it.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(crate) struct Heard {
    /// The order in which the console heard it.
    pub(crate) seq: i64,
    message_id: Uuid,
    order_id: Uuid,
    event_type: String,
    producer: String,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    /// The event's payload, as its schema in docs/asyncapi.yaml says.
    #[schema(value_type = Object)]
    payload: Value,
}

pub(crate) const HEARD_COLUMNS: &str =
    "seq, message_id, order_id, event_type, producer, causation_id, occurred_at, payload";
