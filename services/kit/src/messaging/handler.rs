//! What a service author writes against: the subscription table ([`Routes`]), the handler's
//! context ([`Ctx`]) and the ways a handler can fail ([`HandlerError`]). The machinery that
//! feeds handlers lives around it: `apply` first, then the consume loop and its links.

use std::{future::Future, pin::Pin};

use chrono::{DateTime, Utc};
use shared_events::{DecodeError, Envelope, Message, MessageInfo, Participant};
use uuid::Uuid;

use crate::messaging::unit_of_work::UnitOfWork;

/// A service's state (what its handlers share), tied to who it is in the event catalog.
pub trait Service: Send + Sync + 'static {
    /// Names the service's schema and queue, and limits [`Ctx::announce`] to the events the
    /// catalog says this participant produces: announcing another's is a compile error.
    type Participant: Participant;
}

/// Why a handler did not apply its effect. The transaction is rolled back in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The fact this event depends on has not arrived yet: try again later.
    #[error("deferred: {0}")]
    Deferred(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// No retry can make this message acceptable: dead-letter it now.
    #[error("rejected: {0}")]
    Rejected(String),
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A handler for one message type: the service state, the transaction context, the message.
pub type Handler<S, E> =
    for<'a> fn(&'a S, &'a mut Ctx<<S as Service>::Participant>, E) -> HandlerFuture<'a>;

type ErasedHandler<S> = Box<
    dyn for<'a> Fn(
            &'a S,
            &'a mut Ctx<<S as Service>::Participant>,
            &'a Envelope,
        ) -> HandlerFuture<'a>
        + Send
        + Sync,
>;

struct Route<S: Service> {
    event: MessageInfo,
    /// Whether the handler can read this envelope (any version it claims, upgraded).
    read: fn(&Envelope) -> Result<(), DecodeError>,
    handle: ErasedHandler<S>,
}

/// The subscription table of a service: which events it reacts to (and, in the orchestrated
/// style, which commands it handles) and with what. The same table dispatches deliveries and
/// declares the queue bindings, so they cannot drift apart.
pub struct Routes<S: Service> {
    routes: Vec<Route<S>>,
}

impl<S: Service> Default for Routes<S> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<S: Service> Routes<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `E` (an event, or a command sent to this service), handled by `handler`.
    pub fn on<E: Message>(mut self, handler: Handler<S, E>) -> Self {
        assert!(
            self.find(E::TYPE).is_none(),
            "{} is subscribed twice",
            E::TYPE
        );
        self.routes.push(Route {
            event: E::INFO,
            read: |envelope| envelope.decode::<E>().map(|_| ()),
            handle: Box::new(move |state, ctx, envelope| match envelope.decode::<E>() {
                Ok(event) => handler(state, ctx, event),
                Err(e) => Box::pin(std::future::ready(Err(HandlerError::Rejected(
                    e.to_string(),
                )))),
            }),
        });
        self
    }

    /// The events subscribed to, in the order they were added.
    pub fn subscriptions(&self) -> Vec<MessageInfo> {
        self.routes.iter().map(|r| r.event).collect()
    }

    /// Whether this service reads `envelope` (its type subscribed, its version one the
    /// handler reads) without handling it: the contract tests' question.
    pub fn reads(&self, envelope: &Envelope) -> Result<(), String> {
        let route = self
            .find(&envelope.event_type)
            .ok_or_else(|| format!("{} is not subscribed", envelope.event_type))?;
        (route.read)(envelope).map_err(|e| e.to_string())
    }

    /// The routing keys of the events subscribed to (on the events exchange).
    pub(crate) fn event_keys(&self) -> Vec<&'static str> {
        self.keys(false)
    }

    /// The routing keys of the commands handled (on the commands exchange).
    pub(crate) fn command_keys(&self) -> Vec<&'static str> {
        self.keys(true)
    }

    fn keys(&self, commands: bool) -> Vec<&'static str> {
        self.routes
            .iter()
            .filter(|r| r.event.is_command() == commands)
            .map(|r| r.event.routing_key)
            .collect()
    }

    /// Hands the envelope to the handler of its type, if the service subscribes to it.
    pub(crate) fn dispatch<'a>(
        &'a self,
        state: &'a S,
        ctx: &'a mut Ctx<S::Participant>,
        envelope: &'a Envelope,
    ) -> Option<HandlerFuture<'a>> {
        let route = self.find(&envelope.event_type)?;
        Some((route.handle)(state, ctx, envelope))
    }

    fn find(&self, event_type: &str) -> Option<&Route<S>> {
        self.routes
            .iter()
            .find(|r| r.event.event_type == event_type)
    }
}

/// What a message handler works with: the unit of work its effect commits in (it derefs to
/// it: `ctx.db()`, `ctx.announce(..)`) and the message being handled.
pub struct Ctx<P> {
    work: UnitOfWork<P>,
    message_id: Uuid,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

impl<P: Participant> Ctx<P> {
    pub(crate) fn new(work: UnitOfWork<P>, envelope: &Envelope) -> Self {
        Self {
            work,
            message_id: envelope.message_id,
            causation_id: envelope.causation_id,
            occurred_at: envelope.occurred_at,
        }
    }

    /// The unit of work back, for the next message of the batch.
    pub(crate) fn into_work(self) -> UnitOfWork<P> {
        self.work
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> Uuid {
        self.message_id
    }

    /// The message that caused the one being handled (`None` for a saga's first event).
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }

    /// When the fact being handled occurred, as its producer stamped it.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
}

impl<P> std::ops::Deref for Ctx<P> {
    type Target = UnitOfWork<P>;

    fn deref(&self) -> &Self::Target {
        &self.work
    }
}

impl<P> std::ops::DerefMut for Ctx<P> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.work
    }
}
