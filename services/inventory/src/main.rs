#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown) = service_kit::process_setup(inventory::DEFAULT_HTTP_ADDR)?;
    inventory::run(config, shutdown).await?;
    Ok(())
}
