//! The inbox: the ids of the messages a service has handled, written in the transaction that
//! applies each one, so a copy delivered again finds its id and changes nothing.

use std::collections::{HashMap, HashSet};

use shared_events::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

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

/// Records a batch's messages as handled in the open transaction, in one statement: for each
/// (message, publisher), whether this is its first delivery. A message twice in the batch is
/// first at most once; the copies are counted as duplicates.
pub(crate) async fn record_batch(
    tx: &mut PgConnection,
    batch: &[(&Envelope, Option<&str>)],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut copies: HashMap<Uuid, i32> = HashMap::new();
    let mut firsts = Vec::with_capacity(batch.len());
    for (envelope, published_by) in batch {
        let seen = copies.entry(envelope.message_id).or_insert(-1);
        *seen += 1;
        if *seen == 0 {
            firsts.push((*envelope, *published_by));
        }
    }
    let n = firsts.len();
    let (mut ids, mut types, mut orders, mut causes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut producers, mut occurred, mut publishers, mut extra) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (envelope, published_by) in firsts {
        ids.push(envelope.message_id);
        types.push(envelope.event_type.as_str());
        orders.push(envelope.correlation_id);
        causes.push(envelope.causation_id);
        producers.push(envelope.producer.as_str());
        occurred.push(envelope.occurred_at);
        publishers.push(published_by);
        extra.push(copies[&envelope.message_id]);
    }
    let mut inserted: HashSet<Uuid> = sqlx::query_scalar::<_, Option<Uuid>>(
        "INSERT INTO inbox
             (message_id, event_type, correlation_id, causation_id, producer, occurred_at,
              published_by, duplicates)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::timestamptz[], $7::text[], $8::int[])
         ON CONFLICT (message_id) DO UPDATE
             SET duplicates = inbox.duplicates + 1 + EXCLUDED.duplicates
         RETURNING CASE WHEN xmax = 0 THEN message_id END",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&orders)
    .bind(&causes)
    .bind(&producers)
    .bind(&occurred)
    .bind(&publishers)
    .bind(&extra)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    // The first occurrence takes the id; a later copy in the batch finds it gone.
    Ok(batch
        .iter()
        .map(|(envelope, _)| inserted.remove(&envelope.message_id))
        .collect())
}

/// Forgets a message recorded by [`record_batch`] whose handling then failed (rolling back to
/// its savepoint, taken after the batch's inbox rows, does not remove its row).
pub(crate) async fn forget(tx: &mut PgConnection, message_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM inbox WHERE message_id = $1")
        .bind(message_id)
        .execute(tx)
        .await?;
    Ok(())
}
