//! The console's page in a real browser: the shop runs as processes (the `shop` binary's
//! services, on a fresh database and namespace), and `services/console/tests/browser.mjs`
//! drives headless Chromium against it with playwright-core.
//!
//! Ignored by `cargo test` (it needs Chromium, Node and playwright-core, which a fresh machine
//! lacks); CI's browser step installs them and runs it with `--ignored`:
//! `SHOP_PLAYWRIGHT_DIR=<dir with node_modules/playwright-core>` and optionally
//! `SHOP_CONSOLE_SCREENSHOT=<png path>` (default: the system temp directory).

use std::{path::PathBuf, process::Command, time::Duration};

use service_kit::config::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, default_retry_delays};
use shop::{fleet::Fleet, harness::Sandbox, provision};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Chromium, Node and playwright-core: CI's browser step installs them"]
async fn the_console_page_shows_the_choreography_live_in_chromium() {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let modules = std::env::var("SHOP_PLAYWRIGHT_DIR")
        .expect("SHOP_PLAYWRIGHT_DIR: a directory holding node_modules/playwright-core");
    let screenshot = std::env::var("SHOP_CONSOLE_SCREENSHOT").map_or_else(
        |_| std::env::temp_dir().join("shop-console.png"),
        PathBuf::from,
    );
    let sandbox = Sandbox::create(
        &setting("TEST_ADMIN_DATABASE_URL", DEFAULT_DATABASE_URL),
        &setting("TEST_AMQP_URL", DEFAULT_AMQP_URL),
        "shop_browser",
    )
    .await
    .expect("a sandbox");
    let log_dir = std::env::temp_dir().join(&sandbox.namespace);
    std::fs::create_dir_all(&log_dir).expect("log directory");
    let mut fleet = Fleet::new(
        env!("CARGO_BIN_EXE_shop").as_ref(),
        &log_dir,
        vec![
            ("DATABASE_URL", sandbox.database_url.clone()),
            ("AMQP_URL", sandbox.amqp_url.clone()),
            ("SHOP_NAMESPACE", sandbox.namespace.clone()),
            ("DB_POOL_SIZE", "3".to_owned()),
        ],
    );
    let outcome = async {
        provision::declare_topologies(
            &sandbox.amqp_url,
            &sandbox.namespace,
            &default_retry_delays(),
        )
        .await
        .map_err(|e| format!("topology: {e}"))?;
        fleet
            .start(&reqwest::Client::new(), 1)
            .await
            .map_err(|e| e.to_string())?;
        let console = fleet
            .services
            .iter()
            .find(|s| s.name == "console")
            .map(|s| s.url())
            .ok_or("no console started")?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../console/tests/browser.mjs");
        let run = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(script)
                .arg(&console)
                .arg(&screenshot)
                .arg(&modules)
                .output()
        });
        let output = tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .map_err(|_| "the browser run took over 3 minutes".to_owned())?
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot run node: {e}"))?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        print!("{printed}");
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("the browser run failed:\n{printed}"))
        }
    }
    .await;
    fleet.stop().await;
    sandbox.cleanup(&[&default_retry_delays()], &[]).await;
    let _ = std::fs::remove_dir_all(&log_dir);
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
