//! The console's page in a real browser: the shop runs as processes (the `shop` binary's
//! services, on a fresh database and namespace), and `services/console/tests/browser.mjs`
//! drives headless Chromium against it with playwright-core.
//!
//! Ignored by `cargo test` (it needs Chromium, Node and playwright-core, which a fresh machine
//! lacks); CI's browser step installs them and runs it with `--ignored`:
//! `SHOP_PLAYWRIGHT_DIR=<dir with node_modules/playwright-core>` and optionally
//! `SHOP_CONSOLE_SCREENSHOT=<png path>` (default: the system temp directory).

use std::{path::PathBuf, process::Command, time::Duration};

#[path = "support/processes.rs"]
mod processes;
use processes::start_shop;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Chromium, Node and playwright-core: CI's browser step installs them"]
async fn the_console_page_shows_the_choreography_live_in_chromium() {
    let modules = std::env::var("SHOP_PLAYWRIGHT_DIR")
        .expect("SHOP_PLAYWRIGHT_DIR: a directory holding node_modules/playwright-core");
    let screenshot = std::env::var("SHOP_CONSOLE_SCREENSHOT").map_or_else(
        |_| std::env::temp_dir().join("shop-console.png"),
        PathBuf::from,
    );
    let shop = start_shop("shop_browser", service_kit::Style::Choreography, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = async {
        let console = shop
            .fleet
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
    shop.remove().await;
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
