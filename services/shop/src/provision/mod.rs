//! Least privilege, defined once and applied by `shop provision` (compose runs it before the
//! services start; the tests run the same code):
//!
//! - Postgres: one login role per service, named after it, owning its schema and nothing else;
//!   the database is closed to everyone else.
//! - RabbitMQ: one user per service, which may configure, write and read only the events
//!   exchange and its own names (`<ns>.<service>`, `<ns>.<service>.*`), and publish on the
//!   events exchange only its own routing keys (`<service>.*`, a topic permission). Each may
//!   declare and bind to the commands exchange and hold its style's marker queue
//!   (`<ns>.style.*`); only the saga's user may write to the commands exchange.

mod grants;

pub use grants::{
    BrokerPermissions, Management, ProvisionError, broker_permissions, database_role,
};

use service_kit::{Style, history::Retention};
use sqlx::PgConnection;

/// Everything `shop provision` needs, from environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`, as a role that may create roles (the database's owner or a superuser).
    pub admin_database_url: String,
    /// `RABBITMQ_MANAGEMENT_URL`
    pub management_url: String,
    /// User and password of `AMQP_URL`: a RabbitMQ administrator.
    pub broker_admin: (String, String),
    /// The vhost of `AMQP_URL`.
    pub vhost: String,
    /// `AMQP_URL` itself (an administrator's), to declare the topology.
    pub amqp_url: String,
    /// `SHOP_NAMESPACE`
    pub namespace: String,
    /// `SHOP_STYLE`: which services' queues to declare.
    pub style: Style,
    /// `HISTORY_MAX_AGE`, `HISTORY_MAX_BYTES`: the history's retention, if it is created.
    pub history: Retention,
    /// Per service: `<SERVICE>_DB_PASSWORD` and `<SERVICE>_AMQP_PASSWORD`.
    pub passwords: Vec<ServicePasswords>,
}

#[derive(Debug, Clone)]
pub struct ServicePasswords {
    pub service: &'static str,
    pub database: String,
    pub broker: String,
    /// `<SERVICE>_DATABASE_URL`: an administrator's URL on the server that keeps this
    /// service's schema, when it is not `DATABASE_URL`'s.
    pub admin_database_url: Option<String>,
}

/// The development default of every service password, meant only for a laptop.
pub fn development_password(service: &str) -> String {
    format!("{service}-dev-password")
}

impl Settings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let amqp_url =
            var("AMQP_URL").unwrap_or_else(|| service_kit::config::DEFAULT_AMQP_URL.to_owned());
        let uri: lapin::uri::AMQPUri = amqp_url.parse().map_err(|e| format!("AMQP_URL: {e}"))?;
        let passwords = crate::registry::names()
            .map(|service| {
                let upper = service.to_ascii_uppercase();
                ServicePasswords {
                    service,
                    database: var(&format!("{upper}_DB_PASSWORD"))
                        .unwrap_or_else(|| development_password(service)),
                    broker: var(&format!("{upper}_AMQP_PASSWORD"))
                        .unwrap_or_else(|| development_password(service)),
                    admin_database_url: var(&format!("{upper}_DATABASE_URL")),
                }
            })
            .collect();
        Ok(Self {
            admin_database_url: var("DATABASE_URL")
                .unwrap_or_else(|| service_kit::config::DEFAULT_DATABASE_URL.to_owned()),
            management_url: var("RABBITMQ_MANAGEMENT_URL")
                .unwrap_or_else(|| "http://127.0.0.1:15672".to_owned()),
            broker_admin: (
                uri.authority.userinfo.username.clone(),
                uri.authority.userinfo.password.clone(),
            ),
            vhost: uri.vhost.clone(),
            amqp_url: amqp_url.clone(),
            namespace: var("SHOP_NAMESPACE")
                .unwrap_or_else(|| service_kit::config::DEFAULT_NAMESPACE.to_owned()),
            style: var("SHOP_STYLE")
                .map(|style| style.parse())
                .transpose()
                .map_err(|e| format!("SHOP_STYLE: {e}"))?
                .unwrap_or_default(),
            history: Retention {
                max_age: var("HISTORY_MAX_AGE")
                    .map(|age| age.parse())
                    .transpose()
                    .map_err(|e| format!("HISTORY_MAX_AGE: {e}"))?
                    .unwrap_or(Retention::default().max_age),
                max_bytes: var("HISTORY_MAX_BYTES")
                    .map(|bytes| bytes.parse())
                    .transpose()
                    .map_err(|e| format!("HISTORY_MAX_BYTES: {e}"))?
                    .unwrap_or(Retention::default().max_bytes),
            },
            passwords,
        })
    }

    /// The environment variables this reads (the compose file may set no others on it).
    pub fn variables() -> Vec<String> {
        let shared = [
            "DATABASE_URL",
            "AMQP_URL",
            "RABBITMQ_MANAGEMENT_URL",
            "SHOP_NAMESPACE",
            "SHOP_STYLE",
            "HISTORY_MAX_AGE",
            "HISTORY_MAX_BYTES",
            "RUST_LOG",
        ];
        let passwords = crate::registry::names().flat_map(|service| {
            let upper = service.to_ascii_uppercase();
            [
                format!("{upper}_DB_PASSWORD"),
                format!("{upper}_AMQP_PASSWORD"),
                format!("{upper}_DATABASE_URL"),
            ]
        });
        shared
            .map(str::to_owned)
            .into_iter()
            .chain(passwords)
            .collect()
    }
}

/// Declares every service's queues and bindings up front, and the shop's history (with
/// `history`'s retention, unless it exists), so that no event is published before the queues
/// of all its subscribers exist (a service declares its own again at start; that is
/// idempotent). Needs a broker user that may configure everything.
pub async fn declare_topologies(
    amqp_url: &str,
    namespace: &str,
    style: Style,
    retry_delays: &[std::time::Duration],
    history: Retention,
) -> Result<(), ProvisionError> {
    declare_topologies_of(amqp_url, namespace, style, retry_delays, history, |_| true).await
}

/// Like [`declare_topologies`], for the services `wanted` picks (a queue nobody consumes
/// would only fill up).
pub async fn declare_topologies_of(
    amqp_url: &str,
    namespace: &str,
    style: Style,
    retry_delays: &[std::time::Duration],
    history: Retention,
    wanted: fn(&str) -> bool,
) -> Result<(), ProvisionError> {
    let connection =
        lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    service_kit::history::declare(&connection, namespace, history).await?;
    let channel = connection.create_channel().await?;
    for service in crate::SERVICES
        .iter()
        .filter(|service| service.runs_in(style) && wanted(service.name))
    {
        service
            .topology(namespace, style, retry_delays)
            .declare(&channel)
            .await?;
    }
    // A service of the other style only (the saga, in a shop switched back to choreography)
    // stops hearing events, so its queue does not fill up; its queues stay, dead letters too.
    for service in crate::SERVICES.iter().filter(|s| !s.runs_in(style)) {
        let Some(theirs) = service.styles.first() else {
            continue;
        };
        let queue = service_kit::topology::queue_name(namespace, service.name);
        // Its own channel: unbinding from a queue that was never declared closes it.
        let unbinding = connection.create_channel().await?;
        for key in service
            .topology(namespace, *theirs, retry_delays)
            .routing_keys
        {
            let unbound = unbinding
                .queue_unbind(
                    queue.as_str().into(),
                    service_kit::topology::exchange_name(namespace)
                        .as_str()
                        .into(),
                    key.into(),
                    lapin::types::FieldTable::default(),
                )
                .await;
            if unbound.is_err() {
                break;
            }
        }
    }
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

/// Applies the whole policy: a role and a broker user per service, and every topology.
pub async fn apply(settings: &Settings) -> Result<(), ProvisionError> {
    use sqlx::Connection as _;
    let management = Management {
        base_url: settings.management_url.clone(),
        user: settings.broker_admin.0.clone(),
        password: settings.broker_admin.1.clone(),
        http: reqwest::Client::new(),
    };
    for passwords in &settings.passwords {
        // Each service's role and schema on the server that keeps them.
        let admin_url = passwords
            .admin_database_url
            .as_deref()
            .unwrap_or(&settings.admin_database_url);
        let options: sqlx::postgres::PgConnectOptions = admin_url.parse()?;
        let database = options.get_database().unwrap_or("postgres").to_owned();
        let mut admin = PgConnection::connect_with(&options).await?;
        // Roles are global to the server: another provisioning of the same roles (another
        // database's) may update one at the same moment, and Postgres then refuses one of the
        // two updates; done again, it succeeds.
        let mut tries = 0;
        loop {
            match database_role(
                &mut admin,
                &database,
                passwords.service,
                &passwords.database,
            )
            .await
            {
                Err(ProvisionError::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("XX000") && tries < 10 =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                }
                result => break result?,
            }
        }
        let _ = admin.close().await;
        management
            .service_user(
                &settings.vhost,
                &settings.namespace,
                passwords.service,
                &passwords.broker,
            )
            .await?;
        tracing::info!(service = passwords.service, %database, vhost = %settings.vhost, "provisioned");
    }
    declare_topologies(
        &settings.amqp_url,
        &settings.namespace,
        settings.style,
        &service_kit::config::default_retry_delays(),
        settings.history,
    )
    .await
}
