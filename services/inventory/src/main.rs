#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("inventory", inventory::DEFAULT_HTTP_ADDR)?;
    inventory::bind(config).await?.run(shutdown).await?;
    Ok(())
}
