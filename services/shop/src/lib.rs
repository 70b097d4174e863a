//! The operator's toolbox behind the `shop` command: the auditor and the flow map.

pub mod audit;
pub mod map;
