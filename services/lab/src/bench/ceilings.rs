//! The machine's ceilings.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::options::*;
use super::processes::*;

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Ceilings {
    pub(super) concurrency: usize,
    pub(super) broker_msgs_per_s: f64,
    pub(super) db_tx_per_s: f64,
}

/// Bare RabbitMQ (persistent messages through one quorum queue, published with confirms and
/// consumed with acks, `CONCURRENCY` in flight) and bare Postgres (one saga step per
/// transaction: insert an inbox row, update a row, insert an outbox row, commit; `CONCURRENCY`
/// connections), each for [`CEILING_TIME`].
pub(super) async fn ceilings(
    amqp_url: &str,
    namespace: &str,
    database_url: &str,
) -> anyhow::Result<Ceilings> {
    Ok(Ceilings {
        concurrency: CONCURRENCY,
        broker_msgs_per_s: round1(broker_ceiling(amqp_url, namespace).await?),
        db_tx_per_s: round1(database_ceiling(database_url).await?),
    })
}

pub(super) async fn broker_ceiling(amqp_url: &str, namespace: &str) -> anyhow::Result<f64> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("{namespace}.bench-ceiling");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(
            u16::try_from(CONCURRENCY).unwrap_or(10),
            BasicQosOptions::default(),
        )
        .await?;
    let mut deliveries = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let counter = consumed.clone();
    let consuming = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            if delivery.acker.ack(BasicAckOptions::default()).await.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; 600];
    let start = Instant::now();
    let mut confirms = futures_util::stream::FuturesUnordered::new();
    while start.elapsed() < CEILING_TIME {
        while confirms.len() < CONCURRENCY {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            confirms.push(confirm);
        }
        if let Some(confirmed) = confirms.next().await {
            confirmed?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = consumed.load(Ordering::Relaxed) as f64 / elapsed;
    consuming.abort();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "ceiling measured".into()).await;
    Ok(rate)
}

pub(super) async fn database_ceiling(database_url: &str) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(CONCURRENCY).unwrap_or(10))
        .connect(database_url)
        .await?;
    let setup = [
        "DROP SCHEMA IF EXISTS bench_ceiling CASCADE",
        "CREATE SCHEMA bench_ceiling",
        "CREATE TABLE bench_ceiling.inbox (message_id UUID PRIMARY KEY, received_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE TABLE bench_ceiling.state (id INT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO bench_ceiling.state SELECT g, 0 FROM generate_series(0, 9999) g",
        "CREATE TABLE bench_ceiling.outbox (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL UNIQUE, envelope JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), sent_at TIMESTAMPTZ)",
    ];
    for sql in setup {
        sqlx::query(sql).execute(&pool).await?;
    }
    let envelope =
        json!({ "type": "StockReserved", "version": 1, "payload": { "padding": "x".repeat(300) } });
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..CONCURRENCY).map(|worker| {
        let (pool, done, envelope) = (pool.clone(), done.clone(), envelope.clone());
        tokio::spawn(async move {
            let mut row = worker;
            while start.elapsed() < CEILING_TIME {
                let step = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO bench_ceiling.inbox (message_id) VALUES ($1)")
                        .bind(Uuid::new_v4())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE bench_ceiling.state SET n = n + 1 WHERE id = $1")
                        .bind(i32::try_from(row % 10_000).unwrap_or(0))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO bench_ceiling.outbox (message_id, envelope) VALUES ($1, $2)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(&envelope)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                };
                if step.await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                row += CONCURRENCY;
            }
        })
    });
    futures_util::future::join_all(workers).await;
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let _ = sqlx::query("DROP SCHEMA bench_ceiling CASCADE")
        .execute(&pool)
        .await;
    pool.close().await;
    Ok(rate)
}
