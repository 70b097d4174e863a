//! Orders' own metrics, beside the kit's: admission control, the deadline, cancellations and
//! how long each saga took.

use service_kit::{Metric, MetricKind};

pub(crate) const SHED: &str = "shop_orders_shed_total";
pub(crate) const EXPIRED: &str = "shop_orders_expired_total";
pub(crate) const CANCEL_REQUESTS: &str = "shop_orders_cancel_requests_total";
/// Placed → confirmed or cancelled, in seconds (a histogram).
pub(crate) const SAGA_DURATION: &str = "shop_saga_duration_seconds";

pub const METRICS: &[Metric] = &[
    Metric {
        name: SHED,
        kind: MetricKind::Counter,
        help: "New orders refused (503) because MAX_PENDING_ORDERS were not yet settled",
    },
    Metric {
        name: EXPIRED,
        kind: MetricKind::Counter,
        help: "Orders cancelled because they were still open at their deadline (ORDER_DEADLINE_MS)",
    },
    Metric {
        name: CANCEL_REQUESTS,
        kind: MetricKind::Counter,
        help: "POST /orders/{id}/cancel answered, by outcome: accepted, already_cancelled, refused",
    },
    Metric {
        name: SAGA_DURATION,
        kind: MetricKind::Histogram,
        help: "Time from an order's placement to its confirmation or cancellation, by outcome",
    },
];
