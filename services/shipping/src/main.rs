#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("shipping", shipping::DEFAULT_HTTP_ADDR)?;
    shipping::bind(config).await?.run(shutdown).await?;
    Ok(())
}
