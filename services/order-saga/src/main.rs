#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, shutdown, _telemetry) =
        service_kit::process_setup("saga", order_saga::DEFAULT_HTTP_ADDR)?;
    order_saga::bind(config).await?.run(shutdown).await?;
    Ok(())
}
