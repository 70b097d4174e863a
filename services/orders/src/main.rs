#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("orders", orders::DEFAULT_HTTP_ADDR)?;
    orders::bind(config).await?.run(shutdown).await?;
    Ok(())
}
