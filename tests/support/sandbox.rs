//! One isolated environment per test: a database and a namespace of their own, removed again
//! (also when the test fails), and a guard that ends a hung run naming the test.

use super::*;

/// A test still running after this long is stuck (the whole suite takes well under a minute).
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// How long removing an environment may take before it is given up (a stuck broker must not
/// turn a failed test into a hung one).
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);

/// Ends the whole test run, naming the test, if the test that holds it is still running after
/// [`HANG_LIMIT`]: a hang (a broker that stopped answering, a task that never ends) must fail
/// the run with a name, not stall it. Dropping the guard disarms it.
struct HangGuard {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl HangGuard {
    fn arm() -> Self {
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                disarmed.recv_timeout(HANG_LIMIT)
            {
                eprintln!(
                    "{test} is still running after {HANG_LIMIT:?}: it is stuck; stopping the \
                     test run"
                );
                std::process::exit(101);
            }
        });
        Self { _disarm: disarm }
    }
}

/// One isolated environment: a database and a namespace, deleted again by [`Env::cleanup`]
/// (or when dropped, if the test failed first).
pub struct Env {
    pub namespace: String,
    /// The style its services run in (`config().style`).
    pub style: Style,
    pub database: String,
    pub database_url: String,
    pub pool: PgPool,
    sandbox: Sandbox,
    cleaned: bool,
    _hang_guard: HangGuard,
}

impl Env {
    pub async fn new() -> Self {
        init_logs();
        let hang_guard = HangGuard::arm();
        let sandbox = Sandbox::create(&admin_database_url(), &amqp_url(), "shop_test")
            .await
            .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&sandbox.database_url)
            .await
            .expect("connect to the test database");
        Self {
            namespace: sandbox.namespace.clone(),
            style: Style::Choreography,
            database: sandbox.database.clone(),
            database_url: sandbox.database_url.clone(),
            pool,
            sandbox,
            cleaned: false,
            _hang_guard: hang_guard,
        }
    }

    /// A service configuration for this environment, listening on a port of its own choice.
    pub fn config(&self) -> Config {
        let mut config = Config::defaults(([127, 0, 0, 1], 0).into());
        config.amqp_url = amqp_url();
        config.database_url = self.database_url.clone();
        config.namespace = self.namespace.clone();
        config.style = self.style;
        config.db_pool_size = 3;
        config.prefetch = 16;
        config.outbox_sweep_interval = Duration::from_millis(500);
        config.retry_delays = TEST_RETRY_DELAYS.to_vec();
        config.max_attempts = 8;
        config.auth = Some(auth_settings());
        let token_file = token_file(&self.sandbox);
        config.set_var("ORDERS_TOKEN_FILE", token_file.to_string_lossy());
        config
    }

    /// Drops the database and every queue and exchange of the namespace.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        self.pool.close().await;
        remove(&self.sandbox).await;
    }
}

/// The file the console reads its demo customer's token from (`ORDERS_TOKEN_FILE`), one per
/// environment, written when first asked for and removed with the environment.
fn token_file(sandbox: &Sandbox) -> std::path::PathBuf {
    let path = token_file_path(sandbox);
    if !path.exists() {
        std::fs::write(&path, token(console::DEMO_CUSTOMER, false))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    path
}

fn token_file_path(sandbox: &Sandbox) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.orders-token", sandbox.namespace))
}

async fn remove(sandbox: &Sandbox) {
    let _ = std::fs::remove_file(token_file_path(sandbox));
    let defaults = service_kit::config::default_retry_delays();
    let removed = tokio::time::timeout(
        CLEANUP_LIMIT,
        sandbox.cleanup(&[&defaults, &TEST_RETRY_DELAYS, &SLOW_RETRY_DELAYS], &[]),
    )
    .await;
    if removed.is_err() {
        eprintln!(
            "removing {} took over {CLEANUP_LIMIT:?}; left behind",
            sandbox.namespace
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test still cleans up, on a runtime of its own (the test's may be gone).
        let (sandbox, pool) = (self.sandbox.clone(), self.pool.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    pool.close().await;
                    remove(&sandbox).await;
                });
            }
        })
        .join();
    }
}
