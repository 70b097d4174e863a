//! The unit of work: a change to a service's data and what it announces, committed together.
//! Every write of a service goes through one (a handler's, through its `Ctx`; an API call's or
//! a sweep's, begun by it), so no event leaves without the change that caused it.

use std::marker::PhantomData;

use shared_events::{Command, Event, Participant};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    outbox::write::{self, Pending},
    runtime::{db::Db, metrics::Metrics},
};

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

    /// The message being handled, if any: the cause of the change (`None` for an API call's
    /// or a sweep's own unit of work).
    pub fn cause(&self) -> Option<Uuid> {
        self.cause
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

    /// Announces `event` (caused by the message being handled, if any); returns its message id.
    /// It is published only if the unit of work commits.
    ///
    /// Only the participant's own events are accepted: payment may announce a refund,
    ///
    /// ```
    /// # use service_kit::Ctx;
    /// # use shared_events::{PaymentRefunded, participants};
    /// fn refund(ctx: &mut Ctx<participants::Payment>, refund: PaymentRefunded) {
    ///     ctx.announce(&refund);
    /// }
    /// ```
    ///
    /// but inventory cannot announce payment's event; it does not compile:
    ///
    /// ```compile_fail
    /// # use service_kit::Ctx;
    /// # use shared_events::{PaymentRefunded, participants};
    /// fn refund(ctx: &mut Ctx<participants::Inventory>, refund: PaymentRefunded) {
    ///     ctx.announce(&refund);
    /// }
    /// ```
    pub fn announce<E: Event<Producer = P>>(&mut self, event: &E) -> Uuid {
        let pending = Pending::new(event, self.cause);
        let message_id = pending.message_id();
        self.announced.push(pending);
        message_id
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
        let announced = write::rows(&mut self.tx, self.announced).await?;
        self.db.commit(self.tx, announced).await?;
        for observation in self.observations {
            self.metrics
                .observe(observation.name, &[observation.label], observation.value);
        }
        Ok(())
    }
}
