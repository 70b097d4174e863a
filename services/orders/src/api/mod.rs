//! The Orders HTTP API (docs/architecture.md, "The HTTP APIs"): placing an order (`place`),
//! reading orders (`read`), cancelling one (`cancel`), on the state every route shares
//! (`state`).

mod cancel;
mod place;
mod read;
mod state;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use service_kit::ApiContext;

use self::{
    cancel::cancel_order,
    place::place_order,
    read::{get_order, list_orders, list_products, timeline},
    state::{Api, BodyLimit, Deadline},
};
use crate::{admission::Admission, metrics::SHED, settings::Settings};

pub fn routes(api: ApiContext, settings: Settings) -> Router {
    // Exported from the start (as 0), so a dashboard shows "none shed" rather than no data.
    api.metrics.add(SHED, &[], 0);
    let body_limit = api.config.http_max_body_bytes;
    let state = Api {
        auth: api.auth,
        db: api.db,
        body_limit: BodyLimit(body_limit),
        deadline: Deadline(settings.order_deadline),
        metrics: api.metrics.clone(),
        admission: Admission::new(settings.max_pending_orders, api.metrics),
    };
    Router::new()
        .route("/orders", get(list_orders).post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/orders/{id}/timeline", get(timeline))
        .route("/products", get(list_products))
        // The limit is enforced by `Bytes` below, which reports it as our JSON error.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
