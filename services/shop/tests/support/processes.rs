//! The shop as processes of the `shop` binary (the fleet), on a sandbox of its own: a fresh
//! database and namespace on the tests' Postgres and RabbitMQ, every queue declared first.

use std::path::PathBuf;

use service_kit::config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, default_retry_delays};
use shop::{fleet::Fleet, harness::Sandbox, provision};

pub struct ProcessShop {
    pub sandbox: Sandbox,
    pub fleet: Fleet,
    log_dir: PathBuf,
}

impl ProcessShop {
    /// Starts every service as a process, with `extra` settings beside the sandbox's.
    pub async fn start(prefix: &str, extra: Vec<(&'static str, String)>) -> Result<Self, String> {
        let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
        let sandbox = Sandbox::create(
            &setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
            &setting("TEST_AMQP_URL", DEFAULT_AMQP_URL),
            prefix,
        )
        .await
        .map_err(|e| e.to_string())?;
        let log_dir = std::env::temp_dir().join(&sandbox.namespace);
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let mut env = vec![
            ("DATABASE_URL", sandbox.database_url.clone()),
            ("AMQP_URL", sandbox.amqp_url.clone()),
            ("SHOP_NAMESPACE", sandbox.namespace.clone()),
            ("DB_POOL_SIZE", "3".to_owned()),
        ];
        env.extend(extra);
        let fleet = Fleet::new(env!("CARGO_BIN_EXE_shop").as_ref(), &log_dir, env);
        let mut shop = Self {
            sandbox,
            fleet,
            log_dir,
        };
        let started = async {
            provision::declare_topologies(
                &shop.sandbox.amqp_url,
                &shop.sandbox.namespace,
                &default_retry_delays(),
            )
            .await
            .map_err(|e| format!("topology: {e}"))?;
            shop.fleet
                .start(&reqwest::Client::new(), 1)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match started {
            Ok(()) => Ok(shop),
            Err(e) => {
                shop.stop().await;
                Err(e)
            }
        }
    }

    /// Stops the processes and removes the sandbox and the logs.
    pub async fn stop(mut self) {
        self.fleet.stop().await;
        self.sandbox.cleanup(&[&default_retry_delays()], &[]).await;
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}
