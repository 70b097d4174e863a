//! The two ways the shop can run one business (`SHOP_STYLE`, docs/choosing.md): choreography,
//! where each service reacts to the others' events, and orchestration, where the saga sends
//! each service a command and it answers with the same events. A service's route table is
//! chosen by the style; its domain decisions are the same in both.
//!
//! Services that disagree on the style would half work (a payment waiting for commands no saga
//! sends), so each session holds a marker queue named after its style, `<ns>.style.<style>`,
//! alive while any service of that style is connected, and refuses to start while the other
//! style's marker exists.

use std::{fmt, str::FromStr};

use lapin::{
    Channel, Connection, Consumer,
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Services react to each other's events; no one holds the whole flow (the default).
    #[default]
    Choreography,
    /// The saga (`order-saga`) sends commands and keeps each order's state.
    Orchestration,
}

impl Style {
    pub const ALL: [Style; 2] = [Style::Choreography, Style::Orchestration];

    pub fn name(self) -> &'static str {
        match self {
            Style::Choreography => "choreography",
            Style::Orchestration => "orchestration",
        }
    }

    fn other(self) -> Style {
        match self {
            Style::Choreography => Style::Orchestration,
            Style::Orchestration => Style::Choreography,
        }
    }
}

impl fmt::Display for Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Style {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Style::ALL
            .into_iter()
            .find(|style| style.name() == value.trim())
            .ok_or_else(|| "the style is choreography or orchestration".to_owned())
    }
}

pub fn marker_queue(namespace: &str, style: Style) -> String {
    format!("{namespace}.style.{style}")
}

/// A service of another style is (or was, a moment ago) connected to this shop.
#[derive(Debug, thiserror::Error)]
#[error(
    "this service runs in {ours} style but a service of this shop runs in {theirs} style \
     (its marker queue {marker} exists): every service of a shop must share SHOP_STYLE"
)]
pub struct StyleConflict {
    pub ours: Style,
    pub theirs: Style,
    pub marker: String,
}

/// Errors of [`hold_marker`]: the broker's, or a conflict.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MarkerError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Conflict(#[from] StyleConflict),
}

/// Declares this style's marker (auto-deleted once its last consumer is gone) and consumes it
/// on `channel` (keep the consumer for as long as the session lives: dropping it cancels it),
/// then checks that the other style's marker does not exist. Declared before the check, so two
/// services of different styles starting at once cannot both miss each other.
pub(crate) async fn hold_marker(
    connection: &Connection,
    channel: &Channel,
    namespace: &str,
    style: Style,
    tag: &str,
) -> Result<Consumer, MarkerError> {
    let ours = marker_queue(namespace, style);
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(ours.as_str().into(), auto_delete, FieldTable::default())
        .await?;
    let held = channel
        .basic_consume(
            ours.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let theirs = marker_queue(namespace, style.other());
    // A passive declare of a queue that does not exist closes its channel: a channel of its own.
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match probe
        .queue_declare(theirs.as_str().into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = probe.close(200, "style checked".into()).await;
            Err(StyleConflict {
                ours: style,
                theirs: style.other(),
                marker: theirs,
            }
            .into())
        }
        Err(e) if is_not_found(&e) => Ok(held),
        Err(e) => Err(e.into()),
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::{
        ErrorKind,
        protocol::{AMQPErrorKind, AMQPSoftError},
    };
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_parse_from_their_names_only() {
        assert_eq!("choreography".parse(), Ok(Style::Choreography));
        assert_eq!("orchestration".parse(), Ok(Style::Orchestration));
        assert!("saga".parse::<Style>().is_err());
        assert_eq!(Style::default(), Style::Choreography);
        assert_eq!(
            marker_queue("t1", Style::Orchestration),
            "t1.style.orchestration"
        );
    }
}
