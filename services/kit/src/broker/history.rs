//! The shop's history: every event announced on `<ns>.events` is also appended to the stream
//! `<ns>.history` (bound to every routing key), an append-only log the broker keeps for
//! `HISTORY_MAX_AGE` and at most `HISTORY_MAX_BYTES`, readable from any offset or time. A
//! stream keeps no reader's position: a reader stores its own (`messaging/replay.rs`).
//!
//! ```text
//! <ns>.events (topic) --#--> <ns>.history (stream: retention by age and size; replicated)
//! ```

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::broker::topology::{args, bind, declare_exchange, exchange_name, text};

pub fn history_name(namespace: &str) -> String {
    format!("{namespace}.history")
}

/// How much history the broker keeps (`HISTORY_MAX_AGE`, `HISTORY_MAX_BYTES`): whichever
/// bound is reached first removes the oldest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: MaxAge,
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: MaxAge {
                amount: 7,
                unit: AgeUnit::Days,
            },
            max_bytes: 1_000_000_000,
        }
    }
}

/// The largest segment a stream writes (RabbitMQ's own default).
const SEGMENT_CEILING: u64 = 500_000_000;
/// The smallest segment this shop asks for (a tiny bound in a test still writes whole events).
const SEGMENT_FLOOR: u64 = 16 * 1024;

impl Retention {
    /// Retention drops whole segments, never the one being written: ten segments to the bound
    /// keep what is held within a tenth above `max_bytes`.
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 10).clamp(SEGMENT_FLOOR, SEGMENT_CEILING)
    }

    fn arguments(&self) -> FieldTable {
        let bytes = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        args(&[
            ("x-queue-type", text("stream")),
            ("x-max-age", text(&self.max_age.to_string())),
            ("x-max-length-bytes", bytes(self.max_bytes)),
            (
                "x-stream-max-segment-size-bytes",
                bytes(self.segment_bytes()),
            ),
        ])
    }
}

/// `HISTORY_MAX_AGE` in RabbitMQ's notation: a whole number and a unit, `Y`, `M`, `D`, `h`,
/// `m` or `s` (`7D`, `12h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    amount: u32,
    unit: AgeUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgeUnit {
    Years,
    Months,
    Days,
    Hours,
    Minutes,
    Seconds,
}

impl AgeUnit {
    const ALL: [(char, Self); 6] = [
        ('Y', Self::Years),
        ('M', Self::Months),
        ('D', Self::Days),
        ('h', Self::Hours),
        ('m', Self::Minutes),
        ('s', Self::Seconds),
    ];
}

impl FromStr for MaxAge {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let refused = || format!("{value:?}: a whole number and Y, M, D, h, m or s (e.g. 7D)");
        let suffix = value.chars().last().ok_or_else(refused)?;
        let (_, unit) = AgeUnit::ALL
            .iter()
            .find(|(letter, _)| *letter == suffix)
            .ok_or_else(refused)?;
        let amount: u32 = value[..value.len() - 1].parse().map_err(|_| refused())?;
        if amount == 0 {
            return Err(refused());
        }
        Ok(Self {
            amount,
            unit: *unit,
        })
    }
}

impl fmt::Display for MaxAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = AgeUnit::ALL
            .iter()
            .find(|(_, unit)| *unit == self.unit)
            .map_or('s', |(letter, _)| *letter);
        write!(f, "{}{letter}", self.amount)
    }
}

/// Creates the history unless it exists, bound to every routing key of the events exchange.
/// An existing history keeps the retention it was created with (a re-declaration with another
/// would be refused): the first declarer's holds.
pub async fn declare(
    connection: &Connection,
    namespace: &str,
    retention: Retention,
) -> Result<(), lapin::Error> {
    let stream = history_name(namespace);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    // A passive declaration of a queue that does not exist closes its channel: one of its own.
    let asking = connection.create_channel().await?;
    if asking
        .queue_declare(stream.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = asking.close(200, "history exists".into()).await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    let exchange = exchange_name(namespace);
    declare_exchange(&channel, &exchange).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.as_str().into(), durable, retention.arguments())
        .await?;
    bind(&channel, &stream, &exchange, "#").await?;
    let _ = channel.close(200, "history declared".into()).await;
    Ok(())
}

/// `REPLAY_FROM`: whether a service catches up from the history before it consumes live, and
/// from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayFrom {
    /// No catch-up (the default): the service learns what is published after its queue exists.
    #[default]
    None,
    /// Everything the history holds.
    Start,
    /// What occurred at or after this time (to the second).
    Since(DateTime<Utc>),
}

impl ReplayFrom {
    /// Where a reader starts for it; `None` for no replay.
    pub fn start(&self) -> Option<Start> {
        match self {
            Self::None => None,
            Self::Start => Some(Start::First),
            Self::Since(time) => Some(Start::Time(*time)),
        }
    }
}

impl FromStr for ReplayFrom {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "none" => Ok(Self::None),
            "start" => Ok(Self::Start),
            time => DateTime::parse_from_rfc3339(time)
                .map(|time| Self::Since(time.with_timezone(&Utc)))
                .map_err(|_| format!("{value:?}: start, none, or an RFC 3339 time")),
        }
    }
}

impl fmt::Display for ReplayFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Start => f.write_str("start"),
            Self::Since(time) => f.write_str(&time.to_rfc3339()),
        }
    }
}

/// Where a reader of the history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest event still kept.
    First,
    /// This offset (or the oldest kept, if retention removed it).
    Offset(u64),
    /// The first event stored at or after this time (to the chunk: a few earlier ones of the
    /// same chunk may come first).
    Time(DateTime<Utc>),
}

/// The consumer arguments that start a reader where `start` says.
pub fn reader_arguments(start: Start) -> FieldTable {
    let offset = match start {
        Start::First => text("first"),
        Start::Offset(offset) => AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
        Start::Time(time) => AMQPValue::Timestamp(u64::try_from(time.timestamp()).unwrap_or(0)),
    };
    args(&[("x-stream-offset", offset)])
}

/// A delivery's offset in the history (the broker says it in the `x-stream-offset` header).
pub fn offset_of(delivery: &Delivery) -> Option<u64> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-stream-offset")?
    {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        _ => None,
    }
}

/// How long the end of a non-empty history may take to arrive when asked for.
const END_ANSWER: Duration = Duration::from_secs(5);
/// The last chunk arrives at once: deliveries this far apart are past it.
const END_QUIET: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the history holds {0} events but sent none of its last chunk within {END_ANSWER:?}")]
    NoAnswer(u32),
}

/// The offset of the last event the history holds now; `None` when it holds none. A reader
/// started at `last` receives the last chunk whole, so its highest offset is the end.
pub async fn end(connection: &Connection, stream: &str) -> Result<Option<u64>, EndError> {
    let last = args(&[("x-stream-offset", text("last"))]);
    let (channel, mut reader) = open_reader(connection, stream, last, "history-end").await?;
    let mut end = None;
    let mut wait = END_ANSWER;
    while let Ok(Some(delivery)) = tokio::time::timeout(wait, reader.next()).await {
        let delivery = delivery?;
        end = end.max(offset_of(&delivery));
        delivery.acker.ack(BasicAckOptions::default()).await?;
        wait = END_QUIET;
    }
    if end.is_none() {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let held = channel
            .queue_declare(stream.into(), passive, FieldTable::default())
            .await?
            .message_count();
        if held > 0 {
            return Err(EndError::NoAnswer(held));
        }
    }
    let _ = channel.close(200, "end found".into()).await;
    Ok(end)
}

/// Reads the history from its oldest event to its end as of now, handing each delivery (and
/// its offset) to `visit`; how many were read (none when it is empty). For tools: one reader
/// of the whole log.
pub async fn read_to_end(
    connection: &Connection,
    stream: &str,
    mut visit: impl FnMut(u64, &Delivery),
) -> Result<u64, EndError> {
    let Some(end) = end(connection, stream).await? else {
        return Ok(0);
    };
    let first = reader_arguments(Start::First);
    let (channel, mut reader) = open_reader(connection, stream, first, "history-reader").await?;
    let mut read = 0;
    while let Some(delivery) = reader.next().await {
        let delivery = delivery?;
        let offset = offset_of(&delivery).unwrap_or(end);
        visit(offset, &delivery);
        read += 1;
        delivery
            .acker
            .ack(BasicAckOptions { multiple: true })
            .await?;
        if offset >= end {
            break;
        }
    }
    let _ = channel.close(200, "read".into()).await;
    Ok(read)
}

/// A reader of `stream` where `arguments` start it, on a channel of its own (the caller closes
/// it), with room for a chunk's deliveries ahead of its acks.
async fn open_reader(
    connection: &Connection,
    stream: &str,
    arguments: FieldTable,
    tag: &str,
) -> Result<(Channel, lapin::Consumer), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(1000, BasicQosOptions { global: false })
        .await?;
    let reader = channel
        .basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    Ok((channel, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_rabbitmq_writes_them() {
        for written in ["7D", "12h", "90s", "1Y", "3M", "30m"] {
            let age: MaxAge = written.parse().expect(written);
            assert_eq!(age.to_string(), written);
        }
        for refused in ["", "7", "D", "0D", "7d", "-1D", "1.5h", "7 D"] {
            assert!(refused.parse::<MaxAge>().is_err(), "{refused:?}");
        }
    }

    #[test]
    fn replay_from_is_start_none_or_a_time() {
        assert_eq!("start".parse(), Ok(ReplayFrom::Start));
        assert_eq!("none".parse(), Ok(ReplayFrom::None));
        let since: ReplayFrom = "2026-12-07T10:00:00+01:00".parse().expect("a time");
        assert_eq!(since.to_string(), "2026-12-07T09:00:00+00:00");
        assert_eq!(since.to_string().parse(), Ok(since));
        for refused in ["", "first", "yesterday", "2026-12-07"] {
            assert!(refused.parse::<ReplayFrom>().is_err(), "{refused:?}");
        }
    }

    #[test]
    fn segments_stay_a_tenth_of_the_bound_within_the_brokers_limits() {
        let bounded = |max_bytes| Retention {
            max_bytes,
            ..Retention::default()
        };
        assert_eq!(bounded(1_000_000).segment_bytes(), 100_000);
        assert_eq!(bounded(1_000).segment_bytes(), SEGMENT_FLOOR);
        assert_eq!(bounded(100_000_000_000).segment_bytes(), SEGMENT_CEILING);
    }
}
