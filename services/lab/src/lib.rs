//! The lab: the shop run as processes on a sandbox of its own, under load and under faults.
//! Not part of the service image; the `shop` command gains `chaos` and `bench` from it when
//! built with its default `lab` feature (any checkout).
//!
//! - [`harness`]: a fresh database and namespace ([`harness::Sandbox`]) and the instruments to
//!   watch a shop (the event tap, order bodies, stock).
//! - [`process_shop`]: the shop as processes on a sandbox, what the runs below and the
//!   process-based tests all start.
//! - [`chaos`]: `shop chaos`, faults end to end; [`cluster`]: a local three-node RabbitMQ.
//! - [`bench`]: `shop bench`, speed end to end.
//! - [`proxy`]: a TCP proxy that silences a service's side of its connections.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod harness;
pub mod process_shop;
pub mod proxy;
