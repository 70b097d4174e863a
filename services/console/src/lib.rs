//! # Console
//!
//! - **Subscribes to** every event of the catalog (each one it is given by
//!   [`shared_events::visit_catalog`], so an event added later is picked up by itself), and in
//!   the orchestrated style to every command as it passes.
//! - **Owns** `console.events`: what it heard, its only source. It never reads another
//!   service's schema and calls no service, except the public Orders API when a visitor presses
//!   a button (placing or cancelling an order, as any client would). It peeks at every
//!   service's dead-letter queue (leaving each message there) to show their causes.
//! - **Announces** nothing.
//! - **Serves** the live page at `/`: the flow map lighting up, recent orders filling in, one
//!   order's timeline, buttons for every kind of order, events per second
//!   (`services/console/src/page.html`, embedded; no internet needed).

mod api;
mod dead_letters;
mod heard;
pub mod settings;
mod stream;

pub use api::DEMO_CUSTOMER;
pub use settings::VARIABLES;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use service_kit::{BoundService, Config, HandlerError, Routes, Service, ServiceSpec, Style};
use shared_events::{Message, MessageVisitor, participants, visit_catalog, visit_commands};

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8085);

/// What the console reacts to: everything, the same way. This table also declares the
/// queue's bindings.
pub fn routes(style: Style) -> Routes<Console> {
    struct Everything(Routes<Console>);

    impl MessageVisitor for Everything {
        fn visit<M: Message>(&mut self) {
            let routes = std::mem::take(&mut self.0);
            self.0 = routes.on::<M>(|console, ctx, message| Box::pin(console.record(ctx, message)));
        }
    }

    let mut everything = Everything(Routes::new());
    visit_catalog(&mut everything);
    if style == Style::Orchestration {
        visit_commands(&mut everything);
    }
    everything.0
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Console as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, Some(api::described()))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let settings = settings::Settings::read(&config)?;
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/console"),
        routes: routes(config.style),
        state: Console,
        http: Some(Box::new(move |api| api::routes(api, settings))),
        guards_customer_data: false,
        background: Some(api::prune),
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct Console;

impl Service for Console {
    type Participant = participants::Console;
}

/// A handler's context: the transaction (the console announces nothing).
type Ctx = service_kit::Ctx<participants::Console>;

impl Console {
    /// Keeps the event as heard, for the page.
    async fn record<E: Message>(&self, ctx: &mut Ctx, event: E) -> Result<(), HandlerError> {
        let payload = serde_json::to_value(&event)
            .map_err(|e| HandlerError::Rejected(format!("payload not serializable: {e}")))?;
        let payload = without_personal_data(payload);
        let (message_id, causation_id, occurred_at) =
            (ctx.message_id(), ctx.causation_id(), ctx.occurred_at());
        sqlx::query(
            "INSERT INTO console.events
                 (message_id, order_id, event_type, producer, causation_id, occurred_at, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(message_id)
        .bind(event.order_id())
        .bind(E::TYPE)
        .bind(E::PRODUCER)
        .bind(causation_id)
        .bind(occurred_at)
        .bind(payload)
        .execute(ctx.db())
        .await?;
        Ok(())
    }
}

/// What the console keeps of an event's payload: everything but who the customer is and where
/// they live. The page is for watching the choreography, not the customers, so it shows no
/// names or addresses, and keeps none to leak.
fn without_personal_data(mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = payload.as_object_mut() {
        for personal in ["customer_id", "shipping_address"] {
            fields.remove(personal);
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_keeps_no_names_or_addresses() {
        let placed = serde_json::json!({
            "order_id": "o-1",
            "customer_id": "ada",
            "total_cents": 1250,
            "shipping_address": { "name": "Ada Lovelace", "line1": "12 St James Square" },
        });
        assert_eq!(
            without_personal_data(placed),
            serde_json::json!({ "order_id": "o-1", "total_cents": 1250 })
        );
    }
}
