//! The OpenAPI 3.1 document of the REST API, generated from the handlers' `#[utoipa::path]` annotations
//! and the request, response and error types ([`document`]), and served unauthenticated at
//! `GET /openapi.json`. JSON-RPC (`POST /`) is not in it: it is its own protocol, one method per call.
//!
//! `crates/ethkms-server/openapi.json` is a committed copy that a test compares with [`document`], so that
//! every change to the API shows in review; `cargo xtask schemathesis` tests a running server against it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ethkms-server",
        description = "REST withdrawals of the ethkms signing service (keys in AWS KMS). Clients authenticate \
                       with `Authorization: Bearer <token>`; every error is `{\"error\": {\"kind\", \"message\", …}}`."
    ),
    paths(
        super::api::post,
        super::api::get,
        super::api::cancel,
        crate::approvals::api::decide,
        crate::approvals::api::list,
        crate::approvals::allowlist::propose,
        crate::approvals::allowlist::list,
        crate::approvals::allowlist::decide,
        crate::approvals::allowlist::remove,
        crate::deposits::api::post_address,
        crate::deposits::api::list,
        crate::webhooks::api::deliveries,
        crate::probes::healthz,
        crate::probes::ready,
        crate::probes::metrics,
        openapi_json,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "withdrawals", description = "Idempotent withdrawals, paid at most once"),
        (name = "approvals", description = "Four-eyes approvals of large withdrawals: approvers' EIP-712 decisions"),
        (name = "allowlist", description = "Time-locked additions to a key's destination allowlist, approved by its approvers"),
        (name = "deposits", description = "Customer deposit addresses and the deposits found to them"),
        (name = "webhooks", description = "The delivery of the client's webhook events"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct Document;

/// The `bearer` security scheme: a client's token, whose SHA-256 is in the server's configuration.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("A client's token (`clients.NAME.token_sha256` holds its SHA-256)".to_owned());
        openapi.components.get_or_insert_default().add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The OpenAPI document of the REST API.
#[must_use]
pub fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

/// The document as served: pretty JSON with a final newline, as committed in `openapi.json`.
///
/// # Panics
/// Never: the document is plain data, which always serialises.
#[must_use]
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

/// This document
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document of the REST API", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.get_or_init(document_json).as_str())
}
