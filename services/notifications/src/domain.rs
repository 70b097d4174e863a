//! What the customer is told, free of I/O.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: &'static str,
    pub message: String,
}

pub fn order_confirmed(order_id: Uuid) -> Notice {
    Notice {
        kind: "order_confirmed",
        message: format!("Good news: order {order_id} is confirmed and on its way."),
    }
}

pub fn order_cancelled(order_id: Uuid, reason: &str) -> Notice {
    let message = match reason {
        "customer_request" => format!("Order {order_id} is cancelled, as you asked."),
        "deadline_exceeded" => {
            format!("Sorry: order {order_id} could not be completed in time and is cancelled.")
        }
        failure => format!("Sorry: order {order_id} was cancelled ({failure})."),
    };
    Notice {
        kind: "order_cancelled",
        message,
    }
}

pub fn payment_refunded(order_id: Uuid, amount_cents: i64) -> Notice {
    Notice {
        kind: "payment_refunded",
        message: format!("We refunded {} for order {order_id}.", money(amount_cents)),
    }
}

/// Cents as a decimal amount, e.g. 4499 -> "44.99".
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(4499), "44.99");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-120), "-1.20");
    }

    #[test]
    fn notices_name_the_order_and_the_facts() {
        let id = Uuid::nil();
        assert_eq!(order_confirmed(id).kind, "order_confirmed");
        assert!(
            order_cancelled(id, "card declined")
                .message
                .contains("card declined")
        );
        assert!(payment_refunded(id, 4499).message.contains("44.99"));
        assert!(
            order_cancelled(id, "customer_request")
                .message
                .contains("as you asked")
        );
        assert!(
            order_cancelled(id, "deadline_exceeded")
                .message
                .contains("in time")
        );
    }
}
