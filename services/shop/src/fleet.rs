//! The five services as processes of this executable (`shop service <name>`, the same code as
//! their own binaries), each on a free port with its output in a log file: what `shop chaos`
//! and `shop bench` run the shop as.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use shop::{SERVICES, harness};
use tokio::process::{Child, Command};

/// One service process.
pub struct ServiceProcess {
    pub name: &'static str,
    pub port: u16,
    pub child: Option<Child>,
}

impl ServiceProcess {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
    pub services: Vec<ServiceProcess>,
}

impl Fleet {
    pub fn new(log_dir: &Path, env: Vec<(&'static str, String)>) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("cannot find the shop executable")?,
            log_dir: log_dir.to_owned(),
            env,
            services: Vec::new(),
        })
    }

    /// Starts every service of the registry and waits until all are ready.
    pub async fn start(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        for entry in &SERVICES {
            let port = harness::free_port()?;
            let child = self.spawn(entry.name, port)?;
            self.services.push(ServiceProcess {
                name: entry.name,
                port,
                child: Some(child),
            });
        }
        self.wait_ready(http).await
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        for service in &self.services {
            harness::wait_ready(http, &service.url(), Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Starts `name` on `port`, its output appended to its log.
    pub fn spawn(&self, name: &'static str, port: u16) -> anyhow::Result<Child> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(["service", name])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(child)
    }

    pub fn orders_url(&self) -> String {
        self.services
            .first()
            .map(ServiceProcess::url)
            .unwrap_or_default()
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
