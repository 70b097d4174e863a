//! The service's database handle: a pool scoped to the service's own schema, migrations whose
//! history lives in that schema, and the feed that hands the relay the events a commit added.

use std::{
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{
    Connection, PgPool, Postgres, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    outbox::write::{Announced, Feed},
    runtime::{backoff::Backoff, config::Config},
};

/// Events a relay may be behind on before commits stop handing it theirs; past that, the rows
/// wait in the outbox for the relay's sweep.
const FEED_CAPACITY: usize = 8192;

#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
    /// How the pool connects, for connections of its own (the parking lot's listener).
    connect_options: PgConnectOptions,
    /// The schema this service owns; also the prefix of its outbox and inbox tables.
    pub schema: &'static str,
    /// `DB_TIMEOUT_MS`: see [`Db::bounded`].
    pub timeout: Duration,
    suspicion: Suspicion,
    feed: mpsc::Sender<Announced>,
    /// Taken by the service's one relay.
    feed_receiver: Arc<Mutex<Option<Feed>>>,
}

impl Db {
    /// A pool that connects on first use, so the service can come up (and report not-ready)
    /// while the database is still starting.
    pub fn connect_lazy(config: &Config, schema: &'static str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = config.database_url.parse()?;
        // Unqualified names (the kit's `outbox`, `inbox` and `parked`) resolve in the service's
        // own schema; the services' own SQL names its schema explicitly.
        let connect_options = options
            .application_name(schema)
            .options([("search_path", schema)]);
        let timeout = config.db_timeout;
        let suspicion = Suspicion::default();
        let checks = suspicion.clone();
        let pool = PgPoolOptions::new()
            .max_connections(config.db_pool_size)
            .acquire_timeout(timeout)
            // No ping before every transaction (a round trip each): a dead connection fails its
            // statement instead, which every caller already treats as "database away, retry".
            .test_before_acquire(false)
            // A connection comes back to the pool after a ping (sqlx's own, which would wait
            // for the kernel to give a silent peer up: many minutes). While the database is
            // suspect (work went unanswered lately), it is pinged here first, within the
            // timeout: a silent one is closed instead, and its pool slot is free at once.
            // Otherwise not: a second round trip per transaction cost 15% of the latency.
            .after_release(move |connection, _| {
                let suspect = checks.is_recent();
                Box::pin(async move {
                    if !suspect {
                        return Ok(true);
                    }
                    match tokio::time::timeout(timeout, connection.ping()).await {
                        Ok(Ok(())) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(silent(timeout)),
                    }
                })
            })
            .connect_lazy_with(connect_options.clone());
        let (feed, feed_receiver) = mpsc::channel(FEED_CAPACITY);
        Ok(Self {
            pool,
            connect_options,
            schema,
            timeout,
            suspicion,
            feed,
            feed_receiver: Arc::new(Mutex::new(Some(feed_receiver))),
        })
    }

    /// Runs one piece of database work, giving it up after `DB_TIMEOUT_MS`: a connection whose
    /// peer went silent (dropped packets, no FIN, no RST) would otherwise wait for the kernel's
    /// retransmission limit. The error is a connection error ("the database is away"); the
    /// dropped work's connection is closed on its way back to the pool.
    pub async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(self.went_unanswered(self.timeout)))
    }

    /// Work bounded by `timeout` went unanswered: its error, and the pool's connections are
    /// checked on their way back for a while.
    pub(crate) fn went_unanswered(&self, timeout: Duration) -> sqlx::Error {
        self.suspicion.raise();
        silent(timeout)
    }

    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Begins the transaction of a consumer's batch, holding the service's batch lock until it
    /// ends: replicas of a service apply their batches one at a time. Two batches that each
    /// hold some orders' rows and wait for the other's would deadlock, and Postgres takes a
    /// second (`deadlock_timeout`) to notice; within one process the consumer already takes one
    /// batch at a time, so the lock is free there.
    ///
    /// The lock is asked for inside the begun transaction, not in the `BEGIN` statement: a
    /// batch given up while it waits then rolls back once the lock comes. (sqlx counts a
    /// transaction only once its `BEGIN` statement has answered, so one given up inside that
    /// statement went back to the pool still open, holding the lock from every later batch.)
    pub async fn begin_batch(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let lock = format!(
            "SELECT pg_advisory_xact_lock(hashtext('{}.batches'))",
            self.schema
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(lock))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Commits, then hands the events the transaction announced to the relay, so they leave
    /// right after the commit without the relay reading them back. A relay that is away or far
    /// behind misses them here and finds them in the outbox on its sweep.
    pub(crate) async fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        announced: Vec<Announced>,
    ) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        for event in announced {
            if self.feed.try_send(event).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// The receiving end of the commits' feed, for the one relay of this service.
    pub(crate) fn take_feed(&self) -> Option<Feed> {
        self.feed_receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Applies the kit's migrations (outbox and inbox, history in `<schema>._kit_migrations`),
    /// then the service's own (history in `<schema>._sqlx_migrations`), all in the service's
    /// schema. Retries until the database answers or `shutdown` fires (then `Ok(false)`).
    pub async fn migrate(
        &self,
        mut migrator: Migrator,
        shutdown: &CancellationToken,
    ) -> Result<bool, sqlx::migrate::MigrateError> {
        migrator.dangerous_set_table_name(format!("{}._sqlx_migrations", self.schema));
        let mut backoff = Backoff::default();
        loop {
            match self.run_migrations(&migrator).await {
                Ok(()) => return Ok(true),
                Err(sqlx::migrate::MigrateError::Execute(e)) if is_connection_error(&e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "database not reachable; retrying migrations");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return Ok(false),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_migrations(&self, service: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
        let mut kit = sqlx::migrate!("./migrations");
        kit.dangerous_set_table_name(format!("{}._kit_migrations", self.schema));
        // `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database even when the schema
        // exists; a least-privilege role owns its pre-created schema and has no such right.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(self.schema)
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            kit.create_schema(self.schema);
        }
        kit.run(&self.pool).await?;
        service.run(&self.pool).await
    }

    /// A listener on its own connection (not one of the pool's) for the channels `channels`.
    pub(crate) async fn listen(&self, channels: &[&str]) -> Result<PgListener, sqlx::Error> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.timeout)
            .connect_lazy_with(self.connect_options.clone());
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(listener)
    }

    /// Unpublished outbox rows and the age in seconds of the oldest (0 when none): how far
    /// the relay is behind.
    pub(crate) async fn outbox_lag(&self) -> Result<(i64, f64), sqlx::Error> {
        sqlx::query_as(
            "SELECT count(*),
                    coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
    }

    pub async fn is_reachable(&self) -> bool {
        self.bounded(self.ping()).await.is_ok()
    }

    /// A round trip to the database through the pool (unbounded: see [`Db::bounded`]).
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }
}

/// How long after work went unanswered connections are checked on their way back to the pool.
const SUSPICION: Duration = Duration::from_secs(600);

/// When work last went unanswered.
#[derive(Clone, Default)]
struct Suspicion(Arc<Mutex<Option<Instant>>>);

impl Suspicion {
    fn raise(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    fn is_recent(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < SUSPICION)
    }
}

/// The error of work the database did not answer in time.
fn silent(timeout: Duration) -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the database did not answer within {} ms",
            timeout.as_millis()
        ),
    ))
}

/// Errors that say "the database is away", as opposed to "this statement is wrong".
/// A data exception (SQLSTATE class 22: a NUL in text, a number out of range, …): the data
/// itself cannot be stored, so no retry can succeed.
pub(crate) fn is_data_exception(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("22")))
}

pub(crate) fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
