//! What an orchestrator and a scraper ask, without a token: `/healthz` (alive), `/readyz` (ready to
//! sign: journal recovered, engine not halted, node answering; checked at most every few seconds) and
//! `/metrics` (`OpenMetrics`, with the node's latest block read at most once a second).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_provider::Provider;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::Service;

/// Liveness
///
/// `ok` while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String, example = "ok"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// How long `/readyz` reuses its check of the node and the journal.
const READY_FOR: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for the journal's answer.
const READY_WAIT: Duration = Duration::from_secs(2);

/// Readiness
///
/// Not ready while the engine checks the node's chain or is halted, or while the journal (the replicas'
/// database) or the node does not answer (checked at most every 5 s). No KMS request per probe (the keys were opened at start; key-service trouble shows in
/// `ethkms_kms_errors_total`), and a bare body: no upstream error text, which can carry URLs and account
/// details.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String, example = "ready"),
        (status = 503, description = "Not ready, and why", content_type = "text/plain", body = String),
    )
)]
pub(crate) async fn ready(State(service): State<Arc<Service>>) -> Response {
    let not_ready =
        |what: &'static str| (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}")).into_response();
    if let Some(engine) = &service.engine {
        if engine.halted().is_some() {
            return not_ready("halted (see the log)");
        }
        if !engine.is_recovered() {
            return not_ready("recovering the withdrawal journal");
        }
    }
    let cached = *service.node_checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (node_ok, journal_ok) = match cached {
        Some((at, node, journal)) if at.elapsed() < READY_FOR => (node, journal),
        _ => {
            let node = service.shared.manager.provider().get_chain_id().await.is_ok();
            // A replica without its database can answer nothing that matters: not ready.
            let journal = match &service.engine {
                Some(engine) => {
                    tokio::time::timeout(READY_WAIT, engine.journal.ping()).await.is_ok_and(|ping| ping.is_ok())
                }
                None => true,
            };
            *service.node_checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((Instant::now(), node, journal));
            (node, journal)
        }
    };
    if !journal_ok {
        return not_ready("the journal does not answer");
    }
    if node_ok { "ready".into_response() } else { not_ready("the upstream node does not answer") }
}

/// How long `/metrics` waits for the node's latest block before showing the last one seen.
const HEAD_WAIT: Duration = Duration::from_secs(2);

/// How often at most `/metrics` asks the node for its latest block: an unauthenticated scraper cannot
/// turn into a stream of node requests (as `/readyz` reuses its check).
const HEAD_EVERY: Duration = Duration::from_secs(1);

/// Metrics
///
/// Prometheus metrics in the OpenMetrics text format, with the node's latest block (number and hash) read
/// for the scrape, so that an outside system can pin the chain this service sees.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
pub(crate) async fn metrics(State(service): State<Arc<Service>>) -> Response {
    let due = {
        let mut asked = service.head_asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = asked.is_none_or(|at| at.elapsed() >= HEAD_EVERY);
        if due {
            *asked = Some(Instant::now());
        }
        due
    };
    if due {
        let latest = service.shared.manager.provider().get_block_by_number(alloy_eips::BlockNumberOrTag::Latest);
        if let Ok(Ok(Some(block))) = tokio::time::timeout(HEAD_WAIT, latest).await {
            service.shared.metrics.set_chain_head(block.header.number, &block.header.hash.to_string());
        }
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], service.shared.metrics.render()).into_response()
}
