//! The broker session supervisor. lapin's own auto-recovery is not trusted to come back after a
//! broker restart, so this loop owns it: connect, declare the topology, catch up from the
//! history if asked to (`replay`), consume and relay; on any failure drop everything, back off
//! with jitter, start again. `/readyz` follows it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties, options::BasicQosOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        history::{self, Retention},
        publisher::{PublishError, Publisher},
        style::{self, MarkerError, Style, StyleConflict},
        topology::Topology,
    },
    messaging::{
        consume::{ConsumeError, Consumer, Source},
        handler::Service,
        replay::{Replay, ReplayError},
    },
    outbox::relay::Relay,
    runtime::{backoff::Backoff, metrics::Metrics, outage::Outage, telemetry::ErrorChain},
};

/// Why a broker session ended; every one of them means "reconnect".
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect or declare the topology")]
    Setup(#[from] lapin::Error),
    #[error("connecting (or declaring the topology) took over {0:?}")]
    SetupTimedOut(Duration),
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    #[error("consumer stopped")]
    Consume(#[from] ConsumeError),
    #[error("cannot catch up from the history")]
    Replay(#[from] ReplayError),
    #[error("outbox relay stopped")]
    Relay(#[from] PublishError),
    /// Not a reason to reconnect: the service stops.
    #[error(transparent)]
    Style(StyleConflict),
}

impl From<MarkerError> for SessionError {
    fn from(error: MarkerError) -> Self {
        match error {
            MarkerError::Broker(e) => Self::Setup(e),
            MarkerError::Conflict(conflict) => Self::Style(conflict),
        }
    }
}

/// How often the session checks that both connections are still up.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);
/// Connecting, declaring the topology and opening channels.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Closing a connection the broker may no longer answer on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Supervisor<S: Service> {
    /// The broker's nodes (one, or a cluster's): each session connects to one, and a lost one
    /// sends the next session to the next.
    pub(crate) amqp_urls: Vec<String>,
    /// Which of them the next session tries.
    pub(crate) node: AtomicUsize,
    pub(crate) prefetch: u16,
    /// `AMQP_CONNECT_TIMEOUT_MS`: one connection's handshake; on a network that drops packets
    /// it would wait for the whole set-up, and a heal meanwhile would wait with it.
    pub(crate) connect_timeout: Duration,
    /// `AMQP_RECONNECT_MAX_MS`: the longest wait between two sessions.
    pub(crate) reconnect_max: Duration,
    pub(crate) topology: Arc<Topology>,
    /// `SHOP_STYLE`, held as a marker queue for the session's lifetime.
    pub(crate) style: Style,
    pub(crate) namespace: String,
    pub(crate) consumer: Consumer<S>,
    /// The history's retention, when this service declares it (its broker user may: not a
    /// provisioned one, whose history `shop provision` declared).
    pub(crate) history: Option<Retention>,
    /// `REPLAY_FROM`: the catch-up to finish before consuming live.
    pub(crate) replay: Option<Arc<Replay>>,
    /// `None` for a service that announces nothing.
    pub(crate) relay: Option<Relay>,
    pub(crate) connected: Arc<AtomicBool>,
    pub(crate) metrics: Metrics,
}

impl<S: Service> Supervisor<S> {
    /// Runs sessions until `shutdown`; fails only if the shop runs in another style.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), StyleConflict> {
        let service = self.consumer.service;
        let mut backoff = Backoff::capped(Duration::from_millis(100), self.reconnect_max);
        // Logged as it begins, once a minute and as it ends, not per attempt to reconnect.
        let broker = Outage::new("the broker");
        while !shutdown.is_cancelled() {
            let result = self.session(&shutdown, &mut backoff, &broker).await;
            self.connected.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => break,
                Err(SessionError::Style(conflict)) => {
                    tracing::error!(service, error = %conflict, "refusing to run");
                    return Err(conflict);
                }
                Err(e) => {
                    // Its node may be the one that was lost: the next session tries another.
                    self.node.fetch_add(1, Ordering::SeqCst);
                    let delay = backoff.next_delay();
                    broker.failed(&ErrorChain(&e));
                    tracing::debug!(service, error = %ErrorChain(&e), ?delay, "broker session ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!(service, "broker supervisor stopped");
        Ok(())
    }

    /// One connected lifetime: returns `Ok` only when `shutdown` ended it.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        broker: &Outage,
    ) -> Result<(), SessionError> {
        let service = self.consumer.service;
        let node = self.node.load(Ordering::SeqCst) % self.amqp_urls.len().max(1);
        let amqp_url = self.amqp_urls.get(node).map_or("", String::as_str);
        let connect = async |role: &str| {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("{service}-{role}").into());
            tokio::time::timeout(
                self.connect_timeout,
                Connection::connect(amqp_url, properties),
            )
            .await
            .map_err(|_| SessionError::SetupTimedOut(self.connect_timeout))?
            .map_err(SessionError::from)
        };
        // Publishing and consuming on separate connections: a broker that blocks publishers
        // (resource alarm) would otherwise also stall the consumer's acks. A broker that
        // accepts the socket but never answers must not hang the loop either.
        let setup = async {
            let publish_connection = connect("publish").await?;
            let consume_connection = connect("consume").await?;
            let channel = consume_connection.create_channel().await?;
            let marker = style::hold_marker(
                &consume_connection,
                &channel,
                &self.namespace,
                self.style,
                &format!("{service}-style"),
            )
            .await?;
            self.topology.declare(&channel).await?;
            if let Some(retention) = self.history {
                history::declare(&consume_connection, &self.namespace, retention).await?;
            }
            // Per-consumer prefetch: `global` QoS is not implemented for quorum queues.
            channel
                .basic_qos(self.prefetch, BasicQosOptions { global: false })
                .await?;
            let publisher = Publisher::open(&publish_connection, amqp_url).await?;
            Ok::<_, SessionError>((
                publish_connection,
                consume_connection,
                channel,
                publisher,
                marker,
            ))
        };
        // The style's marker is held for as long as this session lives.
        let (publish_connection, consume_connection, channel, publisher, _marker) =
            tokio::time::timeout(SETUP_TIMEOUT, setup)
                .await
                .map_err(|_| SessionError::SetupTimedOut(SETUP_TIMEOUT))??;

        self.connected.store(true, Ordering::SeqCst);
        self.metrics.inc("shop_broker_sessions_total", &[]);
        backoff.reset();
        broker.answered();
        tracing::info!(service, queue = %self.topology.queue, node, "connected to the broker; consuming");

        // Shutdown stops both halves, each finishing its in-flight work. A failing half stops
        // the other at once (a relay waiting for confirms on a dead connection is abandoned:
        // its rows stay unsent and go out after the reconnect) and readiness drops right away.
        let stop = shutdown.child_token();
        let failed = CancellationToken::new();
        let fail = |error: &SessionError| {
            tracing::warn!(service, error = %ErrorChain(error), "broker session failing");
            self.connected.store(false, Ordering::SeqCst);
            failed.cancel();
            stop.cancel();
        };
        let consuming = async {
            let result = self
                .consume(&consume_connection, &channel, &publisher, &stop, &failed)
                .await;
            match &result {
                Err(e) => fail(e),
                Ok(()) => stop.cancel(),
            }
            result
        };
        let relaying = async {
            let Some(relay) = &self.relay else {
                return Ok(());
            };
            let result = tokio::select! {
                result = relay.run(&publisher, &self.topology, &stop) => result.map_err(SessionError::from),
                () = failed.cancelled() => Ok(()),
            };
            if let Err(e) = &result {
                fail(e);
            }
            result
        };
        // lapin does not reliably end a consumer stream (or fail a pending publish) when its
        // connection dies, so the session watches both connections itself.
        let watchdog = async {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(CONNECTION_CHECK) => {}
                    () = failed.cancelled() => break,
                    () = stop.cancelled() => return,
                }
                let alive = publish_connection.status().connected()
                    && consume_connection.status().connected();
                if !alive {
                    fail(&SessionError::ConnectionLost);
                    break;
                }
            }
            self.connected.store(false, Ordering::SeqCst);
        };
        let (consumed, relayed, ()) = tokio::join!(consuming, relaying, watchdog);

        let close = async {
            let _ = channel.close(200, "shutting down".into()).await;
            let _ = consume_connection.close(200, "shutting down".into()).await;
            let _ = publish_connection.close(200, "shutting down".into()).await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        consumed.and(relayed)?;
        // The watchdog may have failed the session while both halves saw only the stop and
        // returned Ok: that is still a lost connection, not a shutdown.
        if failed.is_cancelled() {
            return Err(SessionError::ConnectionLost);
        }
        Ok(())
    }

    /// The catch-up, if one is asked for and not finished, then the service's own queue.
    async fn consume(
        &self,
        connection: &Connection,
        channel: &lapin::Channel,
        publisher: &Publisher,
        stop: &CancellationToken,
        failed: &CancellationToken,
    ) -> Result<(), SessionError> {
        if let Some(replay) = &self.replay
            && let Some(plan) = replay.plan(connection).await?
        {
            let history = Source::History(replay.clone(), plan);
            self.consumer
                .run(channel, publisher, stop, failed, &history)
                .await?;
            if stop.is_cancelled() {
                return Ok(());
            }
        }
        Ok(self
            .consumer
            .run(channel, publisher, stop, failed, &Source::Queue)
            .await?)
    }
}
