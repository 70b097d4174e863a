#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("notifications", notifications::DEFAULT_HTTP_ADDR)?;
    notifications::bind(config).await?.run(shutdown).await?;
    Ok(())
}
