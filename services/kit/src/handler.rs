//! What a service author writes against: the subscription table ([`Routes`]), the handler's
//! context ([`Ctx`]) and the ways a handler can fail ([`HandlerError`]). The machinery that
//! feeds handlers (consuming, the inbox, retries) lives in `consumer`.

use std::{future::Future, marker::PhantomData, pin::Pin};

use chrono::{DateTime, Utc};
use shared_events::{Command, DecodeError, Envelope, Event, Message, MessageInfo, Participant};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    db::Db,
    metrics::Metrics,
    outbox::{self, Pending},
};

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

/// A histogram observation made in a unit of work, recorded after its commit.
struct Observation {
    name: &'static str,
    label: (&'static str, &'static str),
    value: f64,
}

/// A change to a service's data and what it announces, committed together: the open
/// transaction, the events it wrote to the outbox (handed to the relay once it commits, see
/// [`UnitOfWork::commit`]) and the histogram observations to record then. `P` is the
/// participant the service is: only its own events can be announced. HTTP handlers and
/// background work begin one with [`UnitOfWork::begin`]; a message handler gets one in its
/// [`Ctx`].
pub struct UnitOfWork<P> {
    tx: Transaction<'static, Postgres>,
    db: Db,
    metrics: Metrics,
    /// The message being handled, if any: the cause of everything announced.
    cause: Option<Uuid>,
    /// Announced, to be written to the outbox right before the commit.
    announced: Vec<Pending>,
    observations: Vec<Observation>,
    /// A batch's savepoint is open (the next one releases it first).
    in_savepoint: bool,
    participant: PhantomData<fn() -> P>,
}

/// Where one message of a batch began: rolling back to it undoes that message alone.
pub(crate) struct Savepoint {
    announced: usize,
    observations: usize,
}

impl<P: Participant> UnitOfWork<P> {
    /// Begins a unit of work of the service's own (an API call, a sweep): what it announces
    /// has no causing message.
    pub async fn begin(db: &Db, metrics: &Metrics) -> Result<Self, sqlx::Error> {
        Ok(Self::within(db.begin().await?, db, metrics, None))
    }

    pub(crate) fn within(
        tx: Transaction<'static, Postgres>,
        db: &Db,
        metrics: &Metrics,
        cause: Option<Uuid>,
    ) -> Self {
        Self {
            tx,
            db: db.clone(),
            metrics: metrics.clone(),
            cause,
            announced: Vec::new(),
            observations: Vec::new(),
            in_savepoint: false,
            participant: PhantomData,
        }
    }

    /// Begins the part of the transaction that belongs to the message `cause` (releasing the
    /// previous message's savepoint in the same round trip).
    pub(crate) async fn savepoint(&mut self, cause: Uuid) -> Result<Savepoint, sqlx::Error> {
        let sql = if self.in_savepoint {
            "RELEASE SAVEPOINT message; SAVEPOINT message"
        } else {
            "SAVEPOINT message"
        };
        sqlx::raw_sql(sql).execute(&mut *self.tx).await?;
        self.in_savepoint = true;
        self.caused_by(cause);
        Ok(Savepoint {
            announced: self.announced.len(),
            observations: self.observations.len(),
        })
    }

    /// What is announced from now on was caused by the message `cause`.
    pub(crate) fn caused_by(&mut self, cause: Uuid) {
        self.cause = Some(cause);
    }

    /// Undoes everything since `savepoint`, including what it announced and observed. An error
    /// here leaves the transaction unusable: the caller must give it up.
    pub(crate) async fn rollback_to(&mut self, savepoint: &Savepoint) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT message")
            .execute(&mut *self.tx)
            .await?;
        self.announced.truncate(savepoint.announced);
        self.observations.truncate(savepoint.observations);
        Ok(())
    }

    /// The transaction in which the change and the outgoing events commit.
    pub fn db(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Records `value` in the histogram `name` (see `/metrics`) if the transaction commits, so
    /// a rolled-back attempt is not counted.
    pub fn observe_on_commit(
        &mut self,
        name: &'static str,
        label: (&'static str, &'static str),
        value: f64,
    ) {
        self.observations.push(Observation { name, label, value });
    }

    /// Announces `event` (caused by the message being handled, if any). It is published only
    /// if the unit of work commits.
    ///
    /// Only the participant's own events are accepted: payment may announce a refund,
    ///
    /// ```
    /// # use service_kit::Ctx;
    /// # use shared_events::{PaymentRefunded, participants};
    /// async fn refund(ctx: &mut Ctx<participants::Payment>, refund: PaymentRefunded) {
    ///     let _ = ctx.announce(&refund).await;
    /// }
    /// ```
    ///
    /// but inventory cannot announce payment's event; it does not compile:
    ///
    /// ```compile_fail
    /// # use service_kit::Ctx;
    /// # use shared_events::{PaymentRefunded, participants};
    /// async fn refund(ctx: &mut Ctx<participants::Inventory>, refund: PaymentRefunded) {
    ///     let _ = ctx.announce(&refund).await;
    /// }
    /// ```
    pub async fn announce<E: Event<Producer = P>>(&mut self, event: &E) -> Result<(), sqlx::Error> {
        self.announced.push(Pending::new(event, self.cause));
        Ok(())
    }

    /// Sends `command` to the service that handles it (caused by the message being handled,
    /// if any), through the outbox like an event: only if the unit of work commits. Only the
    /// commands' producer, the saga, can send one.
    pub fn send<C: Command<Producer = P>>(&mut self, command: &C) {
        self.announced.push(Pending::new(command, self.cause));
    }

    /// Writes what was announced to the outbox (one statement for all) and commits, then hands
    /// it to the relay and records the observations.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let announced = outbox::write(&mut self.tx, self.announced).await?;
        self.db.commit(self.tx, announced).await?;
        for observation in self.observations {
            self.metrics
                .observe(observation.name, &[observation.label], observation.value);
        }
        Ok(())
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
