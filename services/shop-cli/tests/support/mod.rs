//! Runs the `shop` binary as a user would, against the tests' broker and database
//! (`TEST_AMQP_URL`, `TEST_ADMIN_DATABASE_URL`, as the other integration tests read them).

use std::process::{Command, Output};

use service_kit::config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL};

pub fn run_shop(args: &[&str]) -> Output {
    let setting = |test_variable: &str, default: &str| {
        std::env::var(test_variable).unwrap_or_else(|_| default.to_owned())
    };
    Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .env("AMQP_URL", setting("TEST_AMQP_URL", DEFAULT_AMQP_URL))
        .env(
            "DATABASE_URL",
            setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        )
        .env("RUST_LOG", "warn")
        .output()
        .expect("the shop binary runs")
}
