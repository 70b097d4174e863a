//! The five services, listed once: name, default address, subscriptions and how to start one.
//! `shop up`, `shop service`, provisioning, the flow map, the chaos run and the tests all read
//! this list; what each service announces comes from the event catalog (`Event::Producer`).

use std::{future::Future, net::SocketAddr, pin::Pin};

use service_kit::{BoundService, Config};
use shared_events::{EventInfo, Participant, participants};

type BindFuture = Pin<Box<dyn Future<Output = Result<BoundService, service_kit::Error>> + Send>>;

pub struct ServiceEntry {
    /// Its schema, queue, database role and broker user.
    pub name: &'static str,
    /// Where it listens when `HTTP_ADDR` is not set (each service has its own port).
    pub default_addr: SocketAddr,
    /// What it subscribes to, from its own `routes()`.
    pub subscriptions: fn() -> Vec<EventInfo>,
    /// Opens its HTTP listener; `run` the result to start it.
    pub bind: fn(Config) -> BindFuture,
}

impl ServiceEntry {
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
            bind: |config| Box::pin($service::bind(config)),
        }
    };
}

/// Every service of the shop, orders (the public API) first.
pub const SERVICES: [ServiceEntry; 5] = [
    entry!(orders, Orders),
    entry!(payment, Payment),
    entry!(inventory, Inventory),
    entry!(shipping, Shipping),
    entry!(notifications, Notifications),
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

    #[test]
    fn every_producer_of_the_catalog_is_a_listed_service() {
        for event in CATALOG {
            assert!(find(event.producer).is_some(), "{}", event.producer);
        }
    }
}
