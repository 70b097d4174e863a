//! Writing to the outbox: an event is a row written in the same transaction as the state
//! change it announces (all of a transaction's rows in one statement, right before its commit),
//! and what the commit hands the relay so the events leave without being read back.

use std::{collections::HashMap, marker::PhantomData};

use shared_events::{Envelope, Event, Message, Participant};
use sqlx::PgConnection;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::runtime::telemetry;

/// An event written to the outbox by a transaction that has not committed yet.
pub struct Announced {
    pub(crate) id: i64,
    pub(crate) routing_key: &'static str,
    pub(crate) envelope: Envelope,
}

impl Announced {
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }
}

/// The relay's end of what commits hand over.
pub(crate) type Feed = mpsc::Receiver<Announced>;

/// The outbox of participant `P`: only the events the catalog says `P` produces go in.
pub struct Outbox<P>(PhantomData<fn() -> P>);

impl<P: Participant> Outbox<P> {
    /// Records `event` for publication, caused by `causation_id`, inside the caller's
    /// transaction (whose `search_path` is the service's schema).
    pub async fn append<E: Event<Producer = P>>(
        conn: &mut PgConnection,
        event: &E,
        causation_id: Option<Uuid>,
    ) -> Result<Announced, sqlx::Error> {
        append(conn, event, causation_id).await
    }
}

async fn append<E: Event>(
    conn: &mut PgConnection,
    event: &E,
    causation_id: Option<Uuid>,
) -> Result<Announced, sqlx::Error> {
    let mut written = rows(conn, vec![Pending::new(event, causation_id)]).await?;
    Ok(written.remove(0))
}

/// An event announced by a unit of work that has not committed yet. Its outbox row is written
/// just before the commit, together with the others ([`rows`]): one statement for all.
pub(crate) struct Pending {
    routing_key: &'static str,
    envelope: Envelope,
}

impl Pending {
    pub(crate) fn new<E: Message>(event: &E, causation_id: Option<Uuid>) -> Self {
        let mut envelope = Envelope::new(event, causation_id);
        // The row keeps the announcing span's trace context: a publish seconds later, or after
        // a crash, still joins the trace it belongs to.
        telemetry::stamp(&mut envelope, &tracing::Span::current());
        tracing::debug!(
            message_id = %envelope.message_id,
            event_type = E::TYPE,
            order_id = %envelope.correlation_id,
            causation_id = ?envelope.causation_id,
            "event announced"
        );
        Self {
            routing_key: E::ROUTING_KEY,
            envelope,
        }
    }

    pub(crate) fn message_id(&self) -> Uuid {
        self.envelope.message_id
    }
}

/// Writes `pending` to the outbox in the caller's transaction, in one statement, in order;
/// returns them with their row ids.
pub(crate) async fn rows(
    conn: &mut PgConnection,
    pending: Vec<Pending>,
) -> Result<Vec<Announced>, sqlx::Error> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut message_ids = Vec::with_capacity(pending.len());
    let mut event_types = Vec::with_capacity(pending.len());
    let mut routing_keys = Vec::with_capacity(pending.len());
    let mut correlation_ids = Vec::with_capacity(pending.len());
    let mut causation_ids = Vec::with_capacity(pending.len());
    let mut envelopes = Vec::with_capacity(pending.len());
    for Pending {
        routing_key,
        envelope,
    } in &pending
    {
        message_ids.push(envelope.message_id);
        event_types.push(envelope.event_type.as_str());
        routing_keys.push(*routing_key);
        correlation_ids.push(envelope.correlation_id);
        causation_ids.push(envelope.causation_id);
        envelopes.push(sqlx::types::Json(envelope));
    }
    // `WITH ORDINALITY`: the ids follow the order of the announcements.
    let ids: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO outbox
             (message_id, event_type, routing_key, correlation_id, causation_id, envelope)
         SELECT m, t, r, c, ca, e
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::jsonb[])
              WITH ORDINALITY AS announced (m, t, r, c, ca, e, n)
         ORDER BY n
         RETURNING id, message_id",
    )
    .bind(&message_ids)
    .bind(&event_types)
    .bind(&routing_keys)
    .bind(&correlation_ids)
    .bind(&causation_ids)
    .bind(&envelopes)
    .fetch_all(conn)
    .await?;
    let ids: HashMap<Uuid, i64> = ids.into_iter().map(|(id, m)| (m, id)).collect();
    pending
        .into_iter()
        .map(|p| {
            let id = ids
                .get(&p.envelope.message_id)
                .copied()
                .ok_or(sqlx::Error::RowNotFound)?;
            Ok(Announced {
                id,
                routing_key: p.routing_key,
                envelope: p.envelope,
            })
        })
        .collect()
}
