//! The broker session supervisor. lapin's own auto-recovery is not trusted to come back after a
//! broker restart, so this loop owns it: connect, declare the topology, consume and relay; on
//! any failure drop everything, back off with jitter, start again. `/readyz` follows it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties, options::BasicQosOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    inbox::Consumer,
    metrics::Metrics,
    outbox::Relay,
    publisher::{PublishError, Publisher},
    topology::Topology,
};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer or closed its channel")]
    ConsumerEnded,
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    #[error("connecting and declaring the topology took over {0:?}")]
    SetupTimedOut(Duration),
    #[error("outbox relay: {0}")]
    Relay(#[from] PublishError),
}

/// How often the session checks that both connections are still up.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);
/// Connecting, declaring the topology and opening channels.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Closing a connection the broker may no longer answer on.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            failures: 0,
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)))
            .min(self.cap);
        self.failures += 1;
        // Full jitter: services restarted together do not reconnect in lockstep.
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

pub(crate) struct Supervisor<S> {
    pub(crate) amqp_url: String,
    pub(crate) prefetch: u16,
    pub(crate) topology: Arc<Topology>,
    pub(crate) consumer: Consumer<S>,
    /// `None` for a service that announces nothing.
    pub(crate) relay: Option<Relay>,
    pub(crate) connected: Arc<AtomicBool>,
    pub(crate) metrics: Metrics,
}

impl<S: Send + Sync + 'static> Supervisor<S> {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let service = self.consumer.service;
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let result = self.session(&shutdown, &mut backoff).await;
            self.connected.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service, error = %e, ?delay, "broker session ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!(service, "broker supervisor stopped");
    }

    /// One connected lifetime: returns `Ok` only when `shutdown` ended it.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), BrokerError> {
        let service = self.consumer.service;
        let connect = |role: &str| {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("{service}-{role}").into());
            Connection::connect(&self.amqp_url, properties)
        };
        // Publishing and consuming on separate connections: a broker that blocks publishers
        // (resource alarm) would otherwise also stall the consumer's acks. A broker that
        // accepts the socket but never answers must not hang the loop either.
        let setup = async {
            let publish_connection = connect("publish").await?;
            let consume_connection = connect("consume").await?;
            let channel = consume_connection.create_channel().await?;
            self.topology.declare(&channel).await?;
            // Per-consumer prefetch: `global` QoS is not implemented for quorum queues.
            channel
                .basic_qos(self.prefetch, BasicQosOptions { global: false })
                .await?;
            let publisher = Publisher::open(&publish_connection).await?;
            Ok::<_, lapin::Error>((publish_connection, consume_connection, channel, publisher))
        };
        let (publish_connection, consume_connection, channel, publisher) =
            tokio::time::timeout(SETUP_TIMEOUT, setup)
                .await
                .map_err(|_| BrokerError::SetupTimedOut(SETUP_TIMEOUT))??;

        self.connected.store(true, Ordering::SeqCst);
        self.metrics.inc("shop_broker_sessions_total", &[]);
        backoff.reset();
        tracing::info!(service, queue = %self.topology.queue, "connected to the broker; consuming");

        // Shutdown stops both halves, each finishing its in-flight work. A failing half stops
        // the other at once (a relay waiting for confirms on a dead connection is abandoned:
        // its rows stay unsent and go out after the reconnect) and readiness drops right away.
        let stop = shutdown.child_token();
        let failed = CancellationToken::new();
        let fail = |error: &BrokerError| {
            tracing::warn!(service, %error, "broker session failing");
            self.connected.store(false, Ordering::SeqCst);
            failed.cancel();
            stop.cancel();
        };
        let consuming = async {
            let result = self
                .consumer
                .run(&channel, &publisher, &stop, &failed)
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
                result = relay.run(&publisher, &self.topology.exchange, &stop) => result.map_err(BrokerError::from),
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
                    fail(&BrokerError::ConnectionLost);
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
        consumed.and(relayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(5));
        }
        assert!(backoff.next_delay() >= Duration::from_millis(2500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
