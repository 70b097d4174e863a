//! The shop as processes of the `shop` executable on a sandbox of its own: what `shop chaos`,
//! `shop bench` and the process-based tests all run. One place decides how such a shop is set
//! up and taken down: a fresh database (on every server a `<SERVICE>_DATABASE_URL` names) and
//! namespace, every queue declared before any service starts, one log directory, the retry
//! delays the services run with (and whose delay queues are deleted afterwards), and an
//! identity provider of its own (a development issuer whose tokens the shop believes).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use service_kit::Style;
use shop::{
    SERVICES,
    fleet::{self, Fleet, FleetError, Output, Ports},
    issuer::{self, DevIssuer, IssuerError},
    provision::{self, ProvisionError},
};
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinHandle;

use crate::harness::{HarnessError, Sandbox};

#[derive(Debug, thiserror::Error)]
pub enum ProcessShopError {
    #[error(transparent)]
    Sandbox(#[from] HarnessError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cannot declare the topology")]
    Topology(#[from] ProvisionError),
    #[error("cannot create the log directory")]
    LogDir(#[source] std::io::Error),
    #[error("cannot start the identity provider")]
    Issuer(#[from] IssuerError),
    #[error("cannot serve or write the identity provider's keys and tokens")]
    IssuerIo(#[source] std::io::Error),
    #[error("cannot create the run's database on {service}'s server")]
    Database {
        service: &'static str,
        source: sqlx::Error,
    },
}

/// How to set a process shop up.
pub struct Options {
    /// The `shop` executable the services run as (`shop service <name>`).
    pub exe: PathBuf,
    /// Names the sandbox: database `<prefix>_<id>`, namespace `<prefix>-<id>`.
    pub prefix: &'static str,
    /// An administrator's database URL: the sandbox's database is created on its server.
    pub admin_database_url: String,
    pub amqp_url: String,
    /// The services' `RETRY_DELAYS_MS`.
    pub retry_delays: Vec<Duration>,
    /// Processes per service.
    pub replicas: usize,
    /// `SHOP_STYLE`: which services run, and how they coordinate.
    pub style: Style,
    /// Settings every service gets beside the sandbox's.
    pub settings: Vec<(&'static str, String)>,
}

pub struct ProcessShop {
    pub sandbox: Sandbox,
    pub fleet: Fleet,
    /// Each service's database URL: the sandbox's, unless `<SERVICE>_DATABASE_URL` names
    /// another server (then the database of the same name there).
    pub databases: BTreeMap<&'static str, String>,
    pub log_dir: PathBuf,
    /// The identity provider the shop trusts: tokens for the run's customers and operators.
    pub issuer: Arc<DevIssuer>,
    serving_keys: JoinHandle<std::io::Result<()>>,
    replicas: usize,
    retry_delays: Vec<Duration>,
}

impl ProcessShop {
    /// Creates the sandbox, the log directory and the fleet (not started yet: see
    /// [`ProcessShop::start`]).
    pub async fn create(options: Options) -> Result<Self, ProcessShopError> {
        let sandbox = Sandbox::create(
            &options.admin_database_url,
            &options.amqp_url,
            options.prefix,
        )
        .await?;
        let log_dir = std::env::temp_dir().join(&sandbox.namespace);
        let created = async {
            std::fs::create_dir_all(&log_dir).map_err(ProcessShopError::LogDir)?;
            let issuer = Arc::new(DevIssuer::generate()?);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(ProcessShopError::IssuerIo)?;
            let keys_url = format!(
                "http://{}",
                listener.local_addr().map_err(ProcessShopError::IssuerIo)?
            );
            let console_token = log_dir.join("console-token");
            let token = issuer.token(console::DEMO_CUSTOMER, false, issuer::CONSOLE_TOKEN_TTL)?;
            std::fs::write(&console_token, token).map_err(ProcessShopError::IssuerIo)?;
            let databases = databases_of(&sandbox, &options.admin_database_url).await?;
            let serving_keys = tokio::spawn(issuer.clone().serve(listener));
            Ok((databases, issuer, keys_url, console_token, serving_keys))
        }
        .await;
        let (databases, issuer, keys_url, console_token, serving_keys) = match created {
            Ok(created) => created,
            Err(e) => {
                sandbox.cleanup(&[&options.retry_delays], &[]).await;
                let _ = std::fs::remove_dir_all(&log_dir);
                return Err(e);
            }
        };
        let pool_size = fleet::pool_size_per_replica(options.replicas);
        let mut settings = vec![
            ("DATABASE_URL", sandbox.database_url.clone()),
            ("AMQP_URL", sandbox.amqp_url.clone()),
            ("SHOP_NAMESPACE", sandbox.namespace.clone()),
            ("SHOP_STYLE", options.style.to_string()),
            ("DB_POOL_SIZE", pool_size.to_string()),
            (
                "RETRY_DELAYS_MS",
                options
                    .retry_delays
                    .iter()
                    .map(|d| d.as_millis().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        settings.extend(DevIssuer::settings(&keys_url));
        settings.push(("ORDERS_TOKEN_FILE", console_token.display().to_string()));
        // The caller's settings come last: they override the sandbox's defaults.
        settings.extend(options.settings);
        let mut fleet = Fleet::new(
            &options.exe,
            Ports::Free,
            Output::LogFiles(log_dir.clone()),
            settings,
        );
        for (service, url) in &databases {
            if *url != sandbox.database_url {
                fleet.set_for(service, "DATABASE_URL", url.clone());
            }
        }
        Ok(Self {
            sandbox,
            fleet,
            databases,
            log_dir,
            issuer,
            serving_keys,
            replicas: options.replicas,
            retry_delays: options.retry_delays,
        })
    }

    /// Declares the queues of the services `wanted` picks, starts them and waits until every
    /// one is ready.
    pub async fn start(
        &mut self,
        http: &reqwest::Client,
        wanted: fn(&str) -> bool,
    ) -> Result<(), ProcessShopError> {
        provision::declare_topologies_of(
            &self.sandbox.amqp_url,
            &self.sandbox.namespace,
            self.fleet.style(),
            &self.retry_delays,
            service_kit::history::Retention::default(),
            wanted,
        )
        .await?;
        self.fleet.start(http, self.replicas, wanted).await?;
        Ok(())
    }

    /// [`ProcessShop::create`], then [`ProcessShop::start`] every service; on failure,
    /// nothing is left behind.
    pub async fn run(options: Options, http: &reqwest::Client) -> Result<Self, ProcessShopError> {
        let mut shop = Self::create(options).await?;
        match shop.start(http, |_| true).await {
            Ok(()) => Ok(shop),
            Err(e) => {
                shop.remove().await;
                Err(e)
            }
        }
    }

    /// Every orders replica's URL.
    pub fn orders_urls(&self) -> Vec<String> {
        self.fleet.orders_urls()
    }

    /// Stops the services and removes everything: databases, queues, exchange and logs.
    pub async fn remove(mut self) {
        self.fleet.stop().await;
        self.serving_keys.abort();
        for url in self.databases.values() {
            if *url != self.sandbox.database_url {
                drop_database(url).await;
            }
        }
        self.sandbox.cleanup(&[&self.retry_delays], &[]).await;
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }

    /// Stops the services and keeps everything else for inspection; says where it is.
    pub async fn keep(mut self) -> String {
        self.fleet.stop().await;
        self.serving_keys.abort();
        let sandbox = &self.sandbox;
        format!(
            "kept for inspection: database {}, namespace {}, logs in {} \
             (audit it with SHOP_NAMESPACE={} and DATABASE_URL pointing at database {})",
            sandbox.database,
            sandbox.namespace,
            self.log_dir.display(),
            sandbox.namespace,
            sandbox.database,
        )
    }
}

/// Each service's database: the sandbox's, or, where `<SERVICE>_DATABASE_URL` names another
/// server, a database of the same name created there.
async fn databases_of(
    sandbox: &Sandbox,
    admin_database_url: &str,
) -> Result<BTreeMap<&'static str, String>, ProcessShopError> {
    let mut databases = BTreeMap::new();
    let mut other_servers = Vec::new();
    for entry in &SERVICES {
        let server = entry.database_url(admin_database_url);
        let url = if server == admin_database_url {
            sandbox.database_url.clone()
        } else {
            if !other_servers.contains(&server) {
                let failed = |source| ProcessShopError::Database {
                    service: entry.name,
                    source,
                };
                let mut admin = PgConnection::connect(&server).await.map_err(failed)?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {}",
                    sandbox.database
                )))
                .execute(&mut admin)
                .await
                .map_err(failed)?;
                let _ = admin.close().await;
                other_servers.push(server.clone());
            }
            service_kit::config::with_database(&server, &sandbox.database)
        };
        databases.insert(entry.name, url);
    }
    Ok(databases)
}

/// Drops the database `url` names, on its own server.
async fn drop_database(url: &str) {
    let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return;
    };
    let Some(database) = options.get_database().map(str::to_owned) else {
        return;
    };
    let admin = options.database("postgres");
    if let Ok(mut connection) = PgConnection::connect_with(&admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&mut connection)
        .await;
    }
}
