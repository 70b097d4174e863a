//! The load's mix: what each order is meant to do (most go through, the rest take each
//! compensation path), its customers and SKUs.

use serde_json::Value;

use crate::harness;

/// What one order of the load is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Confirmed,
    CardDeclined,
    OutOfStock,
    Unshippable,
}

/// The mix, in hundredths: most orders go through, the rest take each compensation path.
pub(super) const MIX: [(Kind, u64); 4] = [
    (Kind::Confirmed, 85),
    (Kind::CardDeclined, 7),
    (Kind::Unshippable, 5),
    (Kind::OutOfStock, 3),
];

/// SKUs of the confirmed orders, in turn (each seeded with [`PLENTY`]).
pub(super) const SKUS: [&str; 4] = ["MUG-001", "TEE-001", "BOOK-001", "STICKER-001"];

/// The SKU whose stock is set to zero, for the out-of-stock share of the mix.
pub(super) const SOLD_OUT_SKU: &str = "HOODIE-001";

pub(super) fn kind_of(i: u64) -> Kind {
    let mut slot = i % 100;
    for (kind, share) in MIX {
        if slot < share {
            return kind;
        }
        slot -= share;
    }
    Kind::Confirmed
}

pub(super) fn order_body(i: u64) -> Value {
    let sku = SKUS[usize::try_from(i % 4).unwrap_or(0)];
    let (sku, method, country) = match kind_of(i) {
        Kind::Confirmed => (sku, "card", "NL"),
        Kind::CardDeclined => (sku, "card_declined", "GB"),
        Kind::Unshippable => (sku, "card", "AQ"),
        Kind::OutOfStock => (SOLD_OUT_SKU, "card", "DE"),
    };
    harness::order_body(&customer(i), sku, 1, method, country)
}

/// Customers the load places orders for, each with one token for the whole run (as a client
/// keeps its token), so signing and verifying cost what they cost a real shop.
pub(super) const CUSTOMERS: u64 = 100;

pub(super) fn customer(i: u64) -> String {
    format!("bench-{}", i % CUSTOMERS)
}

pub(super) fn mix_description() -> String {
    MIX.iter()
        .map(|(kind, share)| format!("{share}% {}", outcome_name(*kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn outcome_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Confirmed => "confirmed",
        Kind::CardDeclined => "cancelled: payment failed",
        Kind::OutOfStock => "cancelled: stock reservation failed",
        Kind::Unshippable => "cancelled: shipment failed",
    }
}
