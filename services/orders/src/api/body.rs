//! What a customer sends to place an order, described with the limits the domain holds it to
//! (`docs/openapi/orders.json` shows them): lengths, quantities, the countries and payment
//! methods it accepts.

use serde::Deserialize;
use shared_events::ShippingAddress;
use utoipa::{
    ToSchema,
    openapi::{Object, ObjectBuilder, Type},
};

use crate::domain;

/// An order as a customer places it.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({
    "customer_id": "ada",
    "items": [{"sku": "MUG-001", "quantity": 2}],
    "shipping_address": {"name": "Ada Lovelace", "line1": "12 St James Square",
                         "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"}
}))]
pub(super) struct PlaceOrderBody {
    /// Optional with a token (the order is the caller's; a different one is refused with
    /// `403`); required only when authentication is disabled.
    #[schema(max_length = 200, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub(super) customer_id: Option<String>,
    /// Each SKU once, its whole quantity on its line.
    #[schema(min_items = 1, max_items = 50)]
    pub(super) items: Vec<ItemBody>,
    #[serde(default = "default_payment_method")]
    #[schema(schema_with = payment_method_schema)]
    pub(super) payment_method: String,
    pub(super) shipping_address: AddressBody,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ItemBody {
    /// A SKU of the catalog (`GET /products`).
    #[schema(max_length = 200, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub(super) sku: String,
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "whole_number")]
    pub(super) quantity: i64,
}

/// An integer as JSON Schema counts one: `2` and `2.0` alike (the document says `integer`, and
/// a client that writes every number with a decimal point is within it).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(whole) = number.as_i64() {
        return Ok(whole);
    }
    match number.as_f64() {
        // Within ±2^53 a float holds every integer exactly; past it the quantity is refused
        // by its range anyway.
        Some(float) if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 => {
            Ok(float as i64)
        }
        _ => Err(serde::de::Error::custom(format!(
            "invalid type: {number}, expected a whole number"
        ))),
    }
}

/// Where to ship: each text 1 to 200 characters, not blank.
#[derive(Deserialize, ToSchema)]
pub(super) struct AddressBody {
    #[schema(schema_with = text_schema)]
    pub(super) name: String,
    #[schema(schema_with = text_schema)]
    pub(super) line1: String,
    #[schema(schema_with = text_schema)]
    pub(super) city: String,
    #[schema(schema_with = text_schema)]
    pub(super) postal_code: String,
    #[schema(schema_with = country_schema)]
    pub(super) country: String,
}

impl From<AddressBody> for ShippingAddress {
    fn from(address: AddressBody) -> Self {
        Self {
            name: address.name,
            line1: address.line1,
            city: address.city,
            postal_code: address.postal_code,
            country: address.country,
        }
    }
}

fn default_payment_method() -> String {
    "card".to_owned()
}

/// A text the domain accepts: 1 to [`domain::MAX_TEXT`] characters, not blank, and no NUL
/// (Postgres cannot store it).
fn text_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(domain::MAX_TEXT))
        .pattern(Some(r"^[^\u0000]*[^\s\u0000][^\u0000]*$"))
        .build()
}

/// The payment methods the shop accepts, as the domain lists them.
fn payment_method_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(domain::PAYMENT_METHODS.iter().copied()))
        .default(Some(default_payment_method().into()))
        .description(Some(format!(
            "`{}` is the test card that is always declined",
            shared_events::payment_methods::DECLINED_TEST_CARD
        )))
        .build()
}

/// The countries an address may name, as the domain lists them.
fn country_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(domain::ISO_COUNTRIES.split(' ')))
        .description(Some("ISO 3166-1 alpha-2"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantity(json: &str) -> Option<i64> {
        serde_json::from_str::<ItemBody>(&format!(r#"{{"sku": "MUG-001", "quantity": {json}}}"#))
            .ok()
            .map(|item| item.quantity)
    }

    /// The attributes take literals only: the document's bounds are checked against the domain's.
    #[test]
    fn the_documented_bounds_are_the_domains() {
        use utoipa::PartialSchema;
        let order = serde_json::to_value(PlaceOrderBody::schema()).unwrap_or_default();
        assert_eq!(order["properties"]["items"]["maxItems"], domain::MAX_ITEMS);
        let item = serde_json::to_value(ItemBody::schema()).unwrap_or_default();
        assert_eq!(
            item["properties"]["quantity"]["maximum"],
            domain::MAX_QUANTITY
        );
        let address = serde_json::to_value(AddressBody::schema()).unwrap_or_default();
        assert_eq!(address["properties"]["city"]["maxLength"], domain::MAX_TEXT);
    }

    #[test]
    fn a_quantity_is_any_whole_number_json_can_write() {
        assert_eq!(quantity("2"), Some(2));
        assert_eq!(quantity("2.0"), Some(2));
        assert_eq!(quantity("-3"), Some(-3), "refused later, by its range");
        assert_eq!(quantity("2.5"), None);
        assert_eq!(quantity("1e300"), None);
        assert_eq!(quantity("\"2\""), None);
    }
}
