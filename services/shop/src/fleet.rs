//! The five services as processes of the `shop` executable (`shop service <name>`, the same
//! code as their own binaries), each on a free port with its output in a log file, one or several
//! replicas of each: what `shop chaos` and `shop bench` run the shop as.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{
    SERVICES,
    harness::{self, HarnessError},
    registry,
};
use tokio::process::{Child, Command};

/// One service process: replica `replica` of service `name`.
pub struct ServiceProcess {
    pub name: &'static str,
    pub replica: usize,
    pub port: u16,
    pub child: Option<Child>,
}

impl ServiceProcess {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `payment`, or `payment#2` for a second replica.
    pub fn label(&self) -> String {
        replica_label(self.name, self.replica)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }
}

pub struct Fleet {
    exe: PathBuf,
    log_dir: PathBuf,
    /// Settings every service gets (database, broker, namespace, tuning).
    env: Vec<(&'static str, String)>,
    /// Settings of one service only, over the shared ones: `(service, variable, value)`.
    service_env: Vec<(&'static str, &'static str, String)>,
    pub services: Vec<ServiceProcess>,
}

impl Fleet {
    /// Services run as `exe service <name>`, `exe` being the `shop` executable.
    pub fn new(exe: &Path, log_dir: &Path, env: Vec<(&'static str, String)>) -> Self {
        Self {
            exe: exe.to_owned(),
            log_dir: log_dir.to_owned(),
            env,
            service_env: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Gives `service` its own `variable` (its own database, say), over the shared setting.
    pub fn set_for(&mut self, service: &'static str, variable: &'static str, value: String) {
        self.service_env.push((service, variable, value));
    }

    /// Starts `replicas` processes of every service of the registry, all at once (replicas
    /// of one service race through their start-up, migrations included), and waits until all
    /// are ready.
    pub async fn start(
        &mut self,
        http: &reqwest::Client,
        replicas: usize,
    ) -> Result<(), HarnessError> {
        self.start_only(http, replicas, |_| true).await
    }

    /// Like [`Fleet::start`], for the services `wanted` picks.
    pub async fn start_only(
        &mut self,
        http: &reqwest::Client,
        replicas: usize,
        wanted: fn(&str) -> bool,
    ) -> Result<(), HarnessError> {
        for entry in SERVICES.iter().filter(|entry| wanted(entry.name)) {
            for replica in 0..replicas {
                let port = harness::free_port().map_err(|source| HarnessError::Start {
                    what: "a service (no free port)".to_owned(),
                    source,
                })?;
                let child = self.spawn(entry.name, replica, port)?;
                self.services.push(ServiceProcess {
                    name: entry.name,
                    replica,
                    port,
                    child: Some(child),
                });
            }
        }
        self.wait_ready(http).await
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) -> Result<(), HarnessError> {
        for service in &self.services {
            harness::wait_ready(http, &service.url(), Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Starts replica `replica` of `name` on `port`, its output appended to its log.
    pub fn spawn(
        &self,
        name: &'static str,
        replica: usize,
        port: u16,
    ) -> Result<Child, HarnessError> {
        let label = replica_label(name, replica);
        let failed = |source| HarnessError::Start {
            what: label.clone(),
            source,
        };
        let log_path = self.log_dir.join(format!("{label}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(failed)?;
        let mut command = Command::new(&self.exe);
        // The console's buttons call this fleet's Orders API (orders starts first).
        if let Some(orders) = self.services.first() {
            command.env("ORDERS_URL", orders.url());
        }
        let child = command
            .args(["service", name])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(
                self.service_env
                    .iter()
                    .filter(|(service, _, _)| *service == name)
                    .map(|(_, k, v)| (k, v)),
            )
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone().map_err(failed)?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(failed)?;
        Ok(child)
    }

    pub fn orders_url(&self) -> String {
        self.services
            .first()
            .map(ServiceProcess::url)
            .unwrap_or_default()
    }

    /// Where the services' logs are written.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Every orders replica's URL: a client spreads its orders over them.
    pub fn orders_urls(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|service| service.name == registry::orders().name)
            .map(ServiceProcess::url)
            .collect()
    }

    /// Stops every service gracefully.
    pub async fn stop(&mut self) {
        for service in &mut self.services {
            if let Some(child) = service.child.as_mut() {
                terminate(child).await;
            }
        }
    }
}

/// How a replica is named in logs and reports: `payment` for the first, `payment#2` after.
pub fn replica_label(name: &str, replica: usize) -> String {
    if replica == 0 {
        name.to_owned()
    } else {
        format!("{name}#{}", replica + 1)
    }
}

/// Database connections per service process when `replicas` of each share one Postgres:
/// this machine's allows 100 in all, and the auditor, the load and the tests need some too.
pub fn pool_size_per_replica(replicas: usize) -> usize {
    (50 / (SERVICES.len() * replicas.max(1))).clamp(2, 5)
}

/// SIGTERM, then the service's own graceful shutdown (SIGKILL if it takes over 30 s).
pub async fn terminate(child: &mut Child) {
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
