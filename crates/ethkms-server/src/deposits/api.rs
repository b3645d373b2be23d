//! The deposit routes: `POST /v1/deposit-addresses` (a customer reference's address, the same every
//! time) and `GET /v1/deposits?since=N` (the deposits whose status changed after change `N`), for clients
//! with the `deposits` method on the sweeping key. Errors are the REST API's ([`ApiError`]).

// utoipa's expansion of `params(DepositQuery)` names the type with a path.
#![allow(unused_qualifications)]

use std::sync::Arc;

use alloy_primitives::B256;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Deposits;
use crate::app::Service;
use crate::config::DEPOSITS_METHOD;
use crate::journal::{DepositAddressRow, DepositRow};
use crate::policy::Asset;
use crate::withdrawals::api::{ApiError, ErrorBody, ErrorKind, bad_request, client, error, journal_error, unreadable};

/// The most deposits one `GET /v1/deposits` answers.
const MAX_LIMIT: usize = 1_000;

/// The body of `POST /v1/deposit-addresses`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DepositAddressRequest {
    /// The customer reference the address is derived from: 1 to 200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]+$", example = "customer-8812")]
    reference: String,
}

/// A customer's deposit address.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DepositAddress)]
pub(crate) struct DepositAddressView {
    /// The customer reference.
    reference: String,
    /// The address (EIP-55): send ether or a listed token to it.
    address: String,
    /// When it was first handed out, Unix milliseconds.
    created_ms: u64,
}

impl From<DepositAddressRow> for DepositAddressView {
    fn from(row: DepositAddressRow) -> Self {
        Self { reference: row.reference, address: row.address.to_string(), created_ms: row.created_ms }
    }
}

/// A deposit.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Deposit)]
pub(crate) struct DepositView {
    /// The number of its last change: ask `since` this to read only what changed after.
    change: u64,
    /// Its transaction; for ether found by a balance check (sent from inside a contract to an address not
    /// yet deployed), an id instead: Keccak-256 of `ethkms:balance`, the address and the block number.
    #[schema(value_type = String)]
    tx_hash: B256,
    /// Its log's index in the block (`null`: the transaction's own value).
    log_index: Option<u64>,
    /// The deposit address (EIP-55).
    address: String,
    /// The customer reference of the address.
    reference: Option<String>,
    /// `ETH`, or the token's contract address.
    asset: String,
    /// Wei, or the token's smallest unit, in decimal.
    amount: String,
    /// Who sent it (EIP-55); the zero address for a token's mint and for ether found by a balance check.
    from: String,
    /// The block it is in (or was in).
    block_number: u64,
    /// That block's hash.
    #[schema(value_type = String)]
    block_hash: B256,
    /// `pending` (not deep enough yet), `confirmed` (credit it), `removed` (its block left the chain first:
    /// never credit it), `reversed` (its block left the chain after it was confirmed).
    status: String,
    /// Where its value is: `unswept` (at the deposit address), `sweeping` (a sweep under way), `swept`
    /// (with the treasury).
    sweep_status: String,
    /// The sweep that moves (or moved) it, if any.
    sweep_id: Option<String>,
    /// That sweep's transaction: mined, or the latest signed.
    #[schema(value_type = Option<String>)]
    sweep_tx_hash: Option<B256>,
}

impl From<DepositRow> for DepositView {
    fn from(row: DepositRow) -> Self {
        Self {
            change: row.change,
            tx_hash: row.tx_hash,
            log_index: row.log_index,
            address: row.address.to_string(),
            reference: row.reference,
            asset: match row.asset {
                Asset::Ether => "ETH".to_owned(),
                Asset::Token(token) => token.to_string(),
            },
            amount: row.amount.to_string(),
            from: row.sender.to_string(),
            block_number: row.block_number,
            block_hash: row.block_hash,
            status: row.status.as_str().to_owned(),
            sweep_status: row.sweep_status.as_str().to_owned(),
            sweep_id: row.sweep,
            sweep_tx_hash: row.sweep_tx_hash,
        }
    }
}

/// What `GET /v1/deposits` answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DepositList {
    /// The deposits, in the order of their changes.
    deposits: Vec<DepositView>,
    /// The change to ask `since` next (the last one here, or `since` if none).
    next: u64,
}

/// The query of `GET /v1/deposits`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DepositQuery {
    /// Only deposits whose last change came after this one (0: from the start).
    #[param(minimum = 0)]
    since: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The deposits, if this client may see them.
fn deposits_of<'a>(service: &'a Service, headers: &HeaderMap) -> Result<&'a Arc<Deposits>, ApiError> {
    let (_, client) = client(service, headers)?;
    let deposits = service
        .deposits
        .as_ref()
        .ok_or_else(|| error(ErrorKind::NotFound, "this service has no deposit addresses (no [deposits] section)"))?;
    if !client.may(DEPOSITS_METHOD, &deposits.settings.key) {
        return Err(error(ErrorKind::Forbidden, "this client may not use deposit addresses"));
    }
    Ok(deposits)
}

/// Get a customer's deposit address
///
/// Derives the address of the reference (the CREATE2 address of its forwarder under the configured
/// factory and treasury) and keeps it in the journal: the same reference answers the same address, always.
#[utoipa::path(
    post,
    path = "/v1/deposit-addresses",
    operation_id = "create_deposit_address",
    tag = "deposits",
    security(("bearer" = [])),
    request_body(content = DepositAddressRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The reference's deposit address", body = DepositAddressView),
        (status = 400, description = "`invalid_request`: the body is not a valid reference", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: this client may not use deposit addresses", body = ErrorBody),
        (status = 404, description = "`not_found`: the service has no deposit addresses", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was sent too slowly", body = ErrorBody),
        (status = 413, description = "`body_too_large`: more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal` or `overloaded`: nothing was stored; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn post_address(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DepositAddressView>, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let deposits = deposits_of(&service, &headers)?;
    let body = body.map_err(|rejection| unreadable(&rejection))?;
    let request: DepositAddressRequest = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("not a deposit address request: {error}")))?;
    let reference = ethkms_deposits::Reference::new(&request.reference).map_err(bad_request)?;
    let address = deposits.addresses.address(&reference);
    let row = deposits.store.deposit_address(reference.as_str(), address, client_name).await.map_err(journal_error)?;
    Ok(Json(row.into()))
}

/// List deposits
///
/// The deposits to the service's deposit addresses whose status changed after change `since`, in the
/// order of their changes: poll with the `next` of the last answer to see each deposit arrive (`pending`),
/// become final (`confirmed`), or be taken back by a reorg (`removed`).
#[utoipa::path(
    get,
    path = "/v1/deposits",
    operation_id = "list_deposits",
    tag = "deposits",
    security(("bearer" = [])),
    params(DepositQuery),
    responses(
        (status = 200, description = "The deposits changed after `since`", body = DepositList),
        (status = 400, description = "`invalid_request`: the query is not valid", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: this client may not use deposit addresses", body = ErrorBody),
        (status = 404, description = "`not_found`: the service has no deposit addresses", body = ErrorBody),
        (status = 503, description = "`journal` or `overloaded`: retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    query: Result<Query<DepositQuery>, QueryRejection>,
) -> Result<Json<DepositList>, ApiError> {
    let deposits = deposits_of(&service, &headers)?;
    let Query(query) = query.map_err(|rejection| bad_request(format!("the query: {}", rejection.body_text())))?;
    let since = u64::try_from(query.since.unwrap_or(0)).map_err(|_| bad_request("`since` must not be negative"))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("`limit` must be 1 to {MAX_LIMIT}")));
    }
    let rows = deposits.store.deposits(since, limit).await.map_err(journal_error)?;
    let next = rows.last().map_or(since, |row| row.change);
    Ok(Json(DepositList { deposits: rows.into_iter().map(DepositView::from).collect(), next }))
}
