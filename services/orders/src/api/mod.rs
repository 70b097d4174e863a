//! The Orders HTTP API (docs/architecture.md, "The HTTP APIs"): placing an order (`place`, and
//! what it is sent: `body`), reading orders (`read`), cancelling one (`cancel`), on the state
//! every route shares (`state`). Each route is registered with its OpenAPI description
//! (`docs/openapi/orders.json`).

mod body;
mod cancel;
mod place;
mod read;
mod state;

use axum::extract::DefaultBodyLimit;
use service_kit::ApiContext;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::state::{Api, BodyLimit, Deadline};
use crate::{admission::Admission, metrics::SHED, settings::Settings};

/// The API's description alone (what `GET /openapi.json` serves, with the kit's part).
pub(crate) fn described() -> utoipa::openapi::OpenApi {
    router().into_openapi()
}

/// The routes and their description, before they are given their state.
fn router() -> OpenApiRouter<Api> {
    OpenApiRouter::default()
        .routes(routes!(read::list_orders, place::place_order))
        .routes(routes!(read::get_order))
        .routes(routes!(cancel::cancel_order))
        .routes(routes!(read::timeline))
        .routes(routes!(read::list_products))
}

pub fn routes(api: ApiContext, settings: Settings) -> OpenApiRouter {
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
    router()
        // The limit is enforced by `Bytes` below, which reports it as our problem.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
