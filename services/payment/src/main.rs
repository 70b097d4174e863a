#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown) = service_kit::process_setup(payment::DEFAULT_HTTP_ADDR)?;
    payment::bind(config).await?.run(shutdown).await?;
    Ok(())
}
