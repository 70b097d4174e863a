//! One delivery's life, on one screen: read this first.
//!
//! A message arrives (`consume` takes what waits in the prefetch window, `batch` opens one
//! transaction for it and its batch-mates) and becomes a state change and announced events in
//! four steps, all but the first inside that one transaction:
//!
//! 1. **Believe** ([`Subscriber::believe`]): the body is read, and believed only for what the
//!    broker vouched for (`provenance`); a message that fails is dead-lettered untried.
//! 2. **Inbox** ([`Subscriber::apply`]): its `message_id` is recorded (`inbox`); a copy finds
//!    it there and changes nothing.
//! 3. **Handler**: the service's own decision (its [`Routes`]), writing its state through
//!    the [`Ctx`] and announcing its events.
//! 4. **Outbox rows**: what it announced is written to the outbox right before the commit
//!    (`UnitOfWork::commit`, in `unit_of_work`), then handed to the relay (`outbox::relay`).
//!
//! After the commit, `settle` acks. A failure is not this file's business: `failure` decides
//! its fate, and `settle` (a retry queue, the dead-letter queue) or `parking` carries it out.

use std::sync::Arc;

use shared_events::{CATALOG, Envelope};
use tracing::Span;

use crate::{
    broker::{
        span::{End, message_span},
        topology::Topology,
    },
    messaging::{
        handler::{Ctx, HandlerError, Routes, Service},
        inbox,
        provenance::{self, Vouched},
        unit_of_work::UnitOfWork,
    },
    runtime::metrics::Metrics,
};

/// What a service consumes with: its handlers and what they share, and what it believes.
pub(crate) struct Subscriber<S: Service> {
    pub(crate) service: &'static str,
    pub(crate) state: Arc<S>,
    pub(crate) routes: Arc<Routes<S>>,
    pub(crate) topology: Arc<Topology>,
    /// Every service publishes as a broker user of its own name: believe an event only from
    /// its producer's user.
    pub(crate) users_per_service: bool,
    pub(crate) metrics: Metrics,
}

/// Whether the message's inbox row is still to be written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inbox<'a> {
    /// Written already, with its batch's, and it was the first delivery.
    Recorded,
    /// To write now, with the broker user that published it.
    Record { published_by: Option<&'a str> },
}

/// What came of applying a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Effect,
    Duplicate,
}

impl<S: Service> Subscriber<S> {
    /// Step 1: reads `body` and checks it against what the broker `vouched` for, opening the
    /// span the rest of its life is logged and traced under. A message that is malformed or
    /// not vouched for is refused (the reason), to be dead-lettered untried.
    pub(crate) fn believe(
        &self,
        body: &[u8],
        vouched: &Vouched,
        attempt: u32,
    ) -> Result<(Envelope, Span), String> {
        let envelope = Envelope::from_json(body).map_err(|e| {
            self.count("?", "malformed");
            tracing::warn!(reason = %e, routing_key = %vouched.routing_key, "malformed message");
            e.to_string()
        })?;
        if let Err(reason) = provenance::check(&envelope, vouched, self.users_per_service) {
            self.count(&envelope.event_type, "untrusted");
            tracing::warn!(%reason, message_id = %envelope.message_id, "refusing a message the broker does not vouch for");
            return Err(reason);
        }
        let span = self.span(&envelope, attempt, false);
        Ok((envelope, span))
    }

    /// Steps 2 to 4, in `work`'s transaction (the caller commits or rolls back, and gets the
    /// unit of work back whatever the outcome).
    pub(crate) async fn apply(
        &self,
        mut work: UnitOfWork<S::Participant>,
        envelope: &Envelope,
        inbox: Inbox<'_>,
    ) -> (UnitOfWork<S::Participant>, Result<Applied, HandlerError>) {
        // 2. The inbox: a message already recorded is a copy, absorbed.
        if let Inbox::Record { published_by } = inbox {
            match inbox::record_first(work.db(), envelope, published_by).await {
                Ok(true) => {}
                Ok(false) => return (work, Ok(Applied::Duplicate)),
                Err(e) => return (work, Err(e.into())),
            }
        }
        // 3. The handler of its type; one the service does not subscribe to is refused.
        let mut ctx = Ctx::new(work, envelope);
        let handled = match self.routes.dispatch(&self.state, &mut ctx, envelope) {
            Some(handling) => handling.await,
            None => Err(HandlerError::Rejected(format!(
                "{} subscribes to no event of type {:?}",
                self.service, envelope.event_type
            ))),
        };
        // 4. What it announced waits in the unit of work: the commit writes the outbox rows.
        (ctx.into_work(), handled.map(|()| Applied::Effect))
    }

    /// The CONSUMER span of handling `envelope`, a child of the span that published it (so a
    /// retry, a redrive or a parked message's later try stays in its trace), and what every
    /// log line about it carries; `unparked` marks a try of a parked message, not a delivery.
    pub(crate) fn span(&self, envelope: &Envelope, attempt: u32, unparked: bool) -> Span {
        let routing_key = CATALOG
            .iter()
            .find(|info| info.event_type == envelope.event_type)
            .map_or(envelope.event_type.as_str(), |info| info.routing_key);
        let (exchange, queue) = (&self.topology.exchange, &self.topology.queue);
        let destination = format!("{exchange}:{routing_key}:{queue}");
        let span = message_span(End::Process, &destination, routing_key, envelope);
        span.record(
            opentelemetry_semantic_conventions::attribute::MESSAGING_CONSUMER_GROUP_NAME,
            queue.as_str(),
        );
        span.record("service", self.service);
        span.record("attempt", attempt);
        span.record("unparked", unparked);
        span
    }

    /// Counts a message in `shop_messages_total` with its `outcome`.
    pub(crate) fn count(&self, event: &str, outcome: &str) {
        self.metrics.inc(
            "shop_messages_total",
            &[("event", event), ("outcome", outcome)],
        );
    }
}
