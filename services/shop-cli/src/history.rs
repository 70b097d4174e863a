//! `shop history <order_id>`: an order's whole story, read from the broker's log of the shop's
//! events (`<ns>.history`) and not from any service's database, so an auditor can hold the two
//! against each other. `shop replay <service>`: one subscriber's view rebuilt from that log.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use service_kit::{
    Config, ErrorChain,
    history::{self, ReplayFrom},
};
use shared_events::Envelope;
use shop::ServiceEntry;
use uuid::Uuid;

/// One event of the order as the history holds it.
struct Entry {
    offset: u64,
    envelope: Envelope,
    published_by: Option<String>,
}

/// Prints every event of `order_id` the history holds, oldest first.
pub async fn show(order_id: Uuid, json: bool) -> anyhow::Result<()> {
    let config = Config::from_env(shop::registry::orders().default_addr)?;
    let stream = history::history_name(&config.namespace);
    let connection = lapin::Connection::connect(
        &config.first_amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .context("cannot reach RabbitMQ on AMQP_URL")?;
    let wanted = order_id.to_string();
    let mut story = Vec::new();
    let read = history::read_to_end(&connection, &stream, |offset, delivery| {
        // The correlation id is the order's: only its events are read whole.
        let ours = delivery
            .properties
            .correlation_id()
            .as_ref()
            .is_some_and(|id| id.as_str() == wanted);
        if ours && let Ok(envelope) = Envelope::from_json(&delivery.data) {
            story.push(Entry {
                offset,
                envelope,
                published_by: delivery
                    .properties
                    .user_id()
                    .as_ref()
                    .map(|u| u.to_string()),
            });
        }
    })
    .await
    .with_context(|| format!("cannot read {stream}"))?;
    if read == 0 {
        bail!("{stream} holds no events");
    }
    let _ = connection.close(200, "read".into()).await;
    if story.is_empty() {
        bail!(
            "the history holds no event of order {order_id} (its retention may have removed them)"
        );
    }
    if json {
        let entries: Vec<Value> = story
            .iter()
            .map(|entry| {
                serde_json::json!({
                    "offset": entry.offset,
                    "message_id": entry.envelope.message_id,
                    "type": entry.envelope.event_type,
                    "version": entry.envelope.version,
                    "producer": entry.envelope.producer,
                    "published_by": entry.published_by,
                    "occurred_at": entry.envelope.occurred_at,
                    "causation_id": entry.envelope.causation_id,
                    "payload": entry.envelope.payload,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!("order {order_id}: {} events in {stream}", story.len());
    println!(
        "{:>8}  {:<32}  {:<24}  {:<9}  {:<36}  caused by",
        "offset", "occurred at", "type", "producer", "message id"
    );
    for entry in &story {
        let envelope = &entry.envelope;
        println!(
            "{:>8}  {:<32}  {:<24}  {:<9}  {:<36}  {}",
            entry.offset,
            envelope.occurred_at.to_rfc3339(),
            envelope.event_type,
            envelope.producer,
            envelope.message_id,
            envelope
                .causation_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string())
        );
    }
    Ok(())
}

/// How often `shop replay` asks the service how far it got.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Runs `entry` in this process, beside any running instance, catching up from the history
/// `from`, and stops once it has caught up. An earlier finished replay of the same `from` is
/// forgotten first: this one reads the history again (the inbox absorbs what the service
/// already has).
pub async fn replay(entry: &'static ServiceEntry, from: ReplayFrom) -> anyhow::Result<()> {
    service_kit::init_logs();
    if from == ReplayFrom::None {
        bail!("--from none replays nothing: give start or an RFC 3339 time");
    }
    let mut config = Config::from_env(entry.default_addr)?;
    config.database_url = entry.database_url(&config.database_url);
    // Beside the running service, on a port of its own.
    config.http_addr = ([127, 0, 0, 1], 0).into();
    config.http_management_addr = None;
    config.replay_from = from;
    forget_finished(&config.database_url, entry.name, &from).await?;

    let bound = (entry.bind)(config).await?;
    let readyz = format!("http://{}/readyz", bound.local_addr());
    let shutdown = service_kit::CancellationToken::new();
    let mut running = tokio::spawn(bound.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let progress = loop {
        tokio::select! {
            ended = &mut running => {
                ended??;
                bail!("{} stopped before it caught up", entry.name);
            }
            () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
        }
        let readiness: Value = match http.get(&readyz).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => continue,
        };
        if readiness["replay"]["caught_up"] == true {
            break readiness["replay"].clone();
        }
    };
    shutdown.cancel();
    running.await??;
    println!(
        "{} caught up from the history ({from}): {} events handled, {} passed over",
        entry.name, progress["handled"], progress["skipped"]
    );
    Ok(())
}

/// Removes the record of a finished replay of `from`, so that it runs again. A service that
/// never ran has no schema yet: nothing to forget.
async fn forget_finished(
    database_url: &str,
    schema: &str,
    from: &ReplayFrom,
) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .with_context(|| format!("cannot reach {schema}'s database"))?;
    let forgotten = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {schema}.replay WHERE requested = $1 AND finished_at IS NOT NULL"
    )))
    .bind(from.to_string())
    .execute(&mut connection)
    .await;
    match forgotten {
        Ok(_) => {}
        // No such table, or no such schema.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P01" | "3F000")) => {
        }
        Err(e) => return Err(anyhow::anyhow!("{}", ErrorChain(&e))),
    }
    let _ = connection.close().await;
    Ok(())
}
