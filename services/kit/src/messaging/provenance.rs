//! A message is believed only for what the broker vouched for. A service's broker user may
//! publish only its own routing keys (a topic permission), and RabbitMQ refuses a `user-id`
//! property other than the publishing connection's user; neither looks at the body. So before a
//! delivery is handled, the type its body claims must be one the catalog lets its routing key
//! carry, its CloudEvents `source` must name that type's producer, and, where every service has
//! a broker user of its own, its `user-id` must be that producer's. Otherwise it is
//! dead-lettered at once with what did not match.

use lapin::message::Delivery;
use shared_events::{Envelope, message_info};

use crate::broker::{headers, publisher::header_text, topology::Topology};

/// What the broker vouches for about a delivery, as first published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vouched {
    /// The routing key it was published under on the events exchange.
    pub(crate) routing_key: String,
    /// The broker user that published it (its checked `user-id`), if it carried one.
    pub(crate) publisher: Option<String>,
}

impl Vouched {
    /// A delivery through this service's own private exchange (a retry, a dead letter
    /// re-driven), which only this service's user and an administrator may write to, says in
    /// the headers its consumer set when it moved the message on how it was first published.
    /// Any other delivery speaks for itself.
    pub(crate) fn of(delivery: &Delivery, topology: &Topology) -> Self {
        let user_id = delivery
            .properties
            .user_id()
            .as_ref()
            .map(|u| u.to_string());
        if delivery.exchange.as_str() != topology.private_exchange {
            return Self {
                routing_key: delivery.routing_key.to_string(),
                publisher: user_id,
            };
        }
        Self {
            routing_key: header_text(&delivery.properties, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| delivery.routing_key.to_string()),
            publisher: header_text(&delivery.properties, headers::ORIGINAL_PUBLISHER).or(user_id),
        }
    }
}

/// Whether `envelope` may be believed, given what the broker vouched for. `users_per_service`:
/// every service publishes as a broker user named after it (provisioned deployments), so the
/// publisher must be the producer itself. A type outside the catalog is the route table's to
/// refuse.
pub(crate) fn check(
    envelope: &Envelope,
    vouched: &Vouched,
    users_per_service: bool,
) -> Result<(), String> {
    // An event's producer announces it; a command's, the saga, sends it.
    let Some(event) = message_info(&envelope.event_type) else {
        return Ok(());
    };
    let (event_type, producer) = (event.event_type, event.producer);
    if vouched.routing_key != event.routing_key {
        return Err(format!(
            "{event_type} arrived under {}; only {producer} announces it (under {})",
            vouched.routing_key, event.routing_key
        ));
    }
    if envelope.producer != producer {
        return Err(format!(
            "{event_type} claims source urn:shop:{}; only {producer} announces it",
            envelope.producer
        ));
    }
    if users_per_service && vouched.publisher.as_deref() != Some(producer) {
        return Err(format!(
            "{event_type} was published by broker user {}; only {producer} announces it",
            vouched.publisher.as_deref().unwrap_or("(none)")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shared_events::{ChargePayment, Message, OrderCancelled, OrderConfirmed};
    use uuid::Uuid;

    use super::*;

    fn cancelled() -> Envelope {
        let cancelled = OrderCancelled {
            order_id: Uuid::now_v7(),
            reason: "customer_request".to_owned(),
        };
        Envelope::new(&cancelled, None)
    }

    fn vouched(routing_key: &str, publisher: Option<&str>) -> Vouched {
        Vouched {
            routing_key: routing_key.to_owned(),
            publisher: publisher.map(str::to_owned),
        }
    }

    #[test]
    fn an_event_under_its_own_key_from_its_producer_is_believed() {
        let legitimate = vouched(OrderCancelled::ROUTING_KEY, Some("orders"));
        assert_eq!(check(&cancelled(), &legitimate, true), Ok(()));
        assert_eq!(check(&cancelled(), &legitimate, false), Ok(()));
    }

    #[test]
    fn an_event_under_another_services_key_is_refused_saying_why() {
        let forged = vouched("payment.payment_completed", Some("payment"));
        assert_eq!(
            check(&cancelled(), &forged, false),
            Err(
                "OrderCancelled arrived under payment.payment_completed; only orders announces \
                 it (under orders.order_cancelled)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_source_that_is_not_the_producer_is_refused() {
        let mut claimed = cancelled();
        claimed.producer = "payment".to_owned();
        let under_its_key = vouched(OrderCancelled::ROUTING_KEY, Some("orders"));
        assert!(
            check(&claimed, &under_its_key, false)
                .is_err_and(|reason| reason.contains("claims source urn:shop:payment"))
        );
    }

    #[test]
    fn with_a_user_per_service_only_the_producers_user_is_believed() {
        let envelope = Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
            None,
        );
        for publisher in [Some("payment"), Some("guest"), None] {
            let under_its_key = vouched(OrderConfirmed::ROUTING_KEY, publisher);
            assert!(
                check(&envelope, &under_its_key, true).is_err(),
                "{publisher:?}"
            );
            assert_eq!(check(&envelope, &under_its_key, false), Ok(()));
        }
    }

    #[test]
    fn a_command_is_believed_only_from_the_saga() {
        let charge = Envelope::new(
            &ChargePayment {
                order_id: Uuid::now_v7(),
                total_cents: 1250,
                currency: "EUR".to_owned(),
                payment_method: "card".to_owned(),
            },
            None,
        );
        let from_the_saga = vouched(ChargePayment::ROUTING_KEY, Some("saga"));
        assert_eq!(check(&charge, &from_the_saga, true), Ok(()));
        let from_payment = vouched(ChargePayment::ROUTING_KEY, Some("payment"));
        assert!(
            check(&charge, &from_payment, true)
                .is_err_and(|reason| reason.contains("only saga announces it"))
        );
    }
}
