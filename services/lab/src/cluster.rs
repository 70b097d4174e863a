//! A RabbitMQ cluster of three nodes on this machine, beside its own broker, for
//! `shop chaos --broker-nodes 3`: nodes `shopchaos1@localhost` … on AMQP ports 5681–5683 (Erlang
//! distribution 25681–25683), each with its own config and data directory under `base`, run
//! as the `rabbitmq` user (so they share its Erlang cookie with `rabbitmqctl`). The shop's
//! quorum queues get a member on every node, so losing one keeps a majority.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

const FIRST_PORT: u16 = 5681;
const FIRST_DIST_PORT: u16 = 25681;

pub struct LocalCluster {
    base: PathBuf,
    pub nodes: Vec<Node>,
}

pub struct Node {
    /// `shopchaosN@localhost`
    pub name: String,
    pub port: u16,
}

impl Node {
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

async fn rabbitmqctl(node: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "-n", node])
        .args(args)
        .output()
        .await
        .context("cannot run rabbitmqctl")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl -n {node} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl LocalCluster {
    /// Starts `count` nodes and joins them into one cluster.
    pub async fn start(base: &Path, count: u16) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for n in 0..count {
            let (port, dist_port) = (FIRST_PORT + n, FIRST_DIST_PORT + n);
            let name = format!("shopchaos{}@localhost", n + 1);
            let dir = base.join(format!("node{}", n + 1));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
            )?;
            std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
            let owner = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(base)
                .status()
                .await?;
            anyhow::ensure!(
                owner.success(),
                "cannot give {} to rabbitmq",
                base.display()
            );
            let d = dir.display();
            let start = format!(
                "HOME=/var/lib/rabbitmq RABBITMQ_NODENAME={name} RABBITMQ_NODE_PORT={port} \
                 RABBITMQ_DIST_PORT={dist_port} RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf \
                 RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins RABBITMQ_MNESIA_BASE={d}/mnesia \
                 RABBITMQ_LOG_BASE={d}/log RABBITMQ_PID_FILE={d}/pid rabbitmq-server -detached"
            );
            let started = Command::new("su")
                .args(["rabbitmq", "-s", "/bin/bash", "-c", &start])
                .status()
                .await
                .context("cannot start a RabbitMQ node (su rabbitmq)")?;
            anyhow::ensure!(started.success(), "cannot start {name}");
            nodes.push(Node { name, port });
        }
        let cluster = Self {
            base: base.to_owned(),
            nodes,
        };
        for node in &cluster.nodes {
            cluster.await_node(&node.name).await?;
        }
        let first = cluster.nodes[0].name.clone();
        for node in cluster.nodes.iter().skip(1) {
            rabbitmqctl(&node.name, &["stop_app"]).await?;
            rabbitmqctl(&node.name, &["join_cluster", &first]).await?;
            rabbitmqctl(&node.name, &["start_app"]).await?;
        }
        Ok(cluster)
    }

    async fn await_node(&self, name: &str) -> anyhow::Result<()> {
        // `-detached` returns before the node has registered; until then it is "not running".
        for _ in 0..60 {
            if rabbitmqctl(name, &["await_startup", "--timeout", "60"])
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        bail!("{name} did not start")
    }

    /// `AMQP_URL` for the services: every node.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub async fn stop_node(&self, node: usize) -> anyhow::Result<()> {
        rabbitmqctl(&self.nodes[node].name, &["stop_app"])
            .await
            .map(|_| ())
    }

    pub async fn start_node(&self, node: usize) -> anyhow::Result<()> {
        rabbitmqctl(&self.nodes[node].name, &["start_app"]).await?;
        self.await_node(&self.nodes[node].name).await
    }

    /// The node leading most of `namespace`'s queues, asked of a node that is up.
    pub async fn leader_node(&self, namespace: &str, up: usize) -> anyhow::Result<usize> {
        let listed = rabbitmqctl(&self.nodes[up].name, &["list_queues", "name", "leader"]).await?;
        let mut counts = vec![0_usize; self.nodes.len()];
        for line in listed.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(queue), Some(leader)) = (fields.next(), fields.next())
                && queue.starts_with(&format!("{namespace}."))
                && let Some(i) = self.nodes.iter().position(|n| n.name == leader)
            {
                counts[i] += 1;
            }
        }
        Ok(max_index(&counts))
    }

    /// The nodes keeping a replica of `queue` (a quorum queue or a stream), asked of a node
    /// that is up.
    pub async fn members_of(&self, queue: &str, up: usize) -> anyhow::Result<usize> {
        let listed = rabbitmqctl(&self.nodes[up].name, &["list_queues", "name", "members"]).await?;
        Ok(listed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(queue))
            .map_or(0, |line| {
                self.nodes
                    .iter()
                    .filter(|node| line.contains(node.name.as_str()))
                    .count()
            }))
    }

    /// The node most client connections are on (read from their `… -> 127.0.0.1:PORT` names).
    pub async fn busiest_node(&self, up: usize) -> anyhow::Result<usize> {
        let listed = rabbitmqctl(&self.nodes[up].name, &["list_connections", "name"]).await?;
        let mut counts = vec![0_usize; self.nodes.len()];
        for line in listed.lines() {
            if let Some(port) = line
                .rsplit_once(':')
                .and_then(|(_, port)| port.trim().parse::<u16>().ok())
                && let Some(i) = self.nodes.iter().position(|n| n.port == port)
            {
                counts[i] += 1;
            }
        }
        Ok(max_index(&counts))
    }

    /// Stops every node and removes their data.
    pub async fn remove(self) {
        for node in &self.nodes {
            let _ = rabbitmqctl(&node.name, &["stop"]).await;
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn max_index(counts: &[usize]) -> usize {
    counts
        .iter()
        .enumerate()
        .max_by_key(|(_, count)| **count)
        .map_or(0, |(i, _)| i)
}
