//! The flow map, one per style, as the flow reads: placed, paid, reserved, booked, confirmed on
//! one line, failures and compensations branching below. Two sources, both from the code:
//!
//! - the stories: what each scenario leads to, message by message ([`stories`]). The flow
//!   tests run every story against the real shop and check each message and its cause, so the
//!   picture cannot drift from what the shop does;
//! - who announces (or sends) each message and who reacts, from the catalogs and the services'
//!   own subscription tables.
//!
//! `docs/flow-map.md` and the console's `services/console/flow.json` are rendered from here (a
//! test compares them).

use std::fmt::Write;

use service_kit::Style;
use shared_events::{CATALOG, COMMANDS, MessageInfo, message_info};

use crate::registry::{self, SERVICES};

/// A path through the flow, the way a newcomer asks about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Happy,
    CardDeclined,
    OutOfStock,
    Unshippable,
    /// The customer (or the deadline) cancels once every step is done but before orders
    /// confirms: everything is undone.
    CancelledAfterEveryStep,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Happy,
        Scenario::CardDeclined,
        Scenario::OutOfStock,
        Scenario::Unshippable,
        Scenario::CancelledAfterEveryStep,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Happy => "everything goes well",
            Scenario::CardDeclined => "the card is declined",
            Scenario::OutOfStock => "stock runs out",
            Scenario::Unshippable => "no carrier serves the address",
            Scenario::CancelledAfterEveryStep => "the customer cancels after every step",
        }
    }
}

/// One message leading to another: `effect`'s causation id is `cause`'s message id.
pub type Edge = (&'static str, &'static str);

/// What `scenario` leads to in `style`, cause by cause, in the order the flow reads.
pub fn stories(style: Style, scenario: Scenario) -> Vec<Edge> {
    use Scenario::*;
    let chain = |messages: &[&'static str]| -> Vec<Edge> {
        messages.windows(2).map(|pair| (pair[0], pair[1])).collect()
    };
    match style {
        Style::Choreography => {
            let to_payment = [("OrderPlaced", "PaymentCompleted")];
            let to_stock = [
                ("OrderPlaced", "PaymentCompleted"),
                ("PaymentCompleted", "StockReserved"),
            ];
            let answers = |cancelled: &[&'static str]| {
                cancelled
                    .iter()
                    .map(|answer| ("OrderCancelled", *answer))
                    .collect::<Vec<_>>()
            };
            match scenario {
                Happy => chain(&[
                    "OrderPlaced",
                    "PaymentCompleted",
                    "StockReserved",
                    "ShipmentBooked",
                    "OrderConfirmed",
                ]),
                CardDeclined => [
                    vec![
                        ("OrderPlaced", "PaymentFailed"),
                        ("PaymentFailed", "OrderCancelled"),
                    ],
                    answers(&["PaymentVoided", "ReservationVoided", "ShipmentVoided"]),
                ]
                .concat(),
                OutOfStock => [
                    to_payment.to_vec(),
                    vec![
                        ("PaymentCompleted", "StockReservationFailed"),
                        ("StockReservationFailed", "PaymentRefunded"),
                        ("StockReservationFailed", "OrderCancelled"),
                    ],
                    answers(&["ReservationVoided", "ShipmentVoided"]),
                ]
                .concat(),
                Unshippable => [
                    to_stock.to_vec(),
                    vec![
                        ("StockReserved", "ShipmentFailed"),
                        ("ShipmentFailed", "PaymentRefunded"),
                        ("ShipmentFailed", "StockReleased"),
                        ("ShipmentFailed", "OrderCancelled"),
                    ],
                    answers(&["ShipmentVoided"]),
                ]
                .concat(),
                CancelledAfterEveryStep => [
                    to_stock.to_vec(),
                    vec![("StockReserved", "ShipmentBooked")],
                    answers(&["ShipmentCancelled", "StockReleased", "PaymentRefunded"]),
                ]
                .concat(),
            }
        }
        Style::Orchestration => {
            let to = |last: &'static str| -> Vec<&'static str> {
                let line = [
                    "OrderPlaced",
                    "ChargePayment",
                    "PaymentCompleted",
                    "ReserveStock",
                    "StockReserved",
                    "BookShipment",
                    "ShipmentBooked",
                    "ConfirmOrder",
                    "OrderConfirmed",
                ];
                let end = line.iter().position(|m| *m == last).unwrap_or(0);
                line[..=end].to_vec()
            };
            let walk_back = |undo: &[&'static str]| -> Vec<&'static str> {
                let mut messages = undo.to_vec();
                messages.push("SettleOrder");
                messages
            };
            let cancelled =
                |before: Vec<&'static str>, failure: &'static str, undo: &[&'static str]| {
                    let mut messages = before;
                    messages.extend([failure, "CancelOrder", "OrderCancelled"]);
                    messages.extend(walk_back(undo));
                    chain(&messages)
                };
            match scenario {
                Happy => chain(&to("OrderConfirmed")),
                CardDeclined => cancelled(to("ChargePayment"), "PaymentFailed", &[]),
                OutOfStock => cancelled(
                    to("ReserveStock"),
                    "StockReservationFailed",
                    &["RefundPayment", "PaymentRefunded"],
                ),
                Unshippable => cancelled(
                    to("BookShipment"),
                    "ShipmentFailed",
                    &[
                        "ReleaseStock",
                        "StockReleased",
                        "RefundPayment",
                        "PaymentRefunded",
                    ],
                ),
                CancelledAfterEveryStep => {
                    let mut messages = to("ConfirmOrder");
                    messages.truncate(messages.len() - 1);
                    let mut edges = chain(&messages);
                    edges.extend(chain(
                        &[
                            vec!["OrderCancelled"],
                            walk_back(&[
                                "CancelShipment",
                                "ShipmentCancelled",
                                "ReleaseStock",
                                "StockReleased",
                                "RefundPayment",
                                "PaymentRefunded",
                            ]),
                        ]
                        .concat(),
                    ));
                    edges
                }
            }
        }
    }
}

/// Every message of a story, once each, in the order it first appears.
pub fn messages_of(edges: &[Edge]) -> Vec<&'static str> {
    let mut messages = Vec::new();
    for (cause, effect) in edges {
        for message in [cause, effect] {
            if !messages.contains(message) {
                messages.push(*message);
            }
        }
    }
    messages
}

/// Where a message sits on the map: its column (the step it belongs to: placed, payment,
/// stock, shipping, outcome) and its row (0: the way to a confirmation; 1: failures and the
/// cancellation; 2 and below: compensations).
fn place(style: Style, message: &str) -> (usize, usize) {
    let step = |columns: [usize; 5], name: &str| -> usize {
        let index = ["Order", "Payment", "Stock", "Shipment", "Outcome"]
            .iter()
            .position(|s| *s == name)
            .unwrap_or(0);
        columns[index]
    };
    // Orchestrated, each step's command sits in a column of its own before its answers.
    let columns = match style {
        Style::Choreography => [0, 1, 2, 3, 4],
        Style::Orchestration => [0, 2, 4, 6, 7],
    };
    let (area, row) = match message {
        "OrderPlaced" => ("Order", 0),
        "PaymentCompleted" => ("Payment", 0),
        "StockReserved" => ("Stock", 0),
        "ShipmentBooked" => ("Shipment", 0),
        "OrderConfirmed" => ("Outcome", 0),
        "PaymentFailed" => ("Payment", 1),
        "StockReservationFailed" => ("Stock", 1),
        "ShipmentFailed" => ("Shipment", 1),
        "OrderCancelled" => ("Outcome", 1),
        "PaymentRefunded" => ("Payment", 2),
        "StockReleased" => ("Stock", 2),
        "ShipmentCancelled" => ("Shipment", 2),
        "PaymentVoided" => ("Payment", 3),
        "ReservationVoided" => ("Stock", 3),
        "ShipmentVoided" => ("Shipment", 3),
        "ChargePayment" => ("Payment", 0),
        "ReserveStock" => ("Stock", 0),
        "BookShipment" => ("Shipment", 0),
        "ConfirmOrder" => ("Outcome", 0),
        "CancelOrder" => ("Outcome", 1),
        "RefundPayment" => ("Payment", 2),
        "ReleaseStock" => ("Stock", 2),
        "CancelShipment" => ("Shipment", 2),
        "SettleOrder" => ("Outcome", 2),
        _ => ("Order", 4),
    };
    let command = message_info(message).is_some_and(MessageInfo::is_command);
    let column = step(columns, area);
    // Orchestrated, a step's command precedes its answers, and orders' answers follow the
    // saga's requests to it.
    let column = match (style, command, area) {
        (Style::Orchestration, true, "Outcome") | (Style::Choreography, _, _) => column,
        (Style::Orchestration, true, _) => column - 1,
        (Style::Orchestration, false, "Outcome") => column + 1,
        (Style::Orchestration, false, _) => column,
    };
    (column, row)
}

/// Who reacts to `message` in `style`, from the services' own subscription tables.
pub fn consumers(style: Style, message: &str) -> Vec<&'static str> {
    SERVICES
        .iter()
        .filter(|service| service.runs_in(style))
        .filter(|service| {
            (service.subscriptions)(style)
                .iter()
                .any(|e| e.event_type == message)
        })
        .map(|service| service.name)
        .collect()
}

/// Every message of `style`'s map: the events, and orchestrated, the commands.
fn catalog(style: Style) -> Vec<&'static MessageInfo> {
    let commands: &[MessageInfo] = match style {
        Style::Choreography => &[],
        Style::Orchestration => COMMANDS,
    };
    CATALOG.iter().chain(commands).collect()
}

/// The maps as data, for the console's live page (`services/console/flow.json`): per style,
/// every message with its place, producer and consumers, and every scenario's edges.
pub fn render_json() -> String {
    let maps: serde_json::Map<String, serde_json::Value> = Style::ALL
        .iter()
        .map(|style| {
            let nodes: Vec<serde_json::Value> = catalog(*style)
                .into_iter()
                .map(|m| {
                    let (column, row) = place(*style, m.event_type);
                    serde_json::json!({
                        "message": m.event_type,
                        "kind": if m.is_command() { "command" } else { "event" },
                        "from": m.producer,
                        "to": consumers(*style, m.event_type),
                        "column": column,
                        "row": row,
                    })
                })
                .collect();
            let scenarios: Vec<serde_json::Value> = Scenario::ALL
                .iter()
                .map(|scenario| {
                    serde_json::json!({
                        "title": scenario.title(),
                        "edges": stories(*style, *scenario),
                    })
                })
                .collect();
            (
                style.name().to_owned(),
                serde_json::json!({
                    "services": registry::names_in(*style).collect::<Vec<_>>(),
                    "nodes": nodes,
                    "scenarios": scenarios,
                }),
            )
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&maps).unwrap_or_default();
    text.push('\n');
    text
}

/// Per style: a Mermaid flowchart of every story, left to right, and the table of who
/// announces (or sends) each message and who reacts to it.
pub fn render() -> String {
    let mut out = String::new();
    for style in Style::ALL {
        let _ = writeln!(out, "## {}\n", heading(style));
        out.push_str("```mermaid\nflowchart LR\n");
        let mut drawn: Vec<Edge> = Vec::new();
        for scenario in Scenario::ALL {
            for edge in stories(style, scenario) {
                if !drawn.contains(&edge) {
                    drawn.push(edge);
                    let _ = writeln!(out, "    {} --> {}", edge.0, edge.1);
                }
            }
        }
        for info in catalog(style) {
            if info.is_command()
                && drawn
                    .iter()
                    .any(|(a, b)| *a == info.event_type || *b == info.event_type)
            {
                let _ = writeln!(out, "    {0}[/{0}/]", info.event_type);
            }
        }
        out.push_str("```\n\n");
        out.push_str("| Scenario | Messages, in order |\n|---|---|\n");
        for scenario in Scenario::ALL {
            let _ = writeln!(
                out,
                "| {} | {} |",
                scenario.title(),
                messages_of(&stories(style, scenario)).join(" → ")
            );
        }
        out.push_str(
            "\n| Message | Kind | Routing key | Sent by | Reacted to by |\n|---|---|---|---|---|\n",
        );
        for info in catalog(style) {
            let sender = if registry::find(info.producer).is_some() {
                info.producer
            } else {
                "(nobody)"
            };
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {sender} | {} |",
                info.event_type,
                if info.is_command() {
                    "command"
                } else {
                    "event"
                },
                info.routing_key,
                consumers(style, info.event_type).join(", ")
            );
        }
        out.push('\n');
    }
    out
}

fn heading(style: Style) -> &'static str {
    match style {
        Style::Choreography => "Choreography (the default)",
        Style::Orchestration => "Orchestration (`SHOP_STYLE=orchestration`)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_its_sender_and_someone_reacting_in_its_style() {
        let map = render();
        assert!(!map.contains("(nobody)"), "{map}");
        for style in Style::ALL {
            for info in catalog(style) {
                assert!(
                    !consumers(style, info.event_type).is_empty(),
                    "{} has no consumer in {style}",
                    info.event_type
                );
            }
        }
    }

    #[test]
    fn every_story_follows_who_reacts_to_what() {
        for style in Style::ALL {
            for scenario in Scenario::ALL {
                for (cause, effect) in stories(style, scenario) {
                    let producer = message_info(effect).map(|m| m.producer);
                    assert!(
                        producer.is_some_and(|p| consumers(style, cause).contains(&p)),
                        "{style} {scenario:?}: {effect}'s sender does not hear {cause}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_way_to_a_confirmation_reads_left_to_right_on_one_line() {
        for style in Style::ALL {
            let happy = messages_of(&stories(style, Scenario::Happy));
            let places: Vec<(usize, usize)> = happy.iter().map(|m| place(style, m)).collect();
            assert!(
                places.iter().all(|(_, row)| *row == 0),
                "{style}: {places:?}"
            );
            assert!(
                places.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "{style}: {places:?}"
            );
        }
    }

    #[test]
    fn the_console_shows_the_current_map() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../console/flow.json"))
                .expect("services/console/flow.json");
        assert_eq!(
            committed,
            render_json(),
            "the console's flow map is stale: `shop map --json > services/console/flow.json`"
        );
    }

    #[test]
    fn the_docs_show_the_current_map() {
        let page = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/flow-map.md"
        ))
        .expect("docs/flow-map.md");
        let start = "<!-- flow-map:start (generated by `shop map`) -->\n";
        let end = "<!-- flow-map:end -->";
        let shown = page
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(map, _)| map)
            .expect("docs/flow-map.md has the flow-map markers");
        assert_eq!(
            shown,
            render(),
            "docs/flow-map.md is stale: paste `shop map` between the markers"
        );
    }
}
