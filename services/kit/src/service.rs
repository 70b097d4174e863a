//! Runs one service: HTTP first (so `/healthz` answers at once), then migrations, then the
//! broker supervisor; on shutdown, the reverse.

use std::sync::{Arc, atomic::AtomicBool};

use axum::Router;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Supervisor,
    config::Config,
    db::Db,
    http::{Health, health_routes, serve},
    inbox::{Consumer, Routes},
    metrics::Metrics,
    outbox::Relay,
    topology::Topology,
};

/// Everything that makes one service different from another.
pub struct ServiceSpec<S> {
    /// The service name: its schema, its queue (`<ns>.<name>`), its log field.
    pub name: &'static str,
    pub migrator: Migrator,
    /// What it subscribes to.
    pub routes: Routes<S>,
    /// Routing keys of the events it announces; empty means no outbox relay runs.
    pub announces: &'static [&'static str],
    pub state: S,
    /// Extra endpoints (an API) built on the service's database handle.
    pub http: Option<fn(Db) -> Router>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DATABASE_URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Runs the service until `shutdown` is cancelled, then stops consuming, finishes in-flight
/// messages and requests, and closes its connections.
pub async fn run<S: Send + Sync + 'static>(
    config: Config,
    shutdown: CancellationToken,
    spec: ServiceSpec<S>,
) -> Result<(), Error> {
    let service = spec.name;
    let db = Db::connect_lazy(&config, service).map_err(Error::DatabaseUrl)?;
    let metrics = Metrics::default();
    let broker_connected = Arc::new(AtomicBool::new(false));

    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: config.http_addr,
            source,
        })?;
    let mut router = health_routes(Health {
        service,
        db: db.clone(),
        broker_connected: broker_connected.clone(),
        metrics: metrics.clone(),
    });
    if let Some(api) = spec.http {
        router = router.merge(api(db.clone()));
    }
    tracing::info!(service, addr = %config.http_addr, "serving HTTP");
    let http = tokio::spawn(serve(listener, router, shutdown.clone()));

    let result = async {
        if !db.migrate(spec.migrator, &shutdown).await? {
            return Ok(());
        }
        tracing::info!(service, schema = service, "migrations applied");

        let topology = Arc::new(Topology::new(
            &config.namespace,
            service,
            spec.routes.routing_keys(),
            &config.retry_delays,
        ));
        let supervisor = Supervisor {
            amqp_url: config.amqp_url.clone(),
            prefetch: config.prefetch,
            topology: topology.clone(),
            consumer: Consumer {
                service,
                state: Arc::new(spec.state),
                routes: Arc::new(spec.routes),
                db: db.clone(),
                topology,
                max_attempts: config.max_attempts,
                metrics: metrics.clone(),
            },
            relay: (!spec.announces.is_empty())
                .then(|| Relay::new(db.clone(), config.outbox_sweep_interval, metrics.clone())),
            connected: broker_connected,
            metrics,
        };
        supervisor.run(shutdown.clone()).await;
        Ok(())
    }
    .await;

    // Whatever ended the run, the HTTP server goes too; the pool closes last.
    shutdown.cancel();
    let _ = http.await;
    db.pool.close().await;
    tracing::info!(service, "stopped");
    result
}
