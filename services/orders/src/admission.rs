//! Admission control: past `max_pending` orders accepted but not yet settled, `POST /orders`
//! sheds new orders (`503` with `Retry-After`) rather than accept what the saga cannot settle
//! in reasonable time. The backlog is counted in orders' own table, so it covers every stage
//! (a slow payment, a stalled relay, a broker restart) without asking any other service.
//!
//! Counted at most every [`RECOUNT`], plus the orders this process accepted since: a count per
//! order cost a statement and a walk over the backlog's index for every order, growing with the
//! very backlog it guards against.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use service_kit::Metrics;
use sqlx::PgConnection;

/// Orders accepted but not settled: the auditor's invariant 1 turned around. Its partial
/// index (`orders_unsettled`) keeps the count to the backlog, however many orders there are.
const UNSETTLED: &str = "SELECT count(*) FROM orders.orders WHERE NOT settled";

/// How old the count may get before a request counts again.
const RECOUNT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(crate) struct Admission {
    pub(crate) max_pending: u64,
    pub(crate) metrics: Metrics,
    backlog: Arc<Backlog>,
}

#[derive(Default)]
struct Backlog {
    /// The last count, and when it was taken (`None`: never).
    counted: Mutex<(u64, Option<Instant>)>,
    /// Orders this process accepted since the last count.
    accepted_since: AtomicU64,
    /// A request is counting: the others use the last count meanwhile.
    counting: AtomicBool,
}

impl Admission {
    pub(crate) fn new(max_pending: u64, metrics: Metrics) -> Self {
        Self {
            max_pending,
            metrics,
            backlog: Arc::default(),
        }
    }

    /// The backlog as far as this process knows: counted in `conn`'s transaction when the last
    /// count is older than [`RECOUNT`], else that count plus what was accepted here since.
    pub(crate) async fn pending(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let backlog = &self.backlog;
        let (last, taken) = *backlog
            .counted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stale = taken.is_none_or(|at| at.elapsed() >= RECOUNT);
        if stale && !backlog.counting.swap(true, Ordering::SeqCst) {
            let counted: Result<i64, _> = sqlx::query_scalar(UNSETTLED).fetch_one(conn).await;
            backlog.counting.store(false, Ordering::SeqCst);
            let counted = u64::try_from(counted?).unwrap_or(0);
            *backlog
                .counted
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = (counted, Some(Instant::now()));
            backlog.accepted_since.store(0, Ordering::SeqCst);
            return Ok(counted);
        }
        Ok(last + backlog.accepted_since.load(Ordering::SeqCst))
    }

    /// An order was accepted (committed) here.
    pub(crate) fn accepted(&self) {
        self.backlog.accepted_since.fetch_add(1, Ordering::SeqCst);
    }
}
