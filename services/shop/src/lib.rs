//! The operator's toolbox behind the `shop` command: the auditor, the flow map and the
//! least-privilege provisioning.

pub mod audit;
pub mod map;
pub mod provision;
