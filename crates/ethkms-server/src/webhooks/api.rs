//! `GET /v1/webhooks/deliveries`: the authenticated client's webhook events and their delivery — state,
//! attempts, next attempt, last error — newest first, optionally only those `pending`, `failing` or
//! `delivered`.

// utoipa's expansion of `params(DeliveryQuery)` names the type with a path.
#![allow(unused_qualifications)]

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::Service;
use crate::journal::{DeliveryState, WebhookEvent};
use crate::withdrawals::api::{ApiError, ErrorKind, bad_request, client, error, journal_error};

/// At most this many deliveries in one answer.
const MAX_LIMIT: usize = 1000;

/// One event and its delivery.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub(crate) struct DeliveryView {
    /// The event's id (the `Ethkms-Event-Id` header and the body's `id`): the same at every attempt.
    event_id: String,
    /// What happened: `withdrawal.` or `deposit.` and the new status.
    #[serde(rename = "type")]
    event_type: String,
    /// `withdrawal` or `deposit`.
    subject_type: String,
    /// The withdrawal's id, or the deposit's `TX_HASH:LOG_INDEX` (-1: the transaction's own value).
    subject: String,
    /// The event's number among its subject's, from 1 (sent in this order).
    sequence: u64,
    /// When the change happened, Unix milliseconds.
    created_ms: u64,
    /// `pending` (not tried yet), `failing` (tried, not acknowledged: tried again at `next_attempt_ms`) or
    /// `delivered` (acknowledged with a 2xx answer).
    status: DeliveryState,
    /// Attempts made.
    attempts: u32,
    /// When it is tried next (`null` once delivered), Unix milliseconds; an event also waits for the
    /// subject's earlier events.
    next_attempt_ms: Option<u64>,
    /// Why the last attempt failed: `HTTP <status>`, or a transport error (timed out, connection refused…).
    last_error: Option<String>,
    /// When it was acknowledged, Unix milliseconds.
    delivered_ms: Option<u64>,
}

impl From<WebhookEvent> for DeliveryView {
    fn from(event: WebhookEvent) -> Self {
        Self {
            next_attempt_ms: (event.state != DeliveryState::Delivered)
                .then_some(event.next_attempt_ms.max(event.created_ms)),
            event_id: event.id,
            event_type: event.event_type,
            subject_type: event.subject_type,
            subject: event.subject,
            sequence: event.sequence,
            created_ms: event.created_ms,
            status: event.state,
            attempts: event.attempts,
            last_error: event.last_error,
            delivered_ms: event.delivered_ms,
        }
    }
}

/// What `GET /v1/webhooks/deliveries` answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    /// The client's events, newest first.
    deliveries: Vec<DeliveryView>,
}

/// The query of `GET /v1/webhooks/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryQuery {
    /// Only events in this state.
    status: Option<DeliveryState>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// List webhook deliveries
///
/// The events of this client's webhook — every change of its withdrawals and deposits — newest first, each
/// with its delivery: whether it was acknowledged, how often it was tried, when it is tried next and why
/// the last attempt failed. `status=failing` lists what the receiver has not accepted.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    security(("bearer" = [])),
    params(DeliveryQuery),
    responses(
        (status = 200, description = "The client's events and their delivery", body = DeliveryList),
        (status = 400, description = "`invalid_request`: the query is not valid", body = crate::withdrawals::api::ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = crate::withdrawals::api::ErrorBody),
        (status = 404, description = "`not_found`: this client has no webhook", body = crate::withdrawals::api::ErrorBody),
        (status = 503, description = "`journal` or `overloaded`: retry after `Retry-After`", body = crate::withdrawals::api::ErrorBody),
    )
)]
pub(crate) async fn deliveries(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let Query(query) = query.map_err(|rejection| bad_request(format!("the query: {}", rejection.body_text())))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("`limit` must be 1 to {MAX_LIMIT}")));
    }
    let webhooks = service
        .webhooks
        .as_ref()
        .filter(|_| client.webhook.is_some())
        .ok_or_else(|| error(ErrorKind::NotFound, "this client has no webhook (`webhook` in its configuration)"))?;
    let events = webhooks.store.webhook_events(client_name, query.status, limit).await.map_err(journal_error)?;
    Ok(Json(DeliveryList { deliveries: events.into_iter().map(DeliveryView::from).collect() }))
}
