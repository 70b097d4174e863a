//! The span of a message crossing the broker, with OpenTelemetry's messaging attributes: one
//! helper for both ends, so a publish and its processing describe the message the same way.

use opentelemetry_semantic_conventions::attribute as semconv;
use shared_events::Envelope;
use tracing::{Span, field::Empty};

use crate::runtime::telemetry;

/// Which end of the broker a span stands at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// The outbox relay publishing (a PRODUCER span).
    Publish,
    /// A consumer processing (a CONSUMER span).
    Process,
}

/// The span of `envelope` published to or processed from `destination` under `routing_key`,
/// a child of the span whose context the envelope carries (a row's announcing span, a
/// delivery's publish). Fields only one end knows are recorded by that end.
pub(crate) fn message_span(
    end: End,
    destination: &str,
    routing_key: &str,
    envelope: &Envelope,
) -> Span {
    let (operation_type, operation_name, kind) = match end {
        End::Publish => ("send", "publish", "producer"),
        End::Process => ("process", "process", "consumer"),
    };
    let span = tracing::info_span!(
        target: telemetry::TRACE_TARGET,
        "message",
        otel.name = format!("{operation_name} {destination}").as_str(),
        otel.kind = kind,
        { semconv::MESSAGING_SYSTEM } = "rabbitmq",
        { semconv::MESSAGING_OPERATION_TYPE } = operation_type,
        { semconv::MESSAGING_OPERATION_NAME } = operation_name,
        { semconv::MESSAGING_DESTINATION_NAME } = destination,
        { semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY } = routing_key,
        { semconv::MESSAGING_CONSUMER_GROUP_NAME } = Empty,
        { semconv::MESSAGING_MESSAGE_ID } = %envelope.message_id,
        { semconv::MESSAGING_MESSAGE_CONVERSATION_ID } = %envelope.correlation_id,
        service = Empty,
        event_type = %envelope.event_type,
        message_id = %envelope.message_id,
        order_id = %envelope.correlation_id,
        correlation_id = %envelope.correlation_id,
        causation_id = ?envelope.causation_id,
        attempt = Empty,
        unparked = Empty,
    );
    telemetry::continue_trace(&span, envelope);
    span
}
