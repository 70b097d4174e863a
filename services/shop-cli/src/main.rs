//! `shop`: the operator's command-line tool.
//!
//! - `shop up` starts the services as separate processes (each one `shop service <name>`,
//!   the same code as the `orders`, `payment`, … binaries), prefixes their logs with the
//!   service name, and stops them all on Ctrl-C or SIGTERM. `--style orchestration` runs the
//!   orchestrated twin (the saga too).
//! - `shop service <name>` runs one service in the foreground.
//! - `shop map` prints the flow map (who announces what, who reacts), from the code.
//! - `shop audit` checks the shop's invariants (docs/architecture.md) over its data and queues.
//! - `shop dead-letters` lists dead letters by cause, re-drives them and shows past re-drives.
//! - `shop history <order_id>` reads an order's story from the broker's log; `shop replay
//!   <service>` rebuilds a subscriber's view from it.
//! - With the `lab` feature (the default; not in the service image): `shop chaos` runs the
//!   shop under faults, `shop bench` measures its speed.

mod dead_letters;
mod history;

use shop::{
    ServiceEntry, asyncapi, audit,
    fleet::{self, Fleet, Output, Ports},
    issuer::{self, DevIssuer},
    map, openapi, registry,
};

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use service_kit::Style;

#[derive(Parser)]
#[command(name = "shop", about = "Run and operate the choreographed shop")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start every service, each its own process, on their default ports (8080-8086).
    Up {
        /// Processes per service. Replica k (from 0) listens on its service's port + 100 k
        /// (orders: 8080, 8180, …); all consume the same queue and share the schema.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
        replicas: u16,
        /// How the services coordinate: `choreography` (events) or `orchestration` (the saga
        /// sends commands; docs/choosing.md).
        #[arg(long, env = "SHOP_STYLE", default_value_t = Style::Choreography)]
        style: Style,
    },
    /// Run one service in this process.
    Service {
        #[arg(value_parser = registry::by_name)]
        service: &'static ServiceEntry,
    },
    /// Dead letters grouped by cause; re-drive a cause (or one message, or all) and see the
    /// history of re-drives.
    DeadLetters {
        #[command(subcommand)]
        action: dead_letters::Action,
    },
    /// Print an order's whole story as the shop's history (the broker's log, `<ns>.history`)
    /// holds it, apart from every service's database.
    History {
        order_id: uuid::Uuid,
        /// As JSON, each event with its payload.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a subscriber's view from the shop's history: runs the service here, beside any
    /// running instance, catching up from `--from`, and stops once caught up (what it already
    /// handled, its inbox absorbs).
    Replay {
        #[arg(value_parser = registry::by_name)]
        service: &'static ServiceEntry,
        /// `start` (everything the history holds) or an RFC 3339 time.
        #[arg(long, default_value = "start")]
        from: service_kit::history::ReplayFrom,
    },
    /// Run the shop under faults (kills, broker and database restarts, duplicate deliveries),
    /// then audit it and print what happened. Needs rabbitmqctl and pg_ctlcluster rights.
    #[cfg(feature = "lab")]
    Chaos(shop_lab::chaos::ChaosOptions),
    /// Measure the shop end to end: an open-loop load, latency from OrderPlaced to the outcome,
    /// CPU and memory per process, and the machine's ceilings in the same run.
    #[cfg(feature = "lab")]
    Bench(shop_lab::bench::BenchOptions),
    /// Run both styles, choreography and orchestration, on one workload in one run (rounds
    /// alternate which goes first) and print one table: throughput, latency, messages and
    /// transactions per order, CPU and memory per service, recovery from a broker restart,
    /// and what each service knows.
    #[cfg(feature = "lab")]
    Compare(shop_lab::bench::CompareOptions),
    /// Create each service's Postgres role and RabbitMQ user with least privilege (compose runs
    /// this before the services start). DATABASE_URL and AMQP_URL must be administrators'.
    Provision,
    /// GET a URL and succeed only on a 2xx answer (the containers' health check).
    Probe { url: String },
    /// Print a bearer token for `customer`, signed with the development key (SHOP_DEV_KEY, or
    /// ~/.shop/dev-signing-key.pem, created if missing): what `shop up` and `shop issuer` serve.
    Token {
        customer: String,
        /// With the shop:operate scope: every order is the holder's to see and cancel.
        #[arg(long)]
        operator: bool,
        /// How long the token is good for.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Serve the development key's JWKS (compose's identity provider), optionally writing the
    /// console's token to a file first.
    Issuer {
        #[arg(long, default_value = "0.0.0.0:8079")]
        listen: std::net::SocketAddr,
        /// Write a token for the console's demo customer here (its ORDERS_TOKEN_FILE).
        #[arg(long)]
        console_token_file: Option<std::path::PathBuf>,
    },
    /// Print the flow map (Markdown with a Mermaid diagram), generated from the services.
    Map {
        /// The same graph as JSON (the console's page draws it).
        #[arg(long)]
        json: bool,
    },
    /// Print the AsyncAPI 3.0 document (YAML) of every event, who sends and who receives it,
    /// generated from the catalog, the payload types and the services' subscriptions.
    Asyncapi,
    /// Print a service's OpenAPI 3.1 document (JSON), generated from its handlers: what its
    /// `GET /openapi.json` serves and `docs/openapi/<service>.json` holds.
    Openapi {
        #[arg(value_parser = registry::by_name)]
        service: &'static ServiceEntry,
    },
    /// Check the invariants over DATABASE_URL and the dead-letter queues of SHOP_NAMESPACE;
    /// exits non-zero if any is violated.
    Audit {
        /// Keep re-checking for up to this many seconds while orders are still in flight.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

/// How long `provision` keeps trying while Postgres or RabbitMQ are still starting.
const PROVISION_PATIENCE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Up { replicas, style } => up(usize::from(replicas), style).await,
        Commands::Service { service: entry } => service(entry).await,
        Commands::Audit { wait } => run_audit(wait).await,
        #[cfg(feature = "lab")]
        Commands::Chaos(options) => shop_lab::chaos::run(&current_exe()?, options).await,
        #[cfg(feature = "lab")]
        Commands::Bench(options) => shop_lab::bench::run(&current_exe()?, options).await,
        #[cfg(feature = "lab")]
        Commands::Compare(options) => shop_lab::bench::compare(&current_exe()?, options).await,
        Commands::Provision => {
            service_kit::init_logs();
            let settings = shop::provision::Settings::from_lookup(|name| std::env::var(name).ok())
                .map_err(anyhow::Error::msg)?;
            // Started together with the database and the broker (compose), it may be early:
            // try again for a while before giving up.
            let deadline = tokio::time::Instant::now() + PROVISION_PATIENCE;
            loop {
                match shop::provision::apply(&settings).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "cannot provision yet; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            println!("provisioned {} services", shop::SERVICES.len());
            Ok(())
        }
        Commands::Probe { url } => {
            let response = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{url} answered {}", response.status());
            }
            Ok(())
        }
        Commands::DeadLetters { action } => dead_letters::run(action).await,
        Commands::History { order_id, json } => history::show(order_id, json).await,
        Commands::Replay { service, from } => history::replay(service, from).await,
        Commands::Token {
            customer,
            operator,
            ttl_secs,
        } => {
            let issuer = DevIssuer::load_or_create(&issuer::default_key_path())?;
            println!(
                "{}",
                issuer.token(&customer, operator, Duration::from_secs(ttl_secs))?
            );
            Ok(())
        }
        Commands::Issuer {
            listen,
            console_token_file,
        } => {
            service_kit::init_logs();
            let issuer = Arc::new(DevIssuer::load_or_create(&issuer::default_key_path())?);
            if let Some(path) = console_token_file {
                write_console_token(&issuer, &path)?;
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(%listen, "serving the development issuer's keys");
            let shutdown = service_kit::shutdown_on_signal();
            tokio::select! {
                served = issuer.serve(listener) => served?,
                () = shutdown.cancelled() => {}
            }
            Ok(())
        }
        Commands::Map { json } => {
            print!(
                "{}",
                if json {
                    map::render_json()
                } else {
                    map::render()
                }
            );
            Ok(())
        }
        Commands::Asyncapi => {
            print!("{}", asyncapi::render());
            Ok(())
        }
        Commands::Openapi { service } => {
            print!("{}", openapi::render(service));
            Ok(())
        }
    }
}

async fn service(entry: &'static ServiceEntry) -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup(entry.name, entry.default_addr)?;
    (entry.bind)(config).await?.run(shutdown).await?;
    Ok(())
}

async fn run_audit(wait: u64) -> anyhow::Result<()> {
    let config = service_kit::Config::from_env(registry::orders().default_addr)?;
    // One pool per server: a service whose `<SERVICE>_DATABASE_URL` names its own is read there.
    let mut pools: std::collections::BTreeMap<String, sqlx::PgPool> = Default::default();
    for entry in &shop::SERVICES {
        if let std::collections::btree_map::Entry::Vacant(vacant) =
            pools.entry(entry.database_url(&config.database_url))
        {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(vacant.key())
                .await
                .with_context(|| format!("cannot connect to {}'s database", entry.name))?;
            vacant.insert(pool);
        }
    }
    let databases = audit::Databases::per_service(|service| {
        let url = registry::find(service).map_or_else(
            || config.database_url.clone(),
            |entry| entry.database_url(&config.database_url),
        );
        pools[&url].clone()
    });
    let amqp_url = config.first_amqp_url();
    let broker = audit::Broker {
        amqp_url: &amqp_url,
        namespace: &config.namespace,
    };
    let report =
        audit::audit_until_clean(&databases, Some(&broker), Duration::from_secs(wait)).await?;
    print!("{report}");
    if !report.is_clean() {
        bail!("{} invariant violations", report.violations.len());
    }
    Ok(())
}

/// This executable: the fleet runs each service as `shop service <name>`.
fn current_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the shop executable")
}

async fn up(replicas: usize, style: Style) -> anyhow::Result<()> {
    // Every queue exists before any service publishes: an order placed in the first second
    // must not miss a subscriber that is still starting.
    let config = service_kit::Config::from_env(registry::orders().default_addr)?;
    shop::provision::declare_topologies(
        &config.first_amqp_url(),
        &config.namespace,
        style,
        &config.retry_delays,
        config.history,
    )
    .await
    .context("cannot declare the topology (is RabbitMQ running on AMQP_URL?)")?;
    // The services read the rest of their settings from this environment, as this did.
    let mut settings = vec![("SHOP_STYLE", style.to_string())];
    // Authentication is on: unless the environment names an identity provider (or disables
    // it), the development issuer is served here and every service trusts it.
    let _issuer = if std::env::var_os("AUTH_JWKS_URL").is_none()
        && std::env::var_os("AUTH_DISABLED").is_none()
    {
        let key = issuer::default_key_path();
        let dev = Arc::new(DevIssuer::load_or_create(&key)?);
        let listen = format!("127.0.0.1:{}", issuer::DEFAULT_PORT);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot serve the development issuer on {listen}"))?;
        settings.extend(DevIssuer::settings(&format!("http://{listen}")));
        let token_file = key.with_extension("console-token");
        write_console_token(&dev, &token_file)?;
        settings.push(("ORDERS_TOKEN_FILE", token_file.display().to_string()));
        println!(
            "authentication is on: tokens from `shop token <customer>` (key {})",
            key.display()
        );
        Some(tokio::spawn(dev.serve(listener)))
    } else {
        None
    };
    if replicas > 1 && std::env::var_os("DB_POOL_SIZE").is_none() {
        // Replicas share one Postgres: fewer connections each, unless told otherwise.
        let pool_size = fleet::pool_size_per_replica(replicas);
        settings.push(("DB_POOL_SIZE", pool_size.to_string()));
    }
    let mut fleet = Fleet::new(&current_exe()?, Ports::Defaults, Output::Prefixed, settings);
    // A service may keep its schema on its own server (`<SERVICE>_DATABASE_URL`).
    for entry in &shop::SERVICES {
        fleet.set_for(
            entry.name,
            "DATABASE_URL",
            entry.database_url(&config.database_url),
        );
    }
    let http = reqwest::Client::new();
    let shutdown = service_kit::shutdown_on_signal();
    let started = tokio::select! {
        started = fleet.start(&http, replicas, |_| true) => Some(started),
        () = shutdown.cancelled() => None,
    };
    if let Some(Err(e)) = started {
        fleet.stop().await;
        return Err(e.into());
    }
    if started.is_some() {
        println!(
            "shop is up ({style}): {replicas} process(es) per service, orders API on \
             http://127.0.0.1:{}, console on http://127.0.0.1:{} (Ctrl-C stops everything)",
            registry::orders().default_addr.port(),
            registry::find("console").map_or(0, |console| console.default_addr.port()),
        );
    }
    let exited = tokio::select! {
        () = shutdown.cancelled() => None,
        exited = fleet.first_exit() => Some(exited),
    };
    if let Some((name, status)) = &exited {
        eprintln!("{name} exited ({status}); stopping the others");
    }
    fleet.stop().await;
    match exited {
        Some((name, _)) => bail!("{name} stopped unexpectedly"),
        None => Ok(()),
    }
}

/// A token for the console's demo customer, in a file only its owner reads: the console's
/// ORDERS_TOKEN_FILE.
fn write_console_token(issuer: &DevIssuer, path: &std::path::Path) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let token = issuer.token(console::DEMO_CUSTOMER, false, issuer::CONSOLE_TOKEN_TTL)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(())
}
