//! Placing an order, free of I/O: what makes a request valid (lengths, quantities, countries,
//! payment methods), for whom it is placed, and what it costs at the catalog's prices.

use std::collections::{BTreeMap, BTreeSet};

use shared_events::{OrderLine, ShippingAddress};

/// The currency of the catalog's prices, and so of every order (ISO 4217).
pub const CURRENCY: &str = "EUR";
pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 1_000;
pub const MAX_TEXT: usize = 200;
/// Payment methods the shop accepts (the test card that always fails among them).
pub const PAYMENT_METHODS: &[&str] = shared_events::payment_methods::ALL;

/// Why an order cannot be placed for the customer a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerRefused {
    /// The body names a customer other than the token's subject.
    NotTheCaller,
    /// No token (authentication disabled) and no `customer_id` either.
    Missing,
}

/// Whose order a request places: the caller's (`subject`, from the token; a `claimed`
/// `customer_id`, if sent, must be the same), or, with authentication disabled, the one the
/// body claims.
pub fn customer_of(
    subject: Option<&str>,
    claimed: Option<&str>,
) -> Result<String, CustomerRefused> {
    match (subject, claimed.map(str::trim)) {
        (Some(subject), Some(claimed)) if claimed != subject => Err(CustomerRefused::NotTheCaller),
        (Some(subject), _) => Ok(subject.to_owned()),
        (None, Some(claimed)) => Ok(claimed.to_owned()),
        (None, None) => Err(CustomerRefused::Missing),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedItem {
    pub sku: String,
    pub quantity: i64,
}

/// A request to place an order, as received (before any check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub customer_id: String,
    pub items: Vec<RequestedItem>,
    pub payment_method: String,
    pub shipping_address: ShippingAddress,
}

/// The first text field of the request that Postgres could not store: a `text` column refuses
/// the NUL character (JSON can carry it as `\u0000`).
fn unstorable_field(request: &PlaceOrder) -> Option<&'static str> {
    let address = &request.shipping_address;
    let mut fields = vec![
        ("customer_id", request.customer_id.as_str()),
        ("payment_method", request.payment_method.as_str()),
        ("shipping_address.name", address.name.as_str()),
        ("shipping_address.line1", address.line1.as_str()),
        ("shipping_address.city", address.city.as_str()),
        ("shipping_address.postal_code", address.postal_code.as_str()),
        ("shipping_address.country", address.country.as_str()),
    ];
    fields.extend(
        request
            .items
            .iter()
            .map(|item| ("items.sku", item.sku.as_str())),
    );
    fields
        .into_iter()
        .find(|(_, value)| value.contains('\0'))
        .map(|(field, _)| field)
}

/// Checks everything that needs no database; returns the normalized request.
pub fn validate(mut request: PlaceOrder) -> Result<PlaceOrder, Invalid> {
    if let Some(field) = unstorable_field(&request) {
        return Err(invalid(
            "invalid_body",
            format!("{field} contains a NUL character (\\u0000), which cannot be stored"),
        ));
    }
    request.customer_id = request.customer_id.trim().to_owned();
    if request.customer_id.is_empty() || request.customer_id.chars().count() > MAX_TEXT {
        return Err(invalid(
            "invalid_customer_id",
            format!("customer_id must be 1 to {MAX_TEXT} characters"),
        ));
    }
    if request.items.is_empty() {
        return Err(invalid("empty_items", "an order needs at least one item"));
    }
    if request.items.len() > MAX_ITEMS {
        return Err(invalid(
            "too_many_items",
            format!(
                "an order holds at most {MAX_ITEMS} items, got {}",
                request.items.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for item in &mut request.items {
        item.sku = item.sku.trim().to_owned();
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(invalid(
                "invalid_quantity",
                format!(
                    "quantity of {:?} must be between 1 and {MAX_QUANTITY}, got {}",
                    item.sku, item.quantity
                ),
            ));
        }
        if !seen.insert(item.sku.clone()) {
            return Err(invalid(
                "duplicate_sku",
                format!(
                    "{:?} is listed twice; put the total quantity on one line",
                    item.sku
                ),
            ));
        }
    }
    if !PAYMENT_METHODS.contains(&request.payment_method.as_str()) {
        return Err(invalid(
            "invalid_payment_method",
            format!("payment_method must be one of {PAYMENT_METHODS:?}"),
        ));
    }
    let address = &mut request.shipping_address;
    for (field, value) in [
        ("name", &mut address.name),
        ("line1", &mut address.line1),
        ("city", &mut address.city),
        ("postal_code", &mut address.postal_code),
    ] {
        *value = value.trim().to_owned();
        if value.is_empty() || value.chars().count() > MAX_TEXT {
            return Err(invalid(
                "invalid_address",
                format!("shipping_address.{field} must be 1 to {MAX_TEXT} characters"),
            ));
        }
    }
    address.country = address.country.trim().to_ascii_uppercase();
    if !is_iso_country(&address.country) {
        return Err(invalid(
            "invalid_country",
            format!(
                "{:?} is not an ISO 3166-1 alpha-2 country code",
                address.country
            ),
        ));
    }
    Ok(request)
}

/// The customer's reason for cancelling, as given (trimmed, not empty): at most [`MAX_TEXT`]
/// characters that Postgres can store.
pub fn validate_cancellation_note(note: &str) -> Result<(), Invalid> {
    if note.contains('\0') {
        return Err(invalid(
            "invalid_body",
            "reason contains a NUL character (\\u0000), which cannot be stored",
        ));
    }
    if note.chars().count() > MAX_TEXT {
        return Err(invalid(
            "invalid_reason",
            format!("reason must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(())
}

/// Prices a validated request from the catalog (`sku -> price_cents`).
pub fn price(
    request: &PlaceOrder,
    catalog: &BTreeMap<String, i64>,
) -> Result<(Vec<OrderLine>, i64), Invalid> {
    let mut lines = Vec::with_capacity(request.items.len());
    let mut total: i64 = 0;
    for item in &request.items {
        let Some(&unit_price_cents) = catalog.get(&item.sku) else {
            return Err(invalid(
                "unknown_sku",
                format!("no product with sku {:?}", item.sku),
            ));
        };
        let quantity = u32::try_from(item.quantity)
            .map_err(|_| invalid("invalid_quantity", "quantity out of range"))?;
        total = unit_price_cents
            .checked_mul(item.quantity)
            .and_then(|line_total| total.checked_add(line_total))
            .ok_or_else(|| invalid("total_too_large", "the order total is too large"))?;
        lines.push(OrderLine {
            sku: item.sku.clone(),
            quantity,
            unit_price_cents,
        });
    }
    Ok((lines, total))
}

/// ISO 3166-1 alpha-2, all 249 officially assigned codes.
pub const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH \
BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR \
GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR \
KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV \
MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE \
RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL \
TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

pub fn is_iso_country(code: &str) -> bool {
    code.len() == 2 && ISO_COUNTRIES.split(' ').any(|c| c == code)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shared_events::ShippingAddress;

    use super::*;

    fn request() -> PlaceOrder {
        PlaceOrder {
            customer_id: " cust-1 ".to_owned(),
            items: vec![RequestedItem {
                sku: "MUG-001".to_owned(),
                quantity: 2,
            }],
            payment_method: "card".to_owned(),
            shipping_address: ShippingAddress {
                name: "Ada".to_owned(),
                line1: "1 Road".to_owned(),
                city: "London".to_owned(),
                postal_code: "N1".to_owned(),
                country: "gb".to_owned(),
            },
        }
    }

    #[test]
    fn a_good_request_is_normalized() {
        let valid = validate(request()).expect("valid");
        assert_eq!(valid.customer_id, "cust-1");
        assert_eq!(valid.shipping_address.country, "GB");
    }

    #[test]
    fn each_bad_field_has_its_code() {
        type Breakage = Box<dyn Fn(&mut PlaceOrder)>;
        let cases: Vec<(&str, Breakage)> = vec![
            (
                "invalid_customer_id",
                Box::new(|r| r.customer_id = "  ".into()),
            ),
            ("empty_items", Box::new(|r| r.items.clear())),
            (
                "too_many_items",
                Box::new(|r| {
                    r.items = (0..=MAX_ITEMS)
                        .map(|i| RequestedItem {
                            sku: format!("S{i}"),
                            quantity: 1,
                        })
                        .collect()
                }),
            ),
            ("invalid_quantity", Box::new(|r| r.items[0].quantity = 0)),
            ("invalid_quantity", Box::new(|r| r.items[0].quantity = -3)),
            (
                "invalid_quantity",
                Box::new(|r| r.items[0].quantity = MAX_QUANTITY + 1),
            ),
            (
                "duplicate_sku",
                Box::new(|r| r.items.push(r.items[0].clone())),
            ),
            (
                "invalid_payment_method",
                Box::new(|r| r.payment_method = "iou".into()),
            ),
            (
                "invalid_address",
                Box::new(|r| r.shipping_address.city = String::new()),
            ),
            (
                "invalid_country",
                Box::new(|r| r.shipping_address.country = "XX".into()),
            ),
        ];
        for (code, break_it) in cases {
            let mut bad = request();
            break_it(&mut bad);
            assert_eq!(validate(bad).map_err(|e| e.code), Err(code));
        }
    }

    #[test]
    fn a_nul_character_in_any_text_field_is_refused_as_unstorable() {
        type Breakage = Box<dyn Fn(&mut PlaceOrder)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("customer_id", Box::new(|r| r.customer_id = "ada\0".into())),
            (
                "payment_method",
                Box::new(|r| r.payment_method = "\0".into()),
            ),
            (
                "items.sku",
                Box::new(|r| r.items[0].sku = "MUG-\u{0}01".into()),
            ),
            ("name", Box::new(|r| r.shipping_address.name = "A\0".into())),
            (
                "line1",
                Box::new(|r| r.shipping_address.line1 = "\0x".into()),
            ),
            (
                "city",
                Box::new(|r| r.shipping_address.city = "Lon\0don".into()),
            ),
            (
                "postal_code",
                Box::new(|r| r.shipping_address.postal_code = "\0".into()),
            ),
            (
                "country",
                Box::new(|r| r.shipping_address.country = "G\0".into()),
            ),
        ];
        for (field, break_it) in cases {
            let mut bad = request();
            break_it(&mut bad);
            let refused = validate(bad).expect_err(field);
            assert_eq!(refused.code, "invalid_body", "{field}");
            assert!(
                refused.message.contains(field),
                "{field}: {}",
                refused.message
            );
        }
    }

    #[test]
    fn pricing_uses_the_catalog_and_refuses_unknown_skus() {
        let catalog = BTreeMap::from([("MUG-001".to_owned(), 1250)]);
        let (lines, total) = price(&validate(request()).expect("valid"), &catalog).expect("priced");
        assert_eq!(total, 2500);
        assert_eq!(lines[0].unit_price_cents, 1250);
        let mut unknown = request();
        unknown.items[0].sku = "NOPE".into();
        assert_eq!(
            price(&unknown, &catalog).map_err(|e| e.code),
            Err("unknown_sku")
        );
    }

    #[test]
    fn a_cancellation_reason_is_short_and_storable() {
        assert_eq!(validate_cancellation_note("changed my mind"), Ok(()));
        assert_eq!(validate_cancellation_note(&"é".repeat(MAX_TEXT)), Ok(()));
        assert_eq!(
            validate_cancellation_note(&"x".repeat(MAX_TEXT + 1)).map_err(|e| e.code),
            Err("invalid_reason")
        );
        assert_eq!(
            validate_cancellation_note("a\0b").map_err(|e| e.code),
            Err("invalid_body")
        );
    }

    #[test]
    fn the_country_list_is_complete() {
        assert_eq!(ISO_COUNTRIES.split(' ').count(), 249);
        assert!(is_iso_country("AQ"));
        assert!(!is_iso_country("UK"));
    }

    #[test]
    fn an_order_is_placed_for_the_caller_and_only_for_them() {
        assert_eq!(customer_of(Some("ada"), None), Ok("ada".to_owned()));
        assert_eq!(
            customer_of(Some("ada"), Some(" ada ")),
            Ok("ada".to_owned())
        );
        assert_eq!(
            customer_of(Some("ada"), Some("bob")),
            Err(CustomerRefused::NotTheCaller)
        );
        assert_eq!(customer_of(None, Some("bob")), Ok("bob".to_owned()));
        assert_eq!(customer_of(None, None), Err(CustomerRefused::Missing));
    }
}
