//! `shop dead-letters`: an operator acts on dead letters by cause, not message by message.

use anyhow::{Context, bail};
use clap::Subcommand;
use service_kit::dead_letters::{self, DeadLetter, Selection};
use shop::{ServiceEntry, registry};

#[derive(Subcommand)]
pub(crate) enum Action {
    /// Dead letters grouped by service, event type and cause (a fingerprint of the reason), with
    /// a count and when each cause was first and last seen; they stay where they are.
    List {
        #[arg(value_parser = registry::by_name)]
        service: Option<&'static ServiceEntry>,
        /// One line per dead letter instead of one per cause.
        #[arg(long)]
        messages: bool,
    },
    /// Move a service's dead letters back to its work queue: one cause, one message, or all.
    /// Recorded in the service's schema (see `history`).
    Redrive {
        #[arg(value_parser = registry::by_name)]
        service: &'static ServiceEntry,
        /// The cause `list` shows.
        #[arg(long, conflicts_with = "message_id")]
        cause: Option<String>,
        #[arg(long)]
        message_id: Option<uuid::Uuid>,
    },
    /// Every re-drive so far: when, by whom, what was selected and which messages moved.
    History {
        #[arg(value_parser = registry::by_name)]
        service: Option<&'static ServiceEntry>,
    },
}

pub(crate) async fn run(action: Action) -> anyhow::Result<()> {
    let config = service_kit::Config::from_env(registry::orders().default_addr)?;
    let amqp_url = config.first_amqp_url();
    let every_or = |one: Option<&'static ServiceEntry>| match one {
        Some(one) => vec![one],
        None => shop::SERVICES.iter().collect(),
    };
    match action {
        Action::List { service, messages } => {
            for service in every_or(service) {
                let letters =
                    dead_letters::list(&amqp_url, &config.namespace, service.name).await?;
                if messages {
                    print_messages(service.name, &letters);
                } else {
                    print_groups(service.name, &letters);
                }
            }
        }
        Action::Redrive {
            service,
            cause,
            message_id,
        } => {
            let selection = match (cause, message_id) {
                (Some(cause), _) => Selection::Cause(cause),
                (None, Some(id)) => Selection::Message(id),
                (None, None) => Selection::All,
            };
            let redriven = dead_letters::redrive(
                &amqp_url,
                &config.namespace,
                service.name,
                &selection,
                config.dead_letter_max_age,
            )
            .await?;
            let pool = pool_of(service, &config.database_url).await?;
            let by = operator(&amqp_url);
            dead_letters::record(&pool, service.name, &by, &selection, &redriven)
                .await
                .context("the messages moved, but the re-drive could not be recorded")?;
            println!(
                "{} dead letters of {} ({selection}) moved back to its queue; recorded as by {by}",
                redriven.moved, service.name
            );
            if !redriven.too_old.is_empty() {
                for letter in &redriven.too_old {
                    eprintln!(
                        "  left: message {} occurred {}",
                        show(letter.message_id),
                        show(letter.occurred_at.map(|at| at.to_rfc3339())),
                    );
                }
                bail!(
                    "{} dead letters are older than DEAD_LETTER_MAX_AGE_SECS ({}s) and were left \
                     in the queue: the inbox remembers message ids for INBOX_RETENTION_SECS only, \
                     so re-driving them could apply one twice",
                    redriven.too_old.len(),
                    config.dead_letter_max_age.as_secs()
                );
            }
        }
        Action::History { service } => {
            for service in every_or(service) {
                let pool = pool_of(service, &config.database_url).await?;
                let records = dead_letters::history(&pool, service.name).await?;
                println!("{}: {} re-drives", service.name, records.len());
                for record in records {
                    println!(
                        "  {}  by {}  {}  moved {}  left (too old) {}",
                        record.redriven_at.to_rfc3339(),
                        record.redriven_by,
                        record.selection,
                        record.message_ids.len(),
                        record.left_too_old
                    );
                    for id in &record.message_ids {
                        println!("    {id}");
                    }
                }
                pool.close().await;
            }
        }
    }
    Ok(())
}

fn print_groups(service: &str, letters: &[DeadLetter]) {
    println!("{service}: {} dead letters", letters.len());
    for group in dead_letters::group(service, letters) {
        println!(
            "  cause {}  {}  ×{}  first {}  last {}\n    {}",
            group.cause,
            group.event_type,
            group.count,
            show(group.first_seen.map(|at| at.to_rfc3339())),
            show(group.last_seen.map(|at| at.to_rfc3339())),
            group.reason
        );
    }
}

fn print_messages(service: &str, letters: &[DeadLetter]) {
    println!("{service}: {} dead letters", letters.len());
    for letter in letters {
        println!(
            "  message {}  {}  order {}  attempts {}  key {}  cause {}\n    reason: {}",
            show(letter.message_id),
            show(letter.event_type.as_deref()),
            show(letter.order_id),
            show(letter.attempts),
            show(letter.original_routing_key.as_deref()),
            letter.cause,
            letter.reason
        );
    }
}

fn show(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// The service's database (its `<SERVICE>_DATABASE_URL` if set), for the re-drive record.
async fn pool_of(service: &ServiceEntry, shared: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&service.database_url(shared))
        .await
        .with_context(|| format!("cannot connect to {}'s database", service.name))
}

/// Who re-drives: the login running the tool and the broker user it acts as.
fn operator(amqp_url: &str) -> String {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!(
        "{login} (broker user {})",
        service_kit::publisher::broker_user(amqp_url)
    )
}
