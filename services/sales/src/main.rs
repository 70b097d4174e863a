#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("sales", sales::DEFAULT_HTTP_ADDR)?;
    sales::bind(config).await?.run(shutdown).await?;
    Ok(())
}
