#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown) = service_kit::process_setup(shipping::DEFAULT_HTTP_ADDR)?;
    shipping::run(config, shutdown).await?;
    Ok(())
}
