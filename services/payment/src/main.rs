#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("payment", payment::DEFAULT_HTTP_ADDR)?;
    payment::bind(config).await?.run(shutdown).await?;
    Ok(())
}
