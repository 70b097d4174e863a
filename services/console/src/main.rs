#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("console", console::DEFAULT_HTTP_ADDR)?;
    console::bind(config).await?.run(shutdown).await?;
    Ok(())
}
