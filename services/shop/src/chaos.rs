//! `shop chaos`: the shop under faults, end to end. Starts the five services as processes on a
//! fresh database and namespace, places orders at a steady rate (retrying each POST with its
//! Idempotency-Key, as a real client would), and meanwhile SIGKILLs and restarts services,
//! restarts RabbitMQ and Postgres, and re-publishes events that were already delivered. Then
//! it waits for the shop to settle, audits it and prints what happened.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicAckOptions, ExchangeDeleteOptions},
};
use serde_json::{Value, json};
use service_kit::{
    CancellationToken, Config,
    publisher::{Outgoing, Publisher},
    topology::{self, Topology},
};
use shop::{SERVICES, audit};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::{process::Child, process::Command, sync::Semaphore};
use uuid::Uuid;

/// Retry delays of the services under test: short, so deferrals resolve within the run.
const RETRY_DELAYS_MS: [u64; 3] = [200, 1_000, 3_000];

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Orders to place.
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Orders placed per second.
    #[arg(long, default_value_t = 15.0)]
    pub rate: f64,
    /// Services stopped and restarted during the run (alternately SIGKILL and SIGTERM).
    #[arg(long, default_value_t = 8)]
    pub kills: usize,
    /// Skip `rabbitmqctl stop_app` / `start_app` (it needs the rights to run rabbitmqctl).
    #[arg(long)]
    pub no_broker_restart: bool,
    /// Skip restarting Postgres (it needs the rights to run pg_ctlcluster).
    #[arg(long)]
    pub no_database_restart: bool,
    /// Events re-published as duplicate deliveries.
    #[arg(long, default_value_t = 200)]
    pub duplicates: usize,
    /// How long the shop may take to settle after the faults stop.
    #[arg(long, default_value_t = 180)]
    pub settle_seconds: u64,
    /// Keep the database, queues and logs afterwards for inspection.
    #[arg(long)]
    pub keep: bool,
}

/// Prints what happens, stamped with the time since the run started.
#[derive(Clone, Copy)]
struct Journal(Instant);

impl Journal {
    fn note(self, line: impl AsRef<str>) {
        println!(
            "t+{:6.1}s  {}",
            self.0.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}

/// An event as delivered: routing key, body, properties (so it can be delivered again).
type Recorded = (String, Vec<u8>, BasicProperties);

/// An accepted order: its id, the outcome its path must reach, how many POSTs it took.
type Placed = (Uuid, &'static str, u32);

struct ServiceProcess {
    name: &'static str,
    port: u16,
    child: Option<Child>,
    kills: usize,
    terms: usize,
}

struct Run {
    exe: PathBuf,
    id: String,
    namespace: String,
    database: String,
    admin_url: String,
    database_url: String,
    amqp_url: String,
    log_dir: PathBuf,
    http: reqwest::Client,
}

impl Run {
    fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    fn spawn(&self, service: &mut ServiceProcess) -> anyhow::Result<()> {
        let log_path = self.log_dir.join(format!("{}.log", service.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(["service", service.name])
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("SHOP_NAMESPACE", &self.namespace)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", service.port))
            .env("DB_POOL_SIZE", "5")
            .env("OUTBOX_SWEEP_MS", "500")
            .env(
                "RETRY_DELAYS_MS",
                RETRY_DELAYS_MS.map(|d| d.to_string()).join(","),
            )
            .env("MAX_ATTEMPTS", "30")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", service.name))?;
        service.child = Some(child);
        Ok(())
    }

    async fn ready(&self, port: u16) -> bool {
        self.http
            .get(self.url(port, "/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn wait_ready(&self, port: u16, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while !self.ready(port).await {
            if Instant::now() > deadline {
                bail!("service on port {port} not ready after {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// POSTs until the order is accepted, with the same key every time; `(order id, tries)`.
    async fn place(
        &self,
        orders_port: u16,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<(Uuid, u32)> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut tries = 0;
        loop {
            tries += 1;
            let response = self
                .http
                .post(self.url(orders_port, "/orders"))
                .header("idempotency-key", key)
                .json(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = response
                && response.status() == 202
                && let Ok(placed) = response.json::<Value>().await
                && let Some(id) = placed["order_id"].as_str().and_then(|id| id.parse().ok())
            {
                return Ok((id, tries));
            }
            if Instant::now() > deadline {
                bail!("order {key} not accepted after {tries} tries");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn order_status(&self, orders_port: u16, order_id: Uuid) -> Option<String> {
        let response = self
            .http
            .get(self.url(orders_port, &format!("/orders/{order_id}")))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let order: Value = response.json().await.ok()?;
        order["status"].as_str().map(str::to_owned)
    }
}

fn order_body(i: usize) -> (Value, &'static str) {
    let (sku, quantity, method, country, outcome) = match i % 4 {
        0 | 1 => ("STICKER-001", 1, "card", "NL", "confirmed"),
        2 => ("MUG-001", 1, "card_declined", "GB", "cancelled"),
        _ => ("BOOK-001", 1, "card", "AQ", "cancelled"),
    };
    let body = json!({
        "customer_id": format!("chaos-{i}"),
        "items": [{ "sku": sku, "quantity": quantity }],
        "payment_method": method,
        "shipping_address": { "name": "Chaos Monkey", "line1": "1 Fault Line",
            "city": "Anywhere", "postal_code": "00000", "country": country },
    });
    (body, outcome)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn shell(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: cannot restart Postgres (use --no-database-restart)")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no Postgres cluster in /etc/postgresql")
}

/// Records every event on the exchange (reconnecting through broker restarts) so some can be
/// delivered again later.
async fn spy(
    amqp_url: String,
    exchange: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let session = async {
            let connection =
                Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            let mut deliveries = topology::tap(&channel, &exchange, "chaos-spy").await?;
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                seen.lock().unwrap_or_else(PoisonError::into_inner).push((
                    delivery.routing_key.to_string(),
                    delivery.data,
                    delivery.properties,
                ));
            }
            Ok::<(), lapin::Error>(())
        };
        tokio::select! {
            _ = session => tokio::time::sleep(Duration::from_millis(500)).await,
            () = stop.cancelled() => {}
        }
    }
}

/// Re-publishes `count` already-seen events (same message ids): duplicate deliveries.
async fn inject_duplicates(
    amqp_url: &str,
    exchange: &str,
    seen: &Mutex<Vec<Recorded>>,
    count: usize,
) -> anyhow::Result<usize> {
    let picks: Vec<_> = {
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.is_empty() {
            return Ok(0);
        }
        (0..count)
            .map(|_| seen[fastrand::usize(..seen.len())].clone())
            .collect()
    };
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let publisher = Publisher::open(&connection).await?;
    let messages = picks
        .iter()
        .map(|(routing_key, body, properties)| Outgoing {
            exchange,
            routing_key,
            body,
            properties: properties.clone(),
        })
        .collect();
    let sent = publisher
        .publish_all(messages)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    let _ = connection.close(200, "duplicates sent".into()).await;
    Ok(sent)
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<()> {
    let base = Config::from_env(orders::DEFAULT_HTTP_ADDR)?;
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let exe = std::env::current_exe().context("cannot find the shop executable")?;
    let log_dir = std::env::temp_dir().join(format!("shop-chaos-{id}"));
    std::fs::create_dir_all(&log_dir)?;
    let database = format!("shop_chaos_{id}");
    let run = Run {
        exe,
        namespace: format!("chaos-{id}"),
        database_url: service_kit::config::with_database(&base.database_url, &database),
        database,
        admin_url: base.database_url.clone(),
        amqp_url: base.amqp_url.clone(),
        id,
        log_dir,
        http: reqwest::Client::new(),
    };
    let mut admin = PgConnection::connect(&run.admin_url)
        .await
        .context("cannot reach Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        run.database
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;

    let run = Arc::new(run);
    let result = chaos(run.clone(), &options).await;
    if options.keep || result.is_err() {
        println!(
            "kept for inspection: database {}, namespace {}, logs in {} (SHOP_NAMESPACE={} DATABASE_URL={} shop audit)",
            run.database,
            run.namespace,
            run.log_dir.display(),
            run.namespace,
            run.database_url
        );
    } else {
        cleanup(&run).await;
    }
    result
}

async fn chaos(run: Arc<Run>, options: &ChaosOptions) -> anyhow::Result<()> {
    let journal = Journal(Instant::now());
    journal.note(format!(
        "namespace {}, database {}, logs in {}",
        run.namespace,
        run.database,
        run.log_dir.display()
    ));

    let mut services = Vec::new();
    for name in SERVICES {
        services.push(ServiceProcess {
            name,
            port: free_port()?,
            child: None,
            kills: 0,
            terms: 0,
        });
    }
    for service in &mut services {
        run.spawn(service)?;
    }
    for service in &services {
        run.wait_ready(service.port, Duration::from_secs(60))
            .await?;
    }
    let orders_port = services[0].port;
    journal.note("five services up and ready");

    let exchange = topology::exchange_name(&run.namespace);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop_spy = CancellationToken::new();
    let spy_task = tokio::spawn(spy(
        run.amqp_url.clone(),
        exchange.clone(),
        seen.clone(),
        stop_spy.clone(),
    ));

    // The load: steady rate, each order retried with its key until accepted.
    let load_duration = Duration::from_secs_f64(options.orders as f64 / options.rate);
    let placed: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(64));
    let load = {
        let placed = placed.clone();
        let run = run.clone();
        let (orders, rate) = (options.orders, options.rate);
        async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut tasks = Vec::new();
            for i in 0..orders {
                ticker.tick().await;
                let permit = in_flight.clone().acquire_owned().await;
                let placed = placed.clone();
                let run = run.clone();
                let key = format!("chaos-{}-{i}", run.id);
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let (body, outcome) = order_body(i);
                    match run.place(orders_port, &key, &body).await {
                        Ok((order_id, tries)) => placed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((order_id, outcome, tries)),
                        Err(e) => journal.note(format!("LOST order {key}: {e}")),
                    }
                }));
            }
            futures_util::future::join_all(tasks).await;
        }
    };

    // The faults, spread over the load.
    let faults = async {
        let mut recovery = None;
        let steps = options.kills + 2;
        let step = load_duration / u32::try_from(steps + 1).unwrap_or(1);
        let broker_at = steps / 3;
        let database_at = 2 * steps / 3;
        let mut duplicates_sent = 0;
        for n in 0..steps {
            tokio::time::sleep(step).await;
            let batch = options.duplicates / steps + usize::from(n < options.duplicates % steps);
            match inject_duplicates(&run.amqp_url, &exchange, &seen, batch).await {
                Ok(sent) => duplicates_sent += sent,
                Err(e) => journal.note(format!("duplicate injection failed: {e}")),
            }
            if n == broker_at && !options.no_broker_restart {
                recovery = Some(restart_broker(&run, &services, orders_port, journal).await?);
            } else if n == database_at && !options.no_database_restart {
                restart_database(journal).await?;
            } else {
                let victim = &mut services[fastrand::usize(..SERVICES.len())];
                // Every other stop is a clean SIGTERM while busy: in-flight messages must
                // finish or go back to the queue, never be lost.
                let graceful = n % 2 == 1;
                if let Some(child) = victim.child.as_mut() {
                    if graceful {
                        terminate(child).await;
                    } else {
                        let _ = child.kill().await;
                    }
                }
                let signal = if graceful {
                    victim.terms += 1;
                    "SIGTERM"
                } else {
                    victim.kills += 1;
                    "SIGKILL"
                };
                journal.note(format!("{signal} {}", victim.name));
                tokio::time::sleep(Duration::from_millis(fastrand::u64(100..1_500))).await;
                run.spawn(victim)?;
                journal.note(format!("restarted {}", victim.name));
            }
        }
        anyhow::Ok((recovery, duplicates_sent))
    };
    let ((), faults) = tokio::join!(load, faults);
    let (recovery, duplicates_sent) = faults?;
    journal.note("load and faults done; waiting for the shop to settle");

    for service in &services {
        run.wait_ready(service.port, Duration::from_secs(60))
            .await?;
    }
    let pool = PgPool::connect(&run.database_url).await?;
    let settle_started = Instant::now();
    let broker = audit::Broker {
        amqp_url: &run.amqp_url,
        namespace: &run.namespace,
    };
    let report = audit::audit_until_clean(
        &pool,
        Some(&broker),
        Duration::from_secs(options.settle_seconds),
    )
    .await?;
    let settled_in = settle_started.elapsed();
    stop_spy.cancel();
    let _ = spy_task.await;

    // Accepted orders that the shop does not have, or that ended wrongly.
    let placed = placed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut lost = options.orders - placed.len();
    let mut wrong_outcome = 0;
    for (order_id, outcome, _) in &placed {
        match run.order_status(orders_port, *order_id).await {
            None => lost += 1,
            Some(status) if status != *outcome => wrong_outcome += 1,
            Some(_) => {}
        }
    }
    let mut absorbed = BTreeMap::new();
    for schema in SERVICES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(sum(duplicates), 0)::bigint FROM {schema}.inbox"
        )))
        .fetch_one(&pool)
        .await?;
        absorbed.insert(schema, n);
    }
    pool.close().await;
    for service in &mut services {
        if let Some(child) = service.child.as_mut() {
            terminate(child).await;
        }
    }

    let retried_posts: u32 = placed.iter().map(|(_, _, tries)| tries - 1).sum();
    let twice = report
        .violations
        .iter()
        .filter(|v| matches!(v.invariant, 2..=5))
        .count();
    println!("\n==== chaos report ====");
    println!(
        "orders placed:            {} of {} ({} POSTs retried with their Idempotency-Key)",
        placed.len(),
        options.orders,
        retried_posts
    );
    println!(
        "stops and restarts:       {} (SIGKILL/SIGTERM)",
        services
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.kills, s.terms))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match recovery {
        Some(recovery) => println!(
            "broker restart:           back up -> first order confirmed in {:.1}s",
            recovery.as_secs_f64()
        ),
        None => println!("broker restart:           skipped"),
    }
    println!(
        "database restart:         {}",
        if options.no_database_restart {
            "skipped"
        } else {
            "done"
        }
    );
    println!("duplicates injected:      {duplicates_sent}");
    println!(
        "duplicates absorbed:      {} ({})",
        absorbed.values().sum::<i64>(),
        absorbed
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("settled after faults in:  {:.1}s", settled_in.as_secs_f64());
    println!("orders lost:              {lost}");
    println!("orders with wrong outcome: {wrong_outcome}");
    println!("effects applied twice:    {twice}");
    print!("audit: {report}");
    if lost > 0 || wrong_outcome > 0 || !report.is_clean() {
        bail!(
            "the shop broke its promises under faults (logs in {})",
            run.log_dir.display()
        );
    }
    Ok(())
}

/// SIGTERM, then the service's own graceful shutdown (SIGKILL if it takes over 30 s).
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Stops the broker's app, checks every service reports not ready, starts it again and
/// measures how long until a new order is confirmed.
async fn restart_broker(
    run: &Run,
    services: &[ServiceProcess],
    orders_port: u16,
    journal: Journal,
) -> anyhow::Result<Duration> {
    shell("rabbitmqctl", &["stop_app"]).await?;
    journal.note("RabbitMQ stopped (rabbitmqctl stop_app)");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut not_ready = 0;
    while Instant::now() < deadline {
        not_ready = 0;
        for service in services {
            if !run.ready(service.port).await {
                not_ready += 1;
            }
        }
        if not_ready == services.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    journal.note(format!(
        "/readyz while the broker is down: {not_ready} of {} services not ready",
        services.len()
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    shell("rabbitmqctl", &["start_app"]).await?;
    let back = Instant::now();
    journal.note("RabbitMQ started (rabbitmqctl start_app)");
    let (body, _) = order_body(0);
    let (order_id, _) = run
        .place(orders_port, &format!("chaos-{}-probe", run.id), &body)
        .await?;
    let deadline = back + Duration::from_secs(120);
    while run.order_status(orders_port, order_id).await.as_deref() != Some("confirmed") {
        if Instant::now() > deadline {
            bail!("no order confirmed within 120 s of the broker coming back");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = back.elapsed();
    journal.note(format!(
        "first order confirmed {:.1}s after the broker came back",
        recovery.as_secs_f64()
    ));
    Ok(recovery)
}

async fn restart_database(journal: Journal) -> anyhow::Result<()> {
    let version = postgres_version()?;
    shell(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )
    .await?;
    journal.note(format!(
        "Postgres {version} restarted (pg_ctlcluster restart -m fast)"
    ));
    Ok(())
}

async fn cleanup(run: &Run) {
    if let Ok(connection) =
        Connection::connect(&run.amqp_url, ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        let delays: Vec<Duration> = RETRY_DELAYS_MS
            .iter()
            .copied()
            .map(Duration::from_millis)
            .collect();
        for service in SERVICES {
            let _ = Topology::new(&run.namespace, service, vec![], &delays)
                .delete(&channel)
                .await;
        }
        let _ = channel
            .exchange_delete(
                topology::exchange_name(&run.namespace).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = connection.close(200, "chaos done".into()).await;
    }
    if let Ok(mut admin) = PgConnection::connect(&run.admin_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            run.database
        )))
        .execute(&mut admin)
        .await;
    }
    let _ = std::fs::remove_dir_all(&run.log_dir);
}
