//! What the `shop` command does in production, as a library: the service registry, the
//! fleet that runs the services as processes (`shop up`), the auditor, the flow map and the
//! AsyncAPI document, and least-privilege provisioning. The lab (`shop chaos`, `shop bench`,
//! the process-based tests) builds on it in `services/lab`.

pub mod asyncapi;
pub mod audit;
pub mod fleet;
pub mod issuer;
pub mod map;
pub mod openapi;
pub mod provision;
pub mod registry;

pub use registry::{SERVICES, ServiceEntry};
