//! # Notifications
//!
//! - **Subscribes to** OrderConfirmed, OrderCancelled, PaymentRefunded: each is one notice
//!   to the customer.
//! - **Owns** `notifications.notifications`; serves `GET /notifications?order_id=…` so anyone
//!   can check that a customer heard each thing exactly once.
//! - **Announces** nothing.

pub mod domain;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    Json,
    extract::{Query, State},
};
use chrono::{DateTime, Utc};
use domain::Notice;
use serde::{Deserialize, Serialize};
use service_kit::{
    ApiContext, ApiError, BoundService, Config, Db, HandlerError, Routes, Service, ServiceSpec,
    auth::{OPERATOR_SCOPE, Operator},
    problem::Problem,
    requests,
};
use shared_events::{OrderCancelled, OrderConfirmed, PaymentRefunded, participants};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8084);

/// The environment variables it reads for itself: none beyond the kit's.
pub const VARIABLES: &[&str] = &[];

/// What notifications reacts to, and how. This table also declares the queue's bindings.
pub fn routes() -> Routes<Notifications> {
    Routes::<Notifications>::new()
        .on::<OrderConfirmed>(|n, ctx, event| {
            Box::pin(n.send(ctx, event.order_id, domain::order_confirmed(event.order_id)))
        })
        .on::<OrderCancelled>(|n, ctx, event| {
            Box::pin(n.send(
                ctx,
                event.order_id,
                domain::order_cancelled(event.order_id, &event.reason),
            ))
        })
        .on::<PaymentRefunded>(|n, ctx, event| {
            Box::pin(n.send(
                ctx,
                event.order_id,
                domain::payment_refunded(event.order_id, event.amount_cents),
            ))
        })
}

/// Its API: the notices sent, for operators.
fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::default().routes(routes!(list))
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> service_kit::openapi::Document {
    let name = <participants::Notifications as shared_events::Participant>::NAME;
    service_kit::openapi::document(name, Some(router().into_openapi()))
}

/// Binds the service's HTTP listener; `run` the result to start it.
pub async fn bind(config: Config) -> Result<BoundService, service_kit::Error> {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("../../migrations/notifications"),
        routes: routes(),
        state: Notifications,
        http: Some(Box::new(|api| router().with_state(api))),
        guards_customer_data: true,
        background: None,
        metrics: &[],
    };
    service_kit::bind(config, spec).await
}

pub struct Notifications;

impl Service for Notifications {
    type Participant = participants::Notifications;
}

/// A handler's context: the transaction, and notifications's own events to announce.
type Ctx = service_kit::Ctx<participants::Notifications>;

impl Notifications {
    async fn send(
        &self,
        ctx: &mut Ctx,
        order_id: Uuid,
        notice: Notice,
    ) -> Result<(), HandlerError> {
        let message_id = ctx.message_id();
        let inserted = sqlx::query(
            "INSERT INTO notifications.notifications (order_id, kind, message, message_id)
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id, kind) DO NOTHING",
        )
        .bind(order_id)
        .bind(notice.kind)
        .bind(&notice.message)
        .bind(message_id)
        .execute(ctx.db())
        .await?
        .rows_affected();
        if inserted == 1 {
            // The delivery channel (mail, SMS) would go here; the record is what we keep.
            tracing::info!(kind = notice.kind, message = %notice.message, "customer notified");
        } else {
            tracing::warn!(
                kind = notice.kind,
                "customer already told this; not sending again"
            );
        }
        Ok(())
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this order's notices.
    order_id: Option<Uuid>,
}

/// A notice sent to a customer.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct SentNotice {
    order_id: Uuid,
    kind: String,
    message: String,
    message_id: Uuid,
    sent_at: DateTime<Utc>,
}

/// The notices sent for one order, or the latest 100: customers' notices, for operators only.
#[utoipa::path(get, path = "/notifications", tag = "notifications",
    security(("bearer" = [OPERATOR_SCOPE])), params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<SentNotice>),
        (status = 400, description = "`order_id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
    ))]
async fn list(
    State(db): State<Db>,
    _operator: Operator,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SentNotice>>, ApiError> {
    let query = requests::query(query)?;
    let notices = sqlx::query_as(
        "SELECT order_id, kind, message, message_id, sent_at FROM notifications.notifications
         WHERE $1::uuid IS NULL OR order_id = $1 ORDER BY id DESC LIMIT 100",
    )
    .bind(query.order_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(Json(notices))
}
