//! The six services, listed once: name, default address, subscriptions and how to start one.
//! `shop up`, `shop service`, provisioning, the flow map, the chaos run and the tests all read
//! this list; what each service announces comes from the event catalog (`Event::Producer`).

use std::{future::Future, net::SocketAddr, pin::Pin};

use service_kit::{BoundService, Config};
use shared_events::{Envelope, EventInfo, Participant, participants};

type BindFuture = Pin<Box<dyn Future<Output = Result<BoundService, service_kit::Error>> + Send>>;

pub struct ServiceEntry {
    /// Its schema, queue, database role and broker user.
    pub name: &'static str,
    /// Where it listens when `HTTP_ADDR` is not set (each service has its own port).
    pub default_addr: SocketAddr,
    /// What it subscribes to, from its own `routes()`.
    pub subscriptions: fn() -> Vec<EventInfo>,
    /// Whether it reads an envelope (type subscribed, version read), from its own `routes()`.
    pub reads: fn(&Envelope) -> Result<(), String>,
    /// Opens its HTTP listener; `run` the result to start it.
    pub bind: fn(Config) -> BindFuture,
}

impl ServiceEntry {
    /// Where this service's schema lives when each service may have its own Postgres server:
    /// `<SERVICE>_DATABASE_URL` (e.g. `PAYMENT_DATABASE_URL`) if set, else `shared`.
    pub fn database_url(&self, shared: &str) -> String {
        std::env::var(format!("{}_DATABASE_URL", self.name.to_ascii_uppercase()))
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| shared.to_owned())
    }

    /// The routing keys its queue is bound to.
    pub fn routing_keys(&self) -> Vec<&'static str> {
        (self.subscriptions)()
            .iter()
            .map(|event| event.routing_key)
            .collect()
    }
}

macro_rules! entry {
    ($service:ident, $participant:ident) => {
        ServiceEntry {
            name: <participants::$participant as Participant>::NAME,
            default_addr: $service::DEFAULT_HTTP_ADDR,
            subscriptions: || $service::routes().subscriptions(),
            reads: |envelope| $service::routes().reads(envelope),
            bind: |config| Box::pin($service::bind(config)),
        }
    };
}

/// Every service of the shop, orders (the public API) first.
pub const SERVICES: [ServiceEntry; 6] = [
    entry!(orders, Orders),
    entry!(payment, Payment),
    entry!(inventory, Inventory),
    entry!(shipping, Shipping),
    entry!(notifications, Notifications),
    entry!(console, Console),
];

pub fn find(name: &str) -> Option<&'static ServiceEntry> {
    SERVICES.iter().find(|service| service.name == name)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().map(|service| service.name)
}

/// The orders service: the shop's public API.
pub fn orders() -> &'static ServiceEntry {
    &SERVICES[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_events::CATALOG;

    #[test]
    fn every_service_is_listed_once_with_its_own_port() {
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVICES.len());
        let mut ports: Vec<_> = SERVICES.iter().map(|s| s.default_addr.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), SERVICES.len());
        assert_eq!(orders().name, "orders");
    }

    /// The wire contract's fixture of `version` of an event (the current one has no suffix).
    fn fixture(info: &EventInfo, version: u32) -> Envelope {
        let name = if version == info.version {
            info.event_type.to_owned()
        } else {
            format!("{}.v{version}", info.event_type)
        };
        let path = format!(
            "{}/../../shared-events/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_consumer_reads_every_version_it_claims_and_refuses_the_next() {
        for service in &SERVICES {
            for info in (service.subscriptions)() {
                for version in info.oldest_read..=info.version {
                    let envelope = fixture(&info, version);
                    assert_eq!(
                        (service.reads)(&envelope),
                        Ok(()),
                        "{} reads {} v{version}",
                        service.name,
                        info.event_type
                    );
                }
                let mut future = fixture(&info, info.version);
                future.version = info.version + 1;
                let refused = (service.reads)(&future).expect_err("a future version");
                assert!(refused.contains("unsupported version"), "{refused}");
            }
        }
    }

    #[test]
    fn every_producer_of_the_catalog_is_a_listed_service() {
        for event in CATALOG {
            assert!(find(event.producer).is_some(), "{}", event.producer);
        }
    }
}
