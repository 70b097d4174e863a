//! Who holds the server's connections, and who gives one up at the bound. A connection with a
//! request in flight (or a response still streaming) is busy; any other is idle, since its
//! last response or since it was accepted. At `HTTP_MAX_CONNECTIONS` the connection idle the
//! longest is closed to make room, so a client holding idle keep-alive connections cannot keep
//! the door shut; only when every connection is busy is a newcomer refused.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use axum::body::{Body, Bytes, HttpBody};
use tokio_util::sync::CancellationToken;

/// The connections a server holds, each by the id it was given when accepted.
pub(crate) struct Connections {
    bound: usize,
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// What the server knows of one connection.
pub(crate) struct Connection {
    id: u64,
    in_flight: AtomicUsize,
    /// Milliseconds since the server started, when it last became idle.
    idle_since: AtomicU64,
    /// Cancelled to close it (shed while idle).
    pub(crate) shed: CancellationToken,
}

impl Connection {
    /// A request is in flight on it, or a response still being sent.
    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// What became of a connection offered at the door.
pub(crate) enum Admission {
    Admitted(Arc<Connection>),
    /// Admitted in place of an idle connection, which is being closed.
    AdmittedByShedding(Arc<Connection>),
    /// Every connection is busy.
    Refused,
}

impl Connections {
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            bound,
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut shed = false;
        if open.len() >= self.bound {
            let idlest = open
                .values()
                .filter(|c| !c.is_busy())
                .min_by_key(|c| c.idle_since.load(Ordering::SeqCst))
                .cloned();
            let Some(idlest) = idlest else {
                return Admission::Refused;
            };
            open.remove(&idlest.id);
            idlest.shed.cancel();
            shed = true;
        }
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            shed: CancellationToken::new(),
        });
        open.insert(connection.id, connection.clone());
        if shed {
            Admission::AdmittedByShedding(connection)
        } else {
            Admission::Admitted(connection)
        }
    }

    /// The connection closed (or was shed).
    pub(crate) fn closed(&self, connection: &Connection) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&connection.id);
    }

    /// A request arrived on `connection`: it is busy until the returned guard is dropped with
    /// the end of its response.
    pub(crate) fn busy(self: &Arc<Self>, connection: &Arc<Connection>) -> Busy {
        connection.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy {
            connections: self.clone(),
            connection: connection.clone(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in flight on a connection, until its response's body is finished or dropped.
pub(crate) struct Busy {
    connections: Arc<Connections>,
    connection: Arc<Connection>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connection
            .idle_since
            .store(self.connections.now(), Ordering::SeqCst);
        self.connection.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy while it is being sent (an event stream for
/// as long as it runs).
pub(crate) struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl BusyBody {
    pub(crate) fn wrap(body: Body, busy: Busy) -> Body {
        Body::new(Self { body, _busy: busy })
    }
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Option<Arc<Connection>> {
        match admission {
            Admission::Admitted(c) | Admission::AdmittedByShedding(c) => Some(c),
            Admission::Refused => None,
        }
    }

    #[test]
    fn at_the_bound_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let connections = Arc::new(Connections::new(2));
        let first = admitted(connections.admit()).expect("room for the first");
        let second = admitted(connections.admit()).expect("room for the second");
        let first_busy = connections.busy(&first);
        let second_busy = connections.busy(&second);
        assert!(matches!(connections.admit(), Admission::Refused));

        drop(second_busy);
        let third = connections.admit();
        assert!(matches!(third, Admission::AdmittedByShedding(_)));
        assert!(second.shed.is_cancelled(), "the idle one was shed");
        assert!(!first.shed.is_cancelled(), "the busy one was kept");
        drop(first_busy);
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let connections = Arc::new(Connections::new(1));
        let only = admitted(connections.admit()).expect("room");
        let _busy = connections.busy(&only);
        assert!(matches!(connections.admit(), Admission::Refused));
        connections.closed(&only);
        assert!(matches!(connections.admit(), Admission::Admitted(_)));
    }
}
