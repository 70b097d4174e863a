//! The operator's toolbox behind the `shop` command: the auditor, the flow map and the
//! least-privilege provisioning.

pub mod audit;
pub mod map;
pub mod provision;

/// The five services, by name (their schema, queue and role names).
pub const SERVICES: [&str; 5] = [
    orders::NAME,
    payment::NAME,
    inventory::NAME,
    shipping::NAME,
    notifications::NAME,
];

/// What one service subscribes to and announces, read from the service crate itself.
pub struct ServiceFacts {
    pub name: &'static str,
    pub subscribes: Vec<&'static str>,
    pub routing_keys: Vec<&'static str>,
    pub announces: &'static [&'static str],
}

/// The five services, from their own subscription tables.
pub fn services() -> Vec<ServiceFacts> {
    macro_rules! facts {
        ($service:ident, $announces:expr) => {{
            let routes = $service::routes();
            ServiceFacts {
                name: $service::NAME,
                subscribes: routes.event_types(),
                routing_keys: routes.routing_keys(),
                announces: $announces,
            }
        }};
    }
    vec![
        facts!(orders, orders::ANNOUNCES),
        facts!(payment, payment::ANNOUNCES),
        facts!(inventory, inventory::ANNOUNCES),
        facts!(shipping, shipping::ANNOUNCES),
        facts!(notifications, &[]),
    ]
}
