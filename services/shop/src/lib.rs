//! The operator's toolbox behind the `shop` command: the service registry, the auditor, the
//! flow map and the AsyncAPI document, least-privilege provisioning, and the harness that runs a shop on a fresh
//! database and namespace (shared by the chaos run and the integration tests).

pub mod asyncapi;
pub mod audit;
pub mod harness;
pub mod map;
pub mod provision;
pub mod registry;

pub use registry::{SERVICES, ServiceEntry};
