use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Event, Kind, Message, MessageInfo, participants};

/// Declares the catalog once: every event's type name, producer and routing key, and the
/// `CATALOG` listing them, so the three can never disagree.
macro_rules! catalog {
    ($($event:ident => $producer:ident, $routing_key:literal
       $(, version $version:literal reading from $oldest:literal through $upgrade:path)?;)+) => {
        $(
            impl Event for $event {}

            impl Message for $event {
                const TYPE: &'static str = stringify!($event);
                type Producer = participants::$producer;
                const ROUTING_KEY: &'static str = $routing_key;
                const KIND: Kind = Kind::Event;
                $(
                    const VERSION: u32 = $version;
                    const OLDEST_READ: u32 = $oldest;

                    fn upgrade(from: u32, payload: serde_json::Value, occurred_at: DateTime<Utc>)
                        -> Result<serde_json::Value, String> {
                        $upgrade(from, payload, occurred_at)
                    }
                )?

                fn order_id(&self) -> Uuid {
                    self.order_id
                }
            }
        )+

        /// The JSON Schema (draft 07, self-contained) of an event's payload, generated from its
        /// Rust type; `None` for a type outside the catalog.
        pub fn payload_schema(event_type: &str) -> Option<serde_json::Value> {
            match event_type {
                $(stringify!($event) => Some(crate::schema_of::<$event>()),)+
                _ => None,
            }
        }

        /// Every event of the shop, in saga order.
        pub const CATALOG: &[MessageInfo] = &[
            $(<$event as Message>::INFO,)+
        ];

        /// Calls `visitor` with every event type of the catalog: how a listener that wants
        /// them all (the console) subscribes to each, including events added later.
        pub fn visit_catalog(visitor: &mut impl MessageVisitor) {
            $(visitor.visit::<$event>();)+
        }
    };
}

catalog! {
    OrderPlaced => Orders, "orders.order_placed",
        version 3 reading from 1 through v2::OrderPlaced::upgrade;
    PaymentCompleted => Payment, "payment.payment_completed";
    PaymentFailed => Payment, "payment.payment_failed";
    StockReserved => Inventory, "inventory.stock_reserved";
    StockReservationFailed => Inventory, "inventory.stock_reservation_failed";
    ShipmentBooked => Shipping, "shipping.shipment_booked";
    ShipmentFailed => Shipping, "shipping.shipment_failed";
    PaymentRefunded => Payment, "payment.payment_refunded";
    StockReleased => Inventory, "inventory.stock_released";
    OrderConfirmed => Orders, "orders.order_confirmed";
    OrderCancelled => Orders, "orders.order_cancelled";
    PaymentVoided => Payment, "payment.payment_voided";
    ReservationVoided => Inventory, "inventory.reservation_voided";
    ShipmentCancelled => Shipping, "shipping.shipment_cancelled";
    ShipmentVoided => Shipping, "shipping.shipment_voided";
}

/// Something done once per message type of a catalog (see [`visit_catalog`] and
/// [`crate::visit_commands`]).
pub trait MessageVisitor {
    fn visit<M: Message>(&mut self);
}

/// The JSON Schema of `version` of an event's payload: the current one, or an older one
/// consumers still read; `None` for any other.
pub fn payload_schema_of_version(event_type: &str, version: u32) -> Option<serde_json::Value> {
    match (event_type, version) {
        ("OrderPlaced", 1) => Some(crate::schema_of::<v1::OrderPlaced>()),
        ("OrderPlaced", 2) => Some(crate::schema_of::<v2::OrderPlaced>()),
        _ => CATALOG
            .iter()
            .find(|info| info.event_type == event_type && info.version == version)
            .and_then(|_| payload_schema(event_type)),
    }
}

/// One line of a placed order, priced from the catalog at the time it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A quantity of one SKU, as reserved or released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLine {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
}

/// The values of OrderPlaced's `payment_method`: what orders accepts and payment charges.
pub mod payment_methods {
    pub const CARD: &str = "card";
    /// The test card that is always declined: the deterministic way to drive PaymentFailed.
    pub const DECLINED_TEST_CARD: &str = "card_declined";
    pub const ALL: &[&str] = &[CARD, DECLINED_TEST_CARD];
}

/// Version 3: the order carries its deadline, decided once by orders where it is placed, so
/// whoever expires orders (orders in the choreography, the saga orchestrated) keeps the very
/// deadline the customer is shown. Version 2 added the currency (ISO 4217) its prices and total
/// are in, so payment charges in it rather than assume one. Both additive: the older fields
/// keep their names and meaning, so a reader that ignores the new ones still works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub payment_method: String,
    pub shipping_address: ShippingAddress,
    pub currency: String,
    /// When the order is cancelled (`deadline_exceeded`) if it is still open.
    pub deadline_at: DateTime<Utc>,
}

/// OrderPlaced as version 2 announced it: read, upgraded, never written.
pub mod v2 {
    use super::*;

    /// The deadline of an order announced before OrderPlaced carried one: the default every
    /// earlier version applied, ten minutes after the order was placed.
    pub const DEADLINE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

    /// OrderPlaced version 2: no deadline (each service that expired orders computed its own).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: Uuid,
        pub customer_id: String,
        pub items: Vec<OrderLine>,
        pub total_cents: i64,
        pub payment_method: String,
        pub shipping_address: ShippingAddress,
        pub currency: String,
    }

    impl OrderPlaced {
        /// Version 1's or 2's payload in the current shape; `placed_at` is when it occurred.
        pub fn upgrade(
            from: u32,
            payload: serde_json::Value,
            placed_at: DateTime<Utc>,
        ) -> Result<serde_json::Value, String> {
            let old: Self = match from {
                1 => v1::OrderPlaced::read(payload)?.into(),
                2 => serde_json::from_value(payload).map_err(|e| e.to_string())?,
                _ => return Err(format!("no upgrade of OrderPlaced from version {from}")),
            };
            let current = super::OrderPlaced {
                order_id: old.order_id,
                customer_id: old.customer_id,
                items: old.items,
                total_cents: old.total_cents,
                payment_method: old.payment_method,
                shipping_address: old.shipping_address,
                currency: old.currency,
                deadline_at: placed_at + DEADLINE,
            };
            serde_json::to_value(current).map_err(|e| e.to_string())
        }
    }
}

/// OrderPlaced as version 1 announced it: read, upgraded, never written.
pub mod v1 {
    use super::*;

    /// The currency every order was in before OrderPlaced carried one.
    pub const CURRENCY: &str = "EUR";

    /// OrderPlaced version 1: no currency (the shop sold in euros only).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: Uuid,
        pub customer_id: String,
        pub items: Vec<OrderLine>,
        pub total_cents: i64,
        pub payment_method: String,
        pub shipping_address: ShippingAddress,
    }

    impl OrderPlaced {
        pub(super) fn read(payload: serde_json::Value) -> Result<Self, String> {
            serde_json::from_value(payload).map_err(|e| e.to_string())
        }
    }

    impl From<OrderPlaced> for v2::OrderPlaced {
        fn from(old: OrderPlaced) -> Self {
            Self {
                order_id: old.order_id,
                customer_id: old.customer_id,
                items: old.items,
                total_cents: old.total_cents,
                payment_method: old.payment_method,
                shipping_address: old.shipping_address,
                currency: CURRENCY.to_owned(),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCompleted {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub items: Vec<StockLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservationFailed {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentBooked {
    pub order_id: Uuid,
    pub shipment_id: Uuid,
    pub carrier: String,
    pub tracking_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentFailed {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: Uuid,
    pub items: Vec<StockLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
}

/// The order will not be fulfilled. `reason` starts with the failure that cancelled it
/// ("payment failed: …"), or is `customer_request` or `deadline_exceeded`. Every participant
/// answers it with what it undid (PaymentRefunded / PaymentVoided, StockReleased /
/// ReservationVoided, ShipmentCancelled / ShipmentVoided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: String,
}

/// Payment's answer to a cancellation when it holds no money for the order: nothing was
/// charged (declined, or never seen), and nothing ever will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentVoided {
    pub order_id: Uuid,
}

/// Inventory's answer to a cancellation when it holds no stock for the order: nothing was
/// reserved (refused, or never attempted), and nothing ever will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationVoided {
    pub order_id: Uuid,
}

/// Shipping's answer to a cancellation of an order whose shipment was booked: the booking is
/// cancelled with the carrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentCancelled {
    pub order_id: Uuid,
    pub shipment_id: Uuid,
}

/// Shipping's answer to a cancellation when no shipment was booked for the order: none was
/// (failed, or never attempted), and none ever will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentVoided {
    pub order_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snake_case(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn routing_keys_are_producer_dot_snake_case_type() {
        for info in CATALOG {
            assert_eq!(
                info.routing_key,
                format!("{}.{}", info.producer, snake_case(info.event_type))
            );
        }
    }

    #[test]
    fn catalog_has_fifteen_distinct_events() {
        let mut types: Vec<_> = CATALOG.iter().map(|e| e.event_type).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), 15);
    }
}
