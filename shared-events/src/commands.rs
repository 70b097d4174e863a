//! The commands of the orchestrated style (`SHOP_STYLE=orchestration`): what the saga asks of
//! one service, in the imperative. Each is answered with the same past-tense event the
//! choreography uses (ChargePayment with PaymentCompleted or PaymentFailed), so every
//! subscriber of the events sees the same facts in both styles.
//!
//! Only the saga sends commands (its broker user alone may write to `<ns>.commands`), and each
//! goes to the one service that handles it, under `<handler>.<command_in_snake_case>`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Command, Kind, Message, MessageInfo, MessageVisitor, OrderLine, OrderPlaced, Participant,
    ShippingAddress, participants,
};

/// Declares the commands once: type name, handler and routing key, and `COMMANDS` listing them.
macro_rules! commands {
    ($($command:ident => $handler:ident, $routing_key:literal;)+) => {
        $(
            impl Command for $command {}

            impl Message for $command {
                const TYPE: &'static str = stringify!($command);
                type Producer = participants::Saga;
                const ROUTING_KEY: &'static str = $routing_key;
                const KIND: Kind = Kind::Command {
                    handler: <participants::$handler as Participant>::NAME,
                };

                fn order_id(&self) -> Uuid {
                    self.order_id
                }
            }
        )+

        /// Every command, in saga order: the steps, the undos, then orders' own.
        pub const COMMANDS: &[MessageInfo] = &[
            $(<$command as Message>::INFO,)+
        ];

        /// The JSON Schema (draft 07, self-contained) of a command's payload.
        pub fn command_schema(command_type: &str) -> Option<serde_json::Value> {
            match command_type {
                $(stringify!($command) => Some(crate::schema_of::<$command>()),)+
                _ => None,
            }
        }

        /// Calls `visitor` with every command type: how the console subscribes to each.
        pub fn visit_commands(visitor: &mut impl MessageVisitor) {
            $(visitor.visit::<$command>();)+
        }
    };
}

commands! {
    ChargePayment => Payment, "payment.charge_payment";
    ReserveStock => Inventory, "inventory.reserve_stock";
    BookShipment => Shipping, "shipping.book_shipment";
    RefundPayment => Payment, "payment.refund_payment";
    ReleaseStock => Inventory, "inventory.release_stock";
    CancelShipment => Shipping, "shipping.cancel_shipment";
    ConfirmOrder => Orders, "orders.confirm_order";
    CancelOrder => Orders, "orders.cancel_order";
    SettleOrder => Orders, "orders.settle_order";
}

/// Charge the order's total (answered with PaymentCompleted or PaymentFailed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChargePayment {
    pub order_id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
}

impl ChargePayment {
    /// The charge a placed order calls for (what the saga asks, and what payment does itself
    /// when it hears OrderPlaced in the choreography).
    pub fn for_order(order: &OrderPlaced) -> Self {
        Self {
            order_id: order.order_id,
            total_cents: order.total_cents,
            currency: order.currency.clone(),
            payment_method: order.payment_method.clone(),
        }
    }
}

/// Reserve the order's lines, all or nothing (StockReserved or StockReservationFailed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReserveStock {
    pub order_id: Uuid,
    pub items: Vec<OrderLine>,
}

impl ReserveStock {
    pub fn for_order(order: &OrderPlaced) -> Self {
        Self {
            order_id: order.order_id,
            items: order.items.clone(),
        }
    }
}

/// Book a courier to the address (ShipmentBooked or ShipmentFailed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookShipment {
    pub order_id: Uuid,
    pub shipping_address: ShippingAddress,
}

impl BookShipment {
    pub fn for_order(order: &OrderPlaced) -> Self {
        Self {
            order_id: order.order_id,
            shipping_address: order.shipping_address.clone(),
        }
    }
}

/// Give back whatever was charged, or make sure nothing ever is (PaymentRefunded or
/// PaymentVoided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefundPayment {
    pub order_id: Uuid,
}

/// Release whatever is reserved, or make sure nothing ever is (StockReleased or
/// ReservationVoided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}

/// Cancel the booking, or make sure none is ever made (ShipmentCancelled or ShipmentVoided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelShipment {
    pub order_id: Uuid,
}

/// Every step is done: confirm the order (OrderConfirmed, unless it was cancelled first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmOrder {
    pub order_id: Uuid,
}

/// Cancel the order (OrderCancelled, unless it is already final).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelOrder {
    pub order_id: Uuid,
    pub cause: CancelCause,
    /// The failure's own words (empty for the deadline).
    pub reason: String,
}

/// Why the saga cancels an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelCause {
    PaymentFailed,
    StockReservationFailed,
    ShipmentFailed,
    DeadlineExceeded,
}

/// Every step that ran was walked back: the cancelled order is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SettleOrder {
    pub order_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_go_to_their_handler_under_its_name() {
        for info in COMMANDS {
            let Kind::Command { handler } = info.kind else {
                panic!("{} is not a command", info.event_type);
            };
            assert_eq!(info.producer, "saga");
            assert!(
                info.routing_key.starts_with(&format!("{handler}.")),
                "{}",
                info.routing_key
            );
            assert!(
                crate::CATALOG
                    .iter()
                    .all(|e| e.event_type != info.event_type)
            );
        }
    }
}
