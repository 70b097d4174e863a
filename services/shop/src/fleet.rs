//! The six services as processes of the `shop` executable (`shop service <name>`, the same
//! code as their own binaries), one or several replicas of each: what `shop up` runs (on the
//! services' own ports, output prefixed on the terminal) and what the lab runs (`shop chaos`,
//! `shop bench`, the process-based tests: on free ports, output in log files).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};

use service_kit::Style;

use crate::{SERVICES, registry};

/// How long a service may take to report ready, unless the fleet is told otherwise.
const READY_PATIENCE: Duration = Duration::from_secs(60);
/// How long a service may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot start {what}")]
    Start {
        what: String,
        source: std::io::Error,
    },
    /// Not ready in time; `answered` is who answered `/readyz` on its port, if anyone did
    /// (another process that took the port answers as itself, in its own namespace).
    #[error("{what} not ready within {patience:?} (its port answered as {answered:?})")]
    NotReady {
        what: String,
        patience: Duration,
        answered: Option<Identity>,
    },
    #[error("{what} exited at start ({status}), {tries} times")]
    Exited {
        what: String,
        status: String,
        tries: usize,
    },
}

/// Who answers `/readyz` on a port: a service of a shop (its namespace), ready or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
    pub ready: bool,
}

/// How often a service process that exits at start is started again on another port (the one
/// it was given may have been taken between our check and its bind).
const START_TRIES: usize = 3;

/// Where the processes listen.
#[derive(Debug, Clone, Copy)]
pub enum Ports {
    /// Each service's default port; replica k on that port + 100 k (orders: 8080, 8180, …).
    Defaults,
    /// A free port each, chosen at start.
    Free,
}

/// Where their output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Appended to `<dir>/<label>.log`.
    LogFiles(PathBuf),
    /// This process's stdout, each line prefixed with the process's label.
    Prefixed,
}

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
    ports: Ports,
    output: Output,
    /// Settings every service gets (database, broker, namespace, tuning).
    env: Vec<(&'static str, String)>,
    /// Settings of one service only, over the shared ones: `(service, variable, value)`.
    service_env: Vec<(&'static str, &'static str, String)>,
    pub services: Vec<ServiceProcess>,
    /// How long a service may take to report ready (a minute unless changed).
    pub ready_patience: Duration,
}

impl Fleet {
    /// Services run as `exe service <name>`, `exe` being the `shop` executable.
    pub fn new(exe: &Path, ports: Ports, output: Output, env: Vec<(&'static str, String)>) -> Self {
        Self {
            exe: exe.to_owned(),
            ports,
            output,
            env,
            service_env: Vec::new(),
            services: Vec::new(),
            ready_patience: READY_PATIENCE,
        }
    }

    /// Changes a setting every service gets (for processes started from now on).
    pub fn set(&mut self, variable: &'static str, value: String) {
        self.env.retain(|(name, _)| *name != variable);
        self.env.push((variable, value));
    }

    /// The style the services run in: their `SHOP_STYLE` setting.
    pub fn style(&self) -> Style {
        self.env
            .iter()
            .find(|(name, _)| *name == "SHOP_STYLE")
            .and_then(|(_, style)| style.parse().ok())
            .unwrap_or_default()
    }

    /// Gives `service` its own `variable` (its own database, say), over the shared setting.
    pub fn set_for(&mut self, service: &'static str, variable: &'static str, value: String) {
        self.service_env.push((service, variable, value));
    }

    /// Starts `replicas` processes of each service of its style `wanted` picks from the
    /// registry, all at once (replicas of one service race through their start-up, migrations included), and
    /// waits until all are ready.
    pub async fn start(
        &mut self,
        http: &reqwest::Client,
        replicas: usize,
        wanted: fn(&str) -> bool,
    ) -> Result<(), FleetError> {
        let style = self.style();
        let before = self.services.len();
        for entry in SERVICES
            .iter()
            .filter(|entry| entry.runs_in(style) && wanted(entry.name))
        {
            for replica in 0..replicas {
                let port = match self.ports {
                    Ports::Defaults => {
                        entry.default_addr.port() + 100 * u16::try_from(replica).unwrap_or(0)
                    }
                    Ports::Free => free_port().map_err(|source| FleetError::Start {
                        what: "a service (no free port)".to_owned(),
                        source,
                    })?,
                };
                let child = self.spawn(entry.name, replica, port)?;
                self.services.push(ServiceProcess {
                    name: entry.name,
                    replica,
                    port,
                    child: Some(child),
                });
            }
        }
        for index in before..self.services.len() {
            self.wait_started(http, index).await?;
        }
        self.wait_ready(http).await
    }

    /// Waits until the process `index` is ready as itself; one that exits first (its port was
    /// taken, say) is started again on another free port, up to [`START_TRIES`] times.
    async fn wait_started(
        &mut self,
        http: &reqwest::Client,
        index: usize,
    ) -> Result<(), FleetError> {
        let namespace = self.namespace();
        for tries in 1..=START_TRIES {
            let deadline = Instant::now() + self.ready_patience;
            loop {
                let service = &mut self.services[index];
                let exited = match service.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                if let Some(status) = exited {
                    if tries == START_TRIES || !matches!(self.ports, Ports::Free) {
                        return Err(FleetError::Exited {
                            what: service.label(),
                            status,
                            tries,
                        });
                    }
                    let (name, replica) = (service.name, service.replica);
                    let port = free_port().map_err(|source| FleetError::Start {
                        what: format!("{name} (no free port)"),
                        source,
                    })?;
                    let child = self.spawn(name, replica, port)?;
                    let service = &mut self.services[index];
                    service.port = port;
                    service.child = Some(child);
                    break;
                }
                if is_itself(http, service, &namespace).await {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(not_ready(http, service, self.ready_patience).await);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Waits until every process answers `/readyz` with 200 as itself: its service, in this
    /// fleet's namespace.
    pub async fn wait_ready(&self, http: &reqwest::Client) -> Result<(), FleetError> {
        let namespace = self.namespace();
        for service in &self.services {
            let deadline = Instant::now() + self.ready_patience;
            while !is_itself(http, service, &namespace).await {
                if Instant::now() > deadline {
                    return Err(not_ready(http, service, self.ready_patience).await);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The namespace the services run in: their `SHOP_NAMESPACE` setting.
    fn namespace(&self) -> String {
        namespace_of(&self.env, |name| std::env::var(name).ok())
    }

    /// Starts replica `replica` of `name` on `port`.
    pub fn spawn(
        &self,
        name: &'static str,
        replica: usize,
        port: u16,
    ) -> Result<Child, FleetError> {
        let label = replica_label(name, replica);
        let failed = |source| FleetError::Start {
            what: label.clone(),
            source,
        };
        let mut command = Command::new(&self.exe);
        // The console's buttons call this fleet's Orders API.
        if let Some(orders) = self.orders_urls().first() {
            command.env("ORDERS_URL", orders);
        }
        command
            .args(["service", name])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(
                self.service_env
                    .iter()
                    .filter(|(service, _, _)| *service == name)
                    .map(|(_, k, v)| (k, v)),
            )
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .kill_on_drop(true);
        match &self.output {
            Output::LogFiles(dir) => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{label}.log")))
                    .map_err(failed)?;
                command
                    .stdout(Stdio::from(log.try_clone().map_err(failed)?))
                    .stderr(Stdio::from(log));
                command.spawn().map_err(failed)
            }
            Output::Prefixed => {
                let mut child = command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(failed)?;
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(prefix_lines(label.clone(), out));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(prefix_lines(label, err));
                }
                Ok(child)
            }
        }
    }

    /// Every orders replica's URL: a client spreads its orders over them.
    pub fn orders_urls(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|service| service.name == registry::orders().name)
            .map(ServiceProcess::url)
            .collect()
    }

    /// Waits until the first process exits: its label and how it ended.
    pub async fn first_exit(&mut self) -> (String, String) {
        let waits = self.services.iter_mut().filter_map(|service| {
            let label = service.label();
            let child = service.child.as_mut()?;
            Some(Box::pin(async move {
                let status = match child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(e) => e.to_string(),
                };
                (label, status)
            }))
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures_util::future::select_all(waits).await.0
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

/// SIGTERM, then the service's own graceful shutdown (SIGKILL if it takes too long).
pub async fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Whether the service at `base_url` answers `/readyz` with 200.
pub async fn is_ready(http: &reqwest::Client, base_url: &str) -> bool {
    http.get(format!("{base_url}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The `SHOP_NAMESPACE` a fleet's processes see: the one the fleet gives them, else the one they
/// inherit from this process's environment (`lookup`), else the default.
fn namespace_of(
    given: &[(&'static str, String)],
    lookup: impl Fn(&str) -> Option<String>,
) -> String {
    given
        .iter()
        .find(|(name, _)| *name == "SHOP_NAMESPACE")
        .map(|(_, namespace)| namespace.clone())
        .or_else(|| lookup("SHOP_NAMESPACE").filter(|namespace| !namespace.trim().is_empty()))
        .unwrap_or_else(|| service_kit::config::DEFAULT_NAMESPACE.to_owned())
}

/// Who `/readyz` at `base_url` says it is.
async fn identity(http: &reqwest::Client, base_url: &str) -> Option<Identity> {
    let ready: serde_json::Value = http
        .get(format!("{base_url}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(Identity {
        service: ready["service"].as_str()?.to_owned(),
        namespace: ready["namespace"].as_str()?.to_owned(),
        ready: ready["ready"].as_bool()?,
    })
}

/// Whether `service` answers on its port, ready, as itself in `namespace` (not another
/// process that took the port).
async fn is_itself(http: &reqwest::Client, service: &ServiceProcess, namespace: &str) -> bool {
    identity(http, &service.url()).await
        == Some(Identity {
            service: service.name.to_owned(),
            namespace: namespace.to_owned(),
            ready: true,
        })
}

async fn not_ready(
    http: &reqwest::Client,
    service: &ServiceProcess,
    patience: Duration,
) -> FleetError {
    FleetError::NotReady {
        what: service.label(),
        patience,
        answered: identity(http, &service.url()).await,
    }
}

/// Ports handed to service processes: below Linux's ephemeral range (32768 and up), which
/// port-0 binds and outgoing connections draw from, so neither takes one between our check and
/// the service's own bind.
const SERVICE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port that was free a moment ago, for a service started as a separate process (which
/// must be told its address up front; in-process services bind port 0 instead).
pub fn free_port() -> std::io::Result<u16> {
    let mut last_error = None;
    for _ in 0..100 {
        let port = fastrand::u16(SERVICE_PORTS);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port")))
}

async fn prefix_lines(label: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{label:>13} | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_one_the_processes_see() {
        let inherited = |value: &'static str| move |_: &str| Some(value.to_owned());
        let given = vec![("SHOP_NAMESPACE", "given".to_owned())];
        assert_eq!(namespace_of(&given, inherited("inherited")), "given");
        // `shop up` passes the caller's environment on: its SHOP_NAMESPACE is theirs.
        assert_eq!(namespace_of(&[], inherited("inherited")), "inherited");
        assert_eq!(namespace_of(&[], inherited(" ")), "shop");
        assert_eq!(namespace_of(&[], |_| None), "shop");
    }
}
