//! The AsyncAPI 3.0 document of the shop, generated from the event catalog, the payload types
//! (their JSON Schemas) and the services' own subscription tables, like the flow map: the
//! committed `docs/asyncapi.yaml` cannot drift from the code (a test compares them).

use serde_json::{Map, Value, json};
use service_kit::{Style, config::DEFAULT_NAMESPACE};
use shared_events::{
    CATALOG, CLOUDEVENTS_CONTENT_TYPE, CLOUDEVENTS_SPEC_VERSION, COMMANDS, MessageInfo,
    cloudevents_type, command_schema, payload_schema_of_version,
};

use crate::registry::SERVICES;

/// The version of the AMQP bindings the AsyncAPI 3.0 parsers accept today.
const AMQP_BINDING_VERSION: &str = "0.3.0";

/// The message key of `version` of an event: its name for the version sent today,
/// `<name>V<n>` for an older one consumers still read.
fn message_key(event: &MessageInfo, version: u32) -> String {
    if version == event.version {
        event.event_type.to_owned()
    } else {
        format!("{}V{version}", event.event_type)
    }
}

/// The document, as YAML.
pub fn render() -> String {
    serde_norway::to_string(&document()).unwrap_or_default()
}

pub fn document() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    // The events (both styles), then the commands the saga sends in the orchestrated style.
    for event in CATALOG.iter().chain(COMMANDS) {
        let name = event.event_type;
        let exchange = if event.is_command() {
            format!("{DEFAULT_NAMESPACE}.commands")
        } else {
            format!("{DEFAULT_NAMESPACE}.events")
        };
        let versions: Vec<String> = (event.oldest_read..=event.version)
            .map(|version| message_key(event, version))
            .collect();
        let channel_messages = message_refs(&versions);
        channels.insert(
            name.to_owned(),
            json!({
                "address": event.routing_key,
                "title": format!("{name} on {exchange}"),
                "messages": channel_messages,
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "topic",
                        "durable": true,
                        "autoDelete": false,
                        "vhost": "/",
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                } },
            }),
        );
        // Sent: the current version only. Received: every version still read (a rolling
        // upgrade leaves older messages in queues, delay queues and dead-letter queues).
        let message_ref = json!([{ "$ref": format!("#/channels/{name}/messages/{name}") }]);
        let received_refs: Vec<Value> = versions
            .iter()
            .map(|key| json!({ "$ref": format!("#/channels/{name}/messages/{key}") }))
            .collect();
        operations.insert(
            format!("{}.sends.{name}", event.producer),
            json!({
                "action": "send",
                "title": format!("{} announces {name}", event.producer),
                "summary": "Written to the outbox in the transaction of the fact it announces; published with publisher confirms and `mandatory`.",
                "channel": { "$ref": format!("#/channels/{name}") },
                "messages": message_ref,
                "tags": [{ "name": event.producer }],
                "bindings": { "amqp": {
                    "deliveryMode": 2,
                    "mandatory": true,
                    "timestamp": true,
                    "bindingVersion": AMQP_BINDING_VERSION,
                } },
            }),
        );
        for (consumer, styles) in consumers(event) {
            let style_tags = styles.iter().map(|style| json!({ "name": style.name() }));
            let tags: Vec<Value> = std::iter::once(json!({ "name": consumer }))
                .chain(style_tags)
                .collect();
            let only_in = match styles.as_slice() {
                [style] => format!(" ({style} style)"),
                _ => String::new(),
            };
            operations.insert(
                format!("{consumer}.receives.{name}"),
                json!({
                    "action": "receive",
                    "title": format!("{consumer} reacts to {name}{only_in}"),
                    "summary": format!("Consumed from the quorum queue {DEFAULT_NAMESPACE}.{consumer}, bound to this routing key; handled once per message id (inbox), acked after the commit."),
                    "channel": { "$ref": format!("#/channels/{name}") },
                    "messages": received_refs,
                    "tags": tags,
                    "bindings": { "amqp": {
                        "ack": true,
                        "bindingVersion": AMQP_BINDING_VERSION,
                    } },
                }),
            );
        }
        for version in event.oldest_read..=event.version {
            messages.insert(message_key(event, version), message(event, version));
        }
    }
    let (history, catching_up) = history();
    channels.insert("history".to_owned(), history);
    operations.insert("any.catches_up.history".to_owned(), catching_up);
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "The choreographed shop",
            "version": "1.0.0",
            "description": "Services coordinating only through past-tense events on one RabbitMQ topic exchange (choreography, the default) or, in the orchestrated style, through the commands the saga sends on a second one, answered with the same events. Every message is a CloudEvent 1.0 in structured JSON mode. Generated by `shop asyncapi` from the catalogs and the services' subscription tables; an operation of one style only says so and carries that style's tag.",
            "tags": SERVICES.iter().map(|s| json!({ "name": s.name })).chain(Style::ALL.iter().map(|style| json!({ "name": style.name() }))).collect::<Vec<_>>(),
        },
        "defaultContentType": CLOUDEVENTS_CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of `docker compose up` or `shop up`; each service has its own user.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// The shop's history: the stream every event is also appended to, and a service catching up
/// from it (`REPLAY_FROM`), reading every version of every event it holds.
fn history() -> (Value, Value) {
    let events: Vec<String> = CATALOG
        .iter()
        .flat_map(|event| {
            (event.oldest_read..=event.version).map(|version| message_key(event, version))
        })
        .collect();
    let channel_messages = message_refs(&events);
    let stream = service_kit::history::history_name(DEFAULT_NAMESPACE);
    let channel = json!({
        "address": stream,
        "title": format!("Every event, kept in the stream {stream}"),
        "description": "A RabbitMQ stream bound to every routing key of the events exchange, kept for HISTORY_MAX_AGE and at most HISTORY_MAX_BYTES; every service may read it, none may write it. The orchestrated style's commands are not in it.",
        "messages": channel_messages,
        "bindings": { "amqp": {
            "is": "queue",
            "queue": {
                "name": stream,
                "durable": true,
                "exclusive": false,
                "autoDelete": false,
                "vhost": "/",
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        } },
    });
    let received: Vec<Value> = events
        .iter()
        .map(|key| json!({ "$ref": format!("#/channels/history/messages/{key}") }))
        .collect();
    let operation = json!({
        "action": "receive",
        "title": "A service catches up from the history (REPLAY_FROM)",
        "summary": "Read from an offset or a time (the consumer argument x-stream-offset) up to where the history ended when the catch-up began, through the service's own route table, each event handled as a live delivery (inbox, handler, outbox); the reader keeps its own position.",
        "channel": { "$ref": "#/channels/history" },
        "messages": received,
        "bindings": { "amqp": {
            "ack": true,
            "bindingVersion": AMQP_BINDING_VERSION,
        } },
    });
    (channel, operation)
}

/// A channel's messages: each key a reference to its message under `components`.
fn message_refs(keys: &[String]) -> Map<String, Value> {
    keys.iter()
        .map(|key| {
            let reference = json!({ "$ref": format!("#/components/messages/{key}") });
            (key.clone(), reference)
        })
        .collect()
}

/// Who subscribes to `event`, and in which styles, from the services' own `routes()`.
fn consumers(event: &MessageInfo) -> Vec<(&'static str, Vec<Style>)> {
    SERVICES
        .iter()
        .map(|service| {
            let styles = service
                .styles
                .iter()
                .copied()
                .filter(|style| {
                    (service.subscriptions)(*style)
                        .iter()
                        .any(|e| e.event_type == event.event_type)
                })
                .collect::<Vec<_>>();
            (service.name, styles)
        })
        .filter(|(_, styles)| !styles.is_empty())
        .collect()
}

/// `version` of the message: a CloudEvent whose `data` is the event's payload.
fn message(event: &MessageInfo, version: u32) -> Value {
    let name = event.event_type;
    let ce_type = cloudevents_type(name, version);
    let uuid = json!({ "type": "string", "format": "uuid" });
    let title = if version == event.version {
        format!("{name} (version {version})")
    } else {
        format!("{name} (version {version}: no longer sent, still read, upgraded on receipt)")
    };
    json!({
        "name": message_key(event, version),
        "title": title,
        "contentType": CLOUDEVENTS_CONTENT_TYPE,
        "correlationId": { "location": "$message.payload#/correlationid" },
        "payload": {
            "type": "object",
            "description": "A CloudEvent 1.0 in structured JSON mode; `data` is the event.",
            "required": ["specversion", "id", "source", "type", "subject", "time",
                         "datacontenttype", "correlationid", "traceparent", "data"],
            "properties": {
                "specversion": { "const": CLOUDEVENTS_SPEC_VERSION },
                "id": { "description": "The message id (UUID v7).", "type": "string", "format": "uuid" },
                "source": { "const": format!("urn:shop:{}", event.producer) },
                "type": { "const": ce_type },
                "subject": { "description": "The order id.", "type": "string", "format": "uuid" },
                "time": { "type": "string", "format": "date-time" },
                "datacontenttype": { "const": "application/json" },
                "correlationid": uuid,
                "causationid": { "description": "The id of the message that caused this one; absent for a saga's first event.", "type": "string", "format": "uuid" },
                "traceparent": { "description": "W3C trace context of the span that published this message.", "type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$" },
                "tracestate": { "description": "W3C trace state, when the trace carries one.", "type": "string" },
                "data": payload_schema_of_version(name, version)
                    .or_else(|| command_schema(name))
                    .unwrap_or_else(|| json!({ "type": "object" })),
            },
        },
        "bindings": { "amqp": {
            "contentEncoding": "utf-8",
            "messageType": ce_type,
            "bindingVersion": AMQP_BINDING_VERSION,
        } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_a_channel_a_sender_and_a_receiver() {
        let document = document();
        for event in CATALOG.iter().chain(COMMANDS) {
            let name = event.event_type;
            assert_eq!(
                document["channels"][name]["address"], event.routing_key,
                "{name}"
            );
            assert_eq!(
                document["operations"][format!("{}.sends.{name}", event.producer)]["action"],
                "send"
            );
            let receivers = document["operations"]
                .as_object()
                .map(|ops| {
                    ops.keys()
                        .filter(|key| key.ends_with(&format!(".receives.{name}")))
                        .count()
                })
                .unwrap_or(0);
            assert!(receivers > 0, "{name} has no receiver");
            let data = &document["components"]["messages"][name]["payload"]["properties"]["data"];
            assert_eq!(data["type"], "object", "{name}: {data}");
            assert!(
                data["properties"]["order_id"].is_object(),
                "{name}'s payload schema comes from its type: {data}"
            );
        }
    }

    #[test]
    fn the_committed_document_is_current() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/asyncapi.yaml"
        ))
        .expect("docs/asyncapi.yaml");
        assert!(
            committed == render(),
            "docs/asyncapi.yaml is stale: run `shop asyncapi > docs/asyncapi.yaml`"
        );
    }
}
