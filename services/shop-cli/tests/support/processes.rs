//! The shop as processes of this package's `shop` binary (the lab's process shop), on the
//! tests' broker and database (`TEST_AMQP_URL`, `TEST_ADMIN_DATABASE_URL`).

use service_kit::{
    ErrorChain, Style,
    config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, default_retry_delays},
};
use shop_lab::process_shop::{Options, ProcessShop};

/// Starts every service of `style` as a process, with `settings` beside the sandbox's.
pub async fn start_shop(
    prefix: &'static str,
    style: Style,
    settings: Vec<(&'static str, String)>,
) -> Result<ProcessShop, String> {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let mut all = vec![("DB_POOL_SIZE", "3".to_owned())];
    all.extend(settings);
    let options = Options {
        exe: env!("CARGO_BIN_EXE_shop").into(),
        prefix,
        admin_database_url: setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        amqp_url: setting("TEST_AMQP_URL", DEFAULT_AMQP_URL),
        retry_delays: default_retry_delays(),
        replicas: 1,
        style,
        settings: all,
    };
    ProcessShop::run(options, &reqwest::Client::new())
        .await
        .map_err(|e| ErrorChain(&e).to_string())
}
