//! The record of re-drives, in the service's own schema (`<service>.redrives`): when, by whom,
//! which messages.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DeadLetterError, Redriven, Selection};

/// One recorded re-drive.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RedriveRecord {
    pub redriven_at: DateTime<Utc>,
    pub redriven_by: String,
    pub selection: String,
    pub message_ids: Vec<Uuid>,
    pub left_too_old: i32,
}

/// Records a re-drive of `service`'s dead letters in its schema (`<service>.redrives`).
pub async fn record(
    pool: &sqlx::PgPool,
    service: &str,
    by: &str,
    selection: &Selection,
    redriven: &Redriven,
) -> Result<(), DeadLetterError> {
    let insert = format!(
        "INSERT INTO {}.redrives (redriven_by, selection, message_ids, left_too_old)
         VALUES ($1, $2, $3, $4)",
        quoted(service)
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(by)
        .bind(selection.to_string())
        .bind(&redriven.message_ids)
        .bind(i32::try_from(redriven.too_old.len()).unwrap_or(i32::MAX))
        .execute(pool)
        .await?;
    Ok(())
}

/// Every recorded re-drive of `service`'s dead letters, oldest first.
pub async fn history(
    pool: &sqlx::PgPool,
    service: &str,
) -> Result<Vec<RedriveRecord>, DeadLetterError> {
    let select = format!(
        "SELECT redriven_at, redriven_by, selection, message_ids, left_too_old
         FROM {}.redrives ORDER BY id",
        quoted(service)
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(select))
        .fetch_all(pool)
        .await?)
}

/// A schema name as an SQL identifier.
fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}
