#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown) = service_kit::process_setup(shipping::DEFAULT_HTTP_ADDR)?;
    shipping::bind(config).await?.run(shutdown).await?;
    Ok(())
}
