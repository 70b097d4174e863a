//! Network faults (`--network-faults`): every service's broker and database connections pass
//! through a proxy of its own (`crate::proxy`: packets dropped, held back or reset outside the
//! service's process), and, one service at a time under the load, one of them goes silent,
//! slow or is reset, then heals. Per fault: how long until the service reported not ready, and
//! from the heal until a new order was confirmed.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use anyhow::bail;
use shop::registry;
use sqlx::PgPool;

use crate::process_shop::ProcessShop;
use crate::proxy::{self, Proxy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Dependency {
    Broker,
    Database,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Every packet dropped both ways (no FIN, no RST) for the hold.
    Silent,
    /// Every chunk held back [`LATENCY`] for the hold.
    Slow,
    /// Every open connection torn down with an RST.
    Reset,
}

/// What a fault's recovery is expected to take, for spacing the run's steps.
pub(super) const RECOVERY_ALLOWANCE: Duration = Duration::from_secs(5);

/// Held back per chunk, each way, by a slow network.
pub(super) const LATENCY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
pub(super) struct NetworkFault {
    pub(super) service: &'static str,
    pub(super) dependency: Dependency,
    pub(super) kind: Kind,
}

/// The faults of a run, in order: each kind on each dependency, on services with different
/// parts in the flow.
pub(super) const SCHEDULE: [NetworkFault; 5] = [
    fault("payment", Dependency::Database, Kind::Silent),
    fault("shipping", Dependency::Broker, Kind::Silent),
    fault("inventory", Dependency::Database, Kind::Slow),
    fault("orders", Dependency::Broker, Kind::Reset),
    fault("notifications", Dependency::Database, Kind::Reset),
];

const fn fault(service: &'static str, dependency: Dependency, kind: Kind) -> NetworkFault {
    NetworkFault {
        service,
        dependency,
        kind,
    }
}

impl fmt::Display for NetworkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dependency = match self.dependency {
            Dependency::Broker => "broker",
            Dependency::Database => "database",
        };
        let kind = match self.kind {
            Kind::Silent => "silent",
            Kind::Slow => "slow",
            Kind::Reset => "reset",
        };
        write!(f, "{} {dependency} {kind}", self.service)
    }
}

/// What one fault did.
pub(super) struct Observed {
    pub(super) fault: NetworkFault,
    pub(super) held: Duration,
    /// From the fault until a process of the service reported not ready (if it did).
    pub(super) noticed: Option<Duration>,
    /// From the heal until every order placed before it was settled.
    pub(super) settled: Duration,
    /// From the heal until the probe's end, and that end.
    pub(super) recovered: Duration,
    pub(super) outcome: &'static str,
}

/// How long the orders placed before the heal may take to settle after it.
const SETTLE_PATIENCE: Duration = Duration::from_secs(120);

/// A proxy in front of each service's broker and database.
pub(super) struct Proxies(pub(super) BTreeMap<(&'static str, Dependency), Proxy>);

impl Proxies {
    /// Starts the proxies and points every service's `AMQP_URL` and `DATABASE_URL` at its own.
    pub(super) async fn put_in_front(shop: &mut ProcessShop) -> anyhow::Result<Self> {
        let amqp_url = shop.sandbox.amqp_url.clone();
        let mut proxies = BTreeMap::new();
        for name in registry::names_in(shop.fleet.style()) {
            let database_url = shop.databases[name].clone();
            for (dependency, url, variable, port) in [
                (Dependency::Broker, &amqp_url, "AMQP_URL", 5672),
                (Dependency::Database, &database_url, "DATABASE_URL", 5432),
            ] {
                let proxy = Proxy::start(proxy::address_of(url, port)?).await?;
                shop.fleet
                    .set_for(name, variable, proxy::through(url, proxy.addr()));
                proxies.insert((name, dependency), proxy);
            }
        }
        Ok(Self(proxies))
    }
}

/// From `healed` until no order created before it is unsettled.
pub(super) async fn settled_since(orders: &PgPool, healed: Instant) -> anyhow::Result<Duration> {
    loop {
        let unsettled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders.orders
             WHERE NOT settled AND created_at < now() - make_interval(secs => $1)",
        )
        .bind(healed.elapsed().as_secs_f64())
        .fetch_one(orders)
        .await?;
        if unsettled == 0 {
            return Ok(healed.elapsed());
        }
        if healed.elapsed() > SETTLE_PATIENCE {
            bail!("{unsettled} orders placed before the heal still unsettled after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
