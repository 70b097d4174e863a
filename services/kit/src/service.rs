//! Runs one service: HTTP first (so `/healthz` answers at once), then migrations, then the
//! broker supervisor; on shutdown, the reverse.
//!
//! Binding and running are two steps: [`bind`] opens the HTTP listener and reports its
//! address (a test binds port 0 and reads the port it got), [`BoundService::run`] runs until
//! stopped.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize},
    },
    time::Duration,
};

use axum::{Router, extract::FromRef, middleware};
use shared_events::{CATALOG, COMMANDS, Participant};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    broker::{
        history::{ReplayFrom, history_name},
        publisher::broker_user,
        style::{Style, StyleConflict},
        topology::Topology,
    },
    http::{
        auth::Auth,
        health::{Health, health_routes},
        openapi::{self, Served, document_route},
        server::{HttpLimits, MANAGEMENT_MAX_CONNECTIONS, bound_by_database, serve},
    },
    messaging::{
        apply::Subscriber,
        batch::Batcher,
        consume::Consumer,
        failure::Schedule,
        handler::{Routes, Service},
        parking::ParkingLot,
        replay::{Progress, Replay},
        session::Supervisor,
        unpark::Unparker,
    },
    outbox::relay::Relay,
    runtime::{
        config::Config,
        db::Db,
        metrics::{Metric, Metrics},
        outage::Outage,
        retention::{self, Retention},
    },
};

/// Everything that makes one service different from another. Its name (schema, queue, log
/// field) and the events it announces come from `S::Participant` and the catalog.
pub struct ServiceSpec<S: Service> {
    pub migrator: Migrator,
    /// What it subscribes to.
    pub routes: Routes<S>,
    pub state: S,
    /// Extra endpoints (an API) built on the service's database handle and settings.
    pub http: Option<ApiBuilder>,
    /// Its API shows customers' data: it starts only with an identity provider to check
    /// callers against (`AUTH_*`), or with `AUTH_DISABLED=true`.
    pub guards_customer_data: bool,
    /// Work of the service's own that runs beside consuming (orders' deadline sweep), started
    /// once migrations are applied and awaited on shutdown.
    pub background: Option<fn(ApiContext, CancellationToken) -> BackgroundFuture>,
    /// Metrics of its own, beside the kit's (`/metrics` describes both).
    pub metrics: &'static [Metric],
}

/// Builds a service's own API (it may hold settings the service read for itself): its routes
/// with their OpenAPI description (`service_kit::openapi`).
pub type ApiBuilder = Box<dyn FnOnce(ApiContext) -> OpenApiRouter + Send>;

/// What a service's background work runs as.
pub type BackgroundFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a service's own API is built on; an API whose state it is extracts each part
/// (`State<Db>`, `State<Metrics>`, and `Caller` through the `Auth`).
#[derive(Clone, FromRef)]
pub struct ApiContext {
    pub db: Db,
    pub config: Config,
    /// The service's `/metrics` registry, for what its API counts.
    pub metrics: Metrics,
    /// Who is calling (an extractor: `Caller`).
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DATABASE_URL")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Config(#[from] crate::runtime::config::ConfigError),
    #[error(transparent)]
    Style(#[from] StyleConflict),
    #[error("{service} does not run in {style} style")]
    NotInStyle { service: &'static str, style: Style },
    #[error(
        "no identity provider: set AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE (or, on a \
         laptop only, AUTH_DISABLED=true)"
    )]
    NoIdentityProvider,
}

type RunFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// A service whose HTTP listener is open, ready to run.
pub struct BoundService {
    name: &'static str,
    local_addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    run: Box<dyn FnOnce(CancellationToken) -> RunFuture + Send>,
}

impl BoundService {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the service serves HTTP (the actual port when `HTTP_ADDR` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where probes reach it on connections of their own, when `HTTP_MANAGEMENT_ADDR` is set.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// Runs the service until `shutdown` is cancelled, then stops consuming, finishes
    /// in-flight messages and requests, and closes its connections.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        (self.run)(shutdown).await
    }
}

/// Opens the service's database handle (lazily) and its HTTP listener on `config.http_addr`.
pub async fn bind<S: Service>(config: Config, spec: ServiceSpec<S>) -> Result<BoundService, Error> {
    let name = S::Participant::NAME;
    config.validate()?;
    if spec.guards_customer_data && config.auth.is_none() {
        if !config.auth_disabled {
            return Err(Error::NoIdentityProvider);
        }
        tracing::warn!(
            service = name,
            "AUTH_DISABLED=true: every caller acts as an operator; never run a shop like this"
        );
    }
    let db = Db::connect_lazy(&config, name).map_err(Error::DatabaseUrl)?;
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: config.http_addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.http_addr,
        source,
    })?;
    let management = match config.http_management_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| Error::Listen { addr, source })?;
            Some((listener, local))
        }
        None => None,
    };
    let management_addr = management.as_ref().map(|(_, addr)| *addr);
    let listeners = Listeners {
        api: listener,
        management: management.map(|(listener, _)| listener),
    };
    Ok(BoundService {
        name,
        local_addr,
        management_addr,
        run: Box::new(move |shutdown| Box::pin(run(config, spec, db, listeners, shutdown))),
    })
}

/// The service's port, and its management port when it has one.
struct Listeners {
    api: TcpListener,
    management: Option<TcpListener>,
}

async fn run<S: Service>(
    config: Config,
    spec: ServiceSpec<S>,
    db: Db,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let service = S::Participant::NAME;
    let metrics = Metrics::describing(spec.metrics);
    let broker_connected = Arc::new(AtomicBool::new(false));
    let consumer_paused = Arc::new(AtomicBool::new(false));
    let replay_progress = (config.replay_from != ReplayFrom::None).then(|| {
        Arc::new(Mutex::new(Progress {
            from: config.replay_from.to_string(),
            ..Progress::default()
        }))
    });

    let health = Health {
        service,
        namespace: config.namespace.clone(),
        db: db.clone(),
        broker_connected: broker_connected.clone(),
        consumer_paused: consumer_paused.clone(),
        replay: replay_progress.clone(),
        metrics: metrics.clone(),
        unauthenticated: spec.guards_customer_data && config.auth.is_none(),
    };
    let api_context = ApiContext {
        db: db.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        auth: Auth::new(config.auth.as_ref()),
    };
    let (api, described) = match spec.http {
        Some(api) => {
            let (router, described) = api(api_context.clone()).split_for_parts();
            let bounded = middleware::from_fn_with_state(db.clone(), bound_by_database);
            (Some(router.layer(bounded)), Some(described))
        }
        None => (None, None),
    };
    let document = Served(Arc::new(openapi::document(service, described).to_string()));
    // What probes and Prometheus read, on the service's port and on its management port.
    let operations: Router = Router::new()
        .merge(health_routes().with_state(health).split_for_parts().0)
        .merge(document_route().with_state(document).split_for_parts().0);
    let router = match api {
        Some(api) => operations.clone().merge(api),
        None => operations.clone(),
    };
    if let Ok(addr) = listeners.api.local_addr() {
        tracing::info!(service, %addr, "serving HTTP");
    }
    let limits = HttpLimits {
        header_timeout: config.http_header_timeout,
        request_timeout: config.http_request_timeout,
        max_connections: config.http_max_connections,
        max_header_bytes: config.http_max_header_bytes,
    };
    let mut http = vec![tokio::spawn(serve(
        listeners.api,
        router,
        limits,
        metrics.clone(),
        shutdown.clone(),
    ))];
    if let Some(management) = listeners.management {
        if let Ok(addr) = management.local_addr() {
            tracing::info!(service, %addr, "serving probes and metrics on the management port");
        }
        let limits = HttpLimits {
            max_connections: MANAGEMENT_MAX_CONNECTIONS,
            ..limits
        };
        http.push(tokio::spawn(serve(
            management,
            operations,
            limits,
            metrics.clone(),
            shutdown.clone(),
        )));
    }

    let result = async {
        if !db.migrate(spec.migrator, &shutdown).await? {
            return Ok(());
        }
        tracing::info!(service, schema = service, "migrations applied");
        tokio::spawn(metrics.clone().upkeep(shutdown.clone()));
        let background = spec
            .background
            .map(|work| tokio::spawn(work(api_context, shutdown.clone())));
        let pruner = tokio::spawn(retention::run(
            db.clone(),
            Retention {
                outbox: config.outbox_retention,
                inbox: config.inbox_retention,
                interval: config.prune_interval,
            },
            metrics.clone(),
            shutdown.clone(),
        ));

        let mut topology = Topology::new(
            &config.namespace,
            service,
            spec.routes.event_keys(),
            &config.retry_delays,
        );
        if config.style == Style::Orchestration {
            topology = topology.with_commands(spec.routes.command_keys());
        }
        let topology = Arc::new(topology);
        // The catalog says what this participant announces or sends; with nothing to
        // announce, no relay runs.
        let announces = CATALOG
            .iter()
            .chain(COMMANDS)
            .any(|message| message.producer == service);
        let provisioned = provisioned(&config, service);
        let replay = replay_progress.map(|progress| {
            Arc::new(Replay {
                requested: config.replay_from,
                stream: history_name(&config.namespace),
                routing_keys: topology.routing_keys.clone(),
                inbox_retention: config.inbox_retention,
                db: db.clone(),
                metrics: metrics.clone(),
                progress,
            })
        });
        let supervisor = Supervisor {
            // Processes of a fleet start on different nodes of a cluster, not all on the first.
            node: AtomicUsize::new(fastrand::usize(..config.amqp_urls().len().max(1))),
            amqp_urls: config.amqp_urls_with_heartbeat(),
            prefetch: config.prefetch,
            connect_timeout: config.amqp_connect_timeout,
            reconnect_max: config.amqp_reconnect_max,
            topology: topology.clone(),
            style: config.style,
            namespace: config.namespace.clone(),
            consumer: consumer(
                spec.state,
                spec.routes,
                &config,
                &db,
                &topology,
                &metrics,
                consumer_paused,
            ),
            history: (!provisioned).then_some(config.history),
            replay,
            relay: announces
                .then(|| Relay::new(db.clone(), config.outbox_sweep_interval, metrics.clone())),
            connected: broker_connected,
            metrics,
        };
        let supervised = supervisor.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = pruner.await;
        if let Some(background) = background {
            let _ = background.await;
        }
        Ok(supervised?)
    }
    .await;

    // Whatever ended the run, the HTTP server goes too; the pool closes last.
    shutdown.cancel();
    for server in http {
        let _ = server.await;
    }
    db.pool.close().await;
    tracing::info!(service, "stopped");
    result
}

/// Provisioned deployments give each service a broker user of its own name, limited to its own
/// names (`shop provision` declared the history there): an event is believed only from its
/// producer's user.
fn provisioned(config: &Config, service: &str) -> bool {
    broker_user(&config.first_amqp_url()) == service
}

/// Parked messages no commit here frees are swept as often as the first retry delay used to
/// retry them, but no more than twenty times a second.
fn parked_sweep_interval(config: &Config) -> Duration {
    let first_delay = config.retry_delays.first().copied().unwrap_or_default();
    first_delay.max(Duration::from_millis(50))
}

/// The consume loop and its links, each given what it needs: the spine (`Subscriber`), the
/// batch and the parked messages' second chance share one view of the database's outages.
fn consumer<S: Service>(
    state: S,
    routes: Routes<S>,
    config: &Config,
    db: &Db,
    topology: &Arc<Topology>,
    metrics: &Metrics,
    paused: Arc<AtomicBool>,
) -> Consumer<S> {
    let service = S::Participant::NAME;
    let subscriber = Arc::new(Subscriber {
        service,
        state: Arc::new(state),
        routes: Arc::new(routes),
        topology: topology.clone(),
        users_per_service: provisioned(config, service),
        metrics: metrics.clone(),
    });
    let schedule = Schedule {
        max_attempts: config.max_attempts,
        // A parked message may wait as long as the delay queues would have taken.
        patience: config.retry_schedule(),
    };
    let parked_sweep = parked_sweep_interval(config);
    let parking = Arc::new(ParkingLot::new(parked_sweep));
    let database = Outage::new("the database (as the consumer sees it)");
    Consumer {
        service,
        batcher: Arc::new(Batcher {
            subscriber: subscriber.clone(),
            db: db.clone(),
            parking: parking.clone(),
            schedule,
            database: database.clone(),
        }),
        unparker: Arc::new(Unparker {
            subscriber,
            db: db.clone(),
            parking,
            schedule,
            database: database.clone(),
        }),
        db: db.clone(),
        queue: topology.queue.clone(),
        dead_letter_queue: topology.dead_letter_queue.clone(),
        batch_max: usize::from(config.batch_max),
        parked_sweep,
        metrics: metrics.clone(),
        database,
        paused,
        probe_max: config.db_probe_max,
    }
}
