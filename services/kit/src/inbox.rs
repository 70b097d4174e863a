//! The inbox: the ids of the messages a service has handled, written in the transaction that
//! applies each one, so a copy delivered again finds its id and changes nothing.

use shared_events::Envelope;
use sqlx::PgConnection;

/// Records `envelope` as handled in the open transaction, with the broker user that published
/// it: `true` for its first delivery, `false` for a duplicate (which is only counted, so
/// absorbed duplicates stay auditable).
pub(crate) async fn record_first(
    tx: &mut PgConnection,
    envelope: &Envelope,
    published_by: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let duplicates: i32 = sqlx::query_scalar(
        "INSERT INTO inbox
             (message_id, event_type, correlation_id, causation_id, producer, occurred_at,
              published_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (message_id) DO UPDATE SET duplicates = inbox.duplicates + 1
         RETURNING duplicates",
    )
    .bind(envelope.message_id)
    .bind(&envelope.event_type)
    .bind(envelope.correlation_id)
    .bind(envelope.causation_id)
    .bind(&envelope.producer)
    .bind(envelope.occurred_at)
    .bind(published_by)
    .fetch_one(tx)
    .await?;
    Ok(duplicates == 0)
}
