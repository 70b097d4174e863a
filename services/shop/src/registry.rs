//! The services, listed once: name, default address, subscriptions (per style), the styles it
//! runs in and how to start one.
//! `shop up`, `shop service`, provisioning, the flow map, the chaos run and the tests all read
//! this list; what each service announces comes from the event catalog (`Event::Producer`).

use std::{future::Future, net::SocketAddr, pin::Pin};

use service_kit::{BoundService, Config, Style};
use shared_events::{Envelope, MessageInfo, Participant, participants};

type BindFuture = Pin<Box<dyn Future<Output = Result<BoundService, service_kit::Error>> + Send>>;

pub struct ServiceEntry {
    /// Its schema, queue, database role and broker user.
    pub name: &'static str,
    /// Its own binary (the name, but for the saga's `order-saga`).
    pub binary: &'static str,
    /// Where it listens when `HTTP_ADDR` is not set (each service has its own port).
    pub default_addr: SocketAddr,
    /// What it subscribes to (events, and commands it handles), from its own `routes()`.
    pub subscriptions: fn(Style) -> Vec<MessageInfo>,
    /// Whether it reads an envelope (type subscribed, version read), from its own `routes()`.
    pub reads: fn(Style, &Envelope) -> Result<(), String>,
    /// The styles it runs in (the saga: orchestration only).
    pub styles: &'static [Style],
    /// Opens its HTTP listener; `run` the result to start it.
    pub bind: fn(Config) -> BindFuture,
    /// The environment variables it reads for itself, beside the kit's
    /// (`service_kit::config::VARIABLES`).
    pub variables: &'static [&'static str],
    /// Its OpenAPI document (`docs/openapi/<name>.json`), as `GET /openapi.json` serves it.
    pub openapi: fn() -> service_kit::openapi::Document,
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

    pub fn runs_in(&self, style: Style) -> bool {
        self.styles.contains(&style)
    }

    /// The topology it declares in `style`: its events, and the commands it handles.
    pub fn topology(
        &self,
        namespace: &str,
        style: Style,
        retry_delays: &[std::time::Duration],
    ) -> service_kit::topology::Topology {
        let subscriptions = (self.subscriptions)(style);
        let keys = |commands: bool| {
            subscriptions
                .iter()
                .filter(|message| message.is_command() == commands)
                .map(|message| message.routing_key)
                .collect()
        };
        let topology =
            service_kit::topology::Topology::new(namespace, self.name, keys(false), retry_delays);
        match style {
            Style::Choreography => topology,
            Style::Orchestration => topology.with_commands(keys(true)),
        }
    }
}

macro_rules! entry {
    // A service whose routes depend on the style.
    ($service:ident, $participant:ident) => {
        entry!(
            $service,
            $participant,
            |style| $service::routes(style),
            &Style::ALL,
            <participants::$participant as Participant>::NAME
        )
    };
    ($service:ident, $participant:ident, $routes:expr, $styles:expr, $binary:expr) => {
        ServiceEntry {
            name: <participants::$participant as Participant>::NAME,
            binary: $binary,
            default_addr: $service::DEFAULT_HTTP_ADDR,
            subscriptions: |style| ($routes)(style).subscriptions(),
            reads: |style, envelope| ($routes)(style).reads(envelope),
            styles: $styles,
            bind: |config| Box::pin($service::bind(config)),
            variables: $service::VARIABLES,
            openapi: $service::openapi,
        }
    };
}

/// Every service of the shop, orders (the public API) first.
pub const SERVICES: [ServiceEntry; 7] = [
    entry!(orders, Orders),
    entry!(payment, Payment),
    entry!(inventory, Inventory),
    entry!(shipping, Shipping),
    // Side effects stay choreographed in both styles.
    entry!(
        notifications,
        Notifications,
        |_| notifications::routes(),
        &Style::ALL,
        "notifications"
    ),
    entry!(console, Console),
    entry!(
        order_saga,
        Saga,
        |_| order_saga::routes(),
        &[Style::Orchestration],
        "order-saga"
    ),
];

pub fn find(name: &str) -> Option<&'static ServiceEntry> {
    SERVICES.iter().find(|service| service.name == name)
}

/// Every service's name (both styles').
/// A service of the registry, by name, or what the names are (a command line's parser).
pub fn by_name(name: &str) -> Result<&'static ServiceEntry, String> {
    find(name).ok_or_else(|| {
        let known: Vec<_> = names().collect();
        format!("no service {name:?}; one of: {}", known.join(", "))
    })
}

pub fn names() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().map(|service| service.name)
}

/// The services a shop of `style` runs.
pub fn names_in(style: Style) -> impl Iterator<Item = &'static str> {
    SERVICES
        .iter()
        .filter(move |service| service.runs_in(style))
        .map(|service| service.name)
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
    fn fixture(info: &MessageInfo, version: u32) -> Envelope {
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
        for (service, style) in SERVICES
            .iter()
            .flat_map(|service| service.styles.iter().map(move |style| (service, *style)))
        {
            for info in (service.subscriptions)(style) {
                for version in info.oldest_read..=info.version {
                    let envelope = fixture(&info, version);
                    assert_eq!(
                        (service.reads)(style, &envelope),
                        Ok(()),
                        "{} reads {} v{version}",
                        service.name,
                        info.event_type
                    );
                }
                let mut future = fixture(&info, info.version);
                future.version = info.version + 1;
                let refused = (service.reads)(style, &future).expect_err("a future version");
                assert!(refused.contains("unsupported version"), "{refused}");
            }
        }
    }

    #[test]
    fn every_producer_of_the_catalog_is_a_listed_service() {
        for event in CATALOG.iter().chain(shared_events::COMMANDS) {
            assert!(find(event.producer).is_some(), "{}", event.producer);
        }
    }
}
