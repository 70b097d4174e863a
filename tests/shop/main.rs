//! The integration tests: one binary (one link of the six services), a module per area.
//! Every test runs against the real RabbitMQ and Postgres, in a database and namespace of its
//! own (`shop_tests::Env`), so the tests run in parallel.

mod authorization;
mod batches;
mod cancellation;
mod compose_and_least_privilege;
mod console;
mod delivery_guarantees;
mod documentation;
mod failure_flows;
mod front_door;
mod happy_path;
mod history;
mod http_api;
mod http_edge;
mod kit_promises;
mod kubernetes;
mod observability;
mod orchestration;
mod statuses;
mod two_databases;
mod versions;
