//! The operator's toolbox behind the `shop` command: the service registry, the auditor, the
//! flow map and the AsyncAPI document, least-privilege provisioning, the harness that runs a
//! shop on a fresh database and namespace, and the fleet that runs its services as processes
//! (shared by the chaos run, the benchmark and the integration tests).

pub mod asyncapi;
pub mod audit;
pub mod fleet;
pub mod harness;
pub mod map;
pub mod provision;
pub mod registry;

pub use registry::{SERVICES, ServiceEntry};
