//! The approval routes: `GET /v1/approvals` (the withdrawals waiting for approvals, of the keys a client
//! may approve for) and `POST /v1/withdrawals/{id}/approvals` (an approver's signed decision, carried by
//! such a client). A decision that does not count is answered with the reason: not an approver, a
//! signature over other content or for another chain (named field by field when the client sends what was
//! signed), a malformed signature, an approver deciding twice, a withdrawal expired or no longer pending.

use std::sync::Arc;

use alloy_primitives::{Address, Bytes, U256};
use axum::Json;
use axum::body::Bytes as Body;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::typed::{ApprovalContent, asset_address};
use crate::app::Service;
use crate::config::{APPROVALS_METHOD, ApprovalSettings};
use crate::journal::{ApprovalState, Decided, Decision, Withdrawal, now_ms};
use crate::shared::Key;
use crate::withdrawals::api::{
    ApiError, ErrorBody, ErrorKind, WithdrawalView, bad_request, client, engine, error, journal_error, path_id,
    unreadable,
};

/// A withdrawal's approvals, as the API shows them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApprovalView {
    /// Distinct approvals needed.
    quorum: u32,
    /// When it expires unapproved, Unix seconds.
    expiry: u64,
    /// The approvers who approved, in order.
    #[schema(value_type = Vec<String>)]
    approved_by: Vec<Address>,
    /// The approver who rejected it, if one did.
    #[schema(value_type = Option<String>)]
    rejected_by: Option<Address>,
    /// The EIP-712 message an approver signs to approve it (`eth_signTypedData_v4` JSON); with
    /// `message.approve` false, to reject it.
    #[schema(value_type = Object)]
    typed_data: serde_json::Value,
}

impl ApprovalView {
    pub(crate) fn new(key: &Key, withdrawal: &Withdrawal, state: &ApprovalState) -> Self {
        let decided = |approve: bool| state.decisions.iter().filter(move |decision| decision.approve == approve);
        Self {
            quorum: state.terms.quorum,
            expiry: state.terms.expires_ms / 1000,
            approved_by: decided(true).map(|decision| decision.approver).collect(),
            rejected_by: decided(false).map(|decision| decision.approver).next(),
            typed_data: super::content(key, withdrawal, &state.terms, true).typed_data(),
        }
    }
}

/// The view of `withdrawal` with its approvals, if it needed any.
pub(crate) async fn view_with_approvals(
    service: &Service,
    withdrawal: &Withdrawal,
) -> Result<WithdrawalView, ApiError> {
    let view = WithdrawalView::new(service, withdrawal);
    let needs = service.config.keys.get(&withdrawal.key).is_some_and(|key| key.approvals.is_some());
    let (Some(engine), Some(key), true) = (service.engine.as_ref(), service.shared.keys.get(&withdrawal.key), needs)
    else {
        return Ok(view);
    };
    let state = engine.journal.approval_state(&withdrawal.id).await.map_err(journal_error)?;
    Ok(view.with_approval(state.map(|state| ApprovalView::new(key, withdrawal, &state))))
}

/// Approve or reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DecisionKind {
    Approve,
    Reject,
}

/// An approver's decision on a withdrawal.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionRequest {
    /// The approver's address.
    #[schema(pattern = r"^0x([0-9a-f]{40}|[0-9A-F]{40})$", example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    approver: String,
    /// `approve` or `reject`.
    decision: DecisionKind,
    /// The approver's EIP-712 signature of the withdrawal's `approval.typed_data` (with `approve` as decided):
    /// 65 bytes, hexadecimal.
    #[schema(pattern = r"^0x[0-9a-fA-F]{130}$")]
    signature: String,
    /// What the approver signed, if it may differ: a signature that does not count is then answered with
    /// the field that differs.
    signed: Option<SignedContent>,
}

/// The message fields as an approver signed them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignedContent {
    #[serde(deserialize_with = "whole_number")]
    chain_id: u64,
    id: String,
    key: String,
    to: String,
    asset: String,
    amount: String,
    #[serde(deserialize_with = "whole_number")]
    expiry: u64,
}

/// A JSON number that is a whole number from 0 to 2^64 - 1, written as an integer or not (`11423.0`: JSON
/// makes no difference, and neither does the document's `integer`).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = serde_json::Number::deserialize(deserializer)?;
    value
        .as_u64()
        .or_else(|| {
            let float = value.as_f64().filter(|float| float.fract() == 0.0 && (0.0..1.8e19).contains(float))?;
            format!("{float:.0}").parse().ok()
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{value} is not a whole number from 0 to 2^64 - 1")))
}

/// Why `signature` over `ours` does not recover to `approver`: the first field of `signed` that differs,
/// or that the signature is someone else's.
fn mismatch(ours: &ApprovalContent, signed: Option<&SignedContent>, approver: Address, recovered: Address) -> String {
    let Some(signed) = signed else {
        return format!(
            "the signature does not recover to {approver} over this withdrawal's approval (chain {}, amount {}, \
             to {}, expiry {}): it was made over other content, for another chain, or by another key",
            ours.chain_id, ours.amount, ours.to, ours.expiry
        );
    };
    let amount = signed.amount.parse::<U256>().ok();
    let address = |text: &str| text.parse::<Address>().ok();
    let differs = [
        (
            signed.chain_id != ours.chain_id,
            format!("chain {}, but the withdrawal is on chain {}", signed.chain_id, ours.chain_id),
        ),
        (signed.id != ours.id, format!("withdrawal `{}`, not `{}`", signed.id, ours.id)),
        (
            address(&signed.key) != Some(ours.key),
            format!("key {}, but the withdrawal is from {}", signed.key, ours.key),
        ),
        (address(&signed.to) != Some(ours.to), format!("recipient {}, but the withdrawal pays {}", signed.to, ours.to)),
        (
            address(&signed.asset) != Some(asset_address(ours.asset)),
            format!("asset {}, but the withdrawal sends {}", signed.asset, ours.asset),
        ),
        (amount != Some(ours.amount), format!("amount {}, but the withdrawal's is {}", signed.amount, ours.amount)),
        (signed.expiry != ours.expiry, format!("expiry {}, but the withdrawal's is {}", signed.expiry, ours.expiry)),
    ];
    match differs.into_iter().find(|(differs, _)| *differs) {
        Some((_, what)) => format!("the signature is over other content: it names {what}"),
        None => {
            format!("the signature is not {approver}'s: over this withdrawal's approval it recovers to {recovered}")
        }
    }
}

fn refused(message: impl std::fmt::Display) -> ApiError {
    error(ErrorKind::ApprovalRefused, message)
}

/// The withdrawal `id` and its key's approval settings, if `client` may decide on it.
async fn decidable<'a>(
    service: &'a Service,
    client: &crate::config::ClientConfig,
    id: &str,
) -> Result<(Withdrawal, &'a Key, &'a ApprovalSettings, ApprovalState), ApiError> {
    let engine = engine(service)?;
    let not_found = || error(ErrorKind::NotFound, format!("no withdrawal `{id}` this client may approve"));
    let withdrawal = engine.journal.get(id).await.map_err(journal_error)?.ok_or_else(not_found)?;
    if !client.may(APPROVALS_METHOD, &withdrawal.key) {
        return Err(not_found());
    }
    let key = service.shared.keys.get(&withdrawal.key).ok_or_else(not_found)?;
    let settings = service.config.keys.get(&withdrawal.key).and_then(|key| key.approvals.as_ref());
    let state = engine.journal.approval_state(id).await.map_err(journal_error)?;
    match (settings, state) {
        (Some(settings), Some(state)) => Ok((withdrawal, key, settings, state)),
        _ => Err(ApiError::conflict(format!("withdrawal `{id}` did not need approvals"), withdrawal.status)),
    }
}

/// Decide on a withdrawal
///
/// Posts an approver's EIP-712 signature approving or rejecting a withdrawal that waits for approvals.
/// It counts only if it recovers to one of the key's approvers over exactly this withdrawal's content on
/// the key's chain, before the expiry, and once per approver. The approval that completes the quorum hands
/// the withdrawal to the engine (`accepted`); a rejection ends it (`rejected`).
#[utoipa::path(
    post,
    path = "/v1/withdrawals/{id}/approvals",
    operation_id = "decide_withdrawal",
    tag = "approvals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The withdrawal's id")),
    request_body(content = DecisionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Counted: the withdrawal as it is now (`pending_approval`, `accepted` or `rejected`)", body = WithdrawalView),
        (status = 400, description = "`invalid_request`: the body, the address or the signature cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`approval_refused`: not an approver, or a signature over other content, for another chain or by another key", body = ErrorBody),
        (status = 404, description = "`not_found`: no such withdrawal of a key this client may approve for", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was sent too slowly", body = ErrorBody),
        (status = 409, description = "`approval_conflict`: this approver decided before, or the withdrawal is not waiting for approvals (expired, rejected, approved: `status`)", body = ErrorBody),
        (status = 413, description = "`body_too_large`: more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `audit`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn decide(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Body, BytesRejection>,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let id = path_id(id)?;
    let body = body.map_err(|rejection| unreadable(&rejection))?;
    let request: DecisionRequest =
        serde_json::from_slice(&body).map_err(|error| bad_request(format!("not a decision: {error}")))?;
    // Whether there is such a withdrawal for this client first: the values are checked against it.
    let (withdrawal, key, settings, state) = decidable(&service, client, &id).await?;
    let approver =
        ethkms::units::parse_address(&request.approver).map_err(|error| bad_request(format!("`approver`: {error}")))?;
    let signature: Bytes =
        request.signature.parse().map_err(|error| bad_request(format!("`signature` is not hexadecimal: {error}")))?;
    if !settings.approvers.contains(&approver) {
        return Err(refused(format!("{approver} is not an approver of key `{}`", key.name)));
    }
    let approve = request.decision == DecisionKind::Approve;
    let ours = super::content(key, &withdrawal, &state.terms, approve);
    let recovered = ours.signer(&signature).map_err(bad_request)?;
    if recovered != approver {
        return Err(refused(mismatch(&ours, request.signed.as_ref(), approver, recovered)));
    }
    let engine = engine(&service)?;
    let decision = Decision { approver, approve, signature: signature.clone(), at_ms: now_ms() };
    let decision_name = if approve { "approve" } else { "reject" };
    // In the audit log before it counts: a decision the log cannot take is not stored.
    service
        .shared
        .audit(json!({
            "kind": "approval_decision", "client": client_name, "withdrawal": id, "key": key.name,
            "approver": approver, "decision": decision_name, "signature": signature,
        }))
        .await
        .map_err(|audit_error| error(ErrorKind::Audit, audit_error))?;
    let decided = engine.journal.decide(&id, decision).await.map_err(journal_error)?;
    let outcome = match &decided {
        Decided::Counted(_) => "counted",
        Decided::Approved(_) => "approved",
        Decided::Rejected(_) => "rejected",
        Decided::Duplicate => "duplicate",
        Decided::Expired => "expired",
        Decided::NotPending(_) | Decided::NotFound => "not_pending",
    };
    service.shared.metrics.approvals.inc(outcome);
    tracing::info!(withdrawal = %id, key = %key.name, %approver, decision = decision_name, outcome, "approval decision");
    match decided {
        Decided::Counted(_) => {}
        Decided::Approved(row) => {
            let _ = service
                .shared
                .audit(json!({ "kind": "approved", "withdrawal": id, "key": key.name, "quorum": state.terms.quorum }))
                .await;
            engine.submit(row);
        }
        Decided::Rejected(_) => service.shared.metrics.withdrawals.inc("rejected"),
        Decided::Duplicate => {
            return Err(ApiError::conflict(
                format!("{approver} has already decided on withdrawal `{id}`"),
                withdrawal.status,
            ));
        }
        Decided::Expired => {
            let _ =
                service.shared.audit(json!({ "kind": "approval_expired", "withdrawal": id, "key": key.name })).await;
            return Err(ApiError::conflict(
                format!(
                    "withdrawal `{id}` expired at {} (Unix seconds) without its approvals",
                    state.terms.expires_ms / 1000
                ),
                crate::journal::Status::Expired,
            ));
        }
        Decided::NotPending(status) => {
            return Err(ApiError::conflict(
                format!("withdrawal `{id}` is {status}: not waiting for approvals"),
                status,
            ));
        }
        Decided::NotFound => return Err(error(ErrorKind::NotFound, format!("no withdrawal `{id}`"))),
    }
    let withdrawal = engine.journal.get(&id).await.map_err(journal_error)?.unwrap_or(withdrawal);
    Ok((StatusCode::OK, Json(view_with_approvals(&service, &withdrawal).await?)).into_response())
}

/// `GET /v1/approvals` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// At most this many (1 to 1000; 100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The withdrawals waiting for approvals.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PendingList {
    /// Oldest first, each with its `approval` (what to sign).
    withdrawals: Vec<WithdrawalView>,
}

/// List withdrawals waiting for approvals
///
/// The `pending_approval` withdrawals of the keys this client may approve for, oldest first, each with the
/// EIP-712 message its approvers sign.
#[utoipa::path(
    get,
    path = "/v1/approvals",
    operation_id = "list_approvals",
    tag = "approvals",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The withdrawals waiting for approvals", body = PendingList),
        (status = 400, description = "`invalid_request`: the query is not valid", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: this client may not approve for any key", body = ErrorBody),
        (status = 408, description = "`request_timeout`: a body was sent too slowly", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body of more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (_, client) = client(&service, &headers)?;
    let Query(query) = query.map_err(|rejection| bad_request(format!("the query: {}", rejection.body_text())))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad_request(format!("`limit` must be from 1 to 1000, not {limit}")));
    }
    let keys: Vec<String> = service
        .config
        .keys
        .iter()
        .filter(|(name, key)| key.approvals.is_some() && client.may(APPROVALS_METHOD, name))
        .map(|(name, _)| name.clone())
        .collect();
    if keys.is_empty() {
        return Err(error(ErrorKind::Forbidden, "this client may not approve withdrawals of any key"));
    }
    let engine = engine(&service)?;
    let rows =
        engine.journal.pending_approvals(&keys, usize::try_from(limit).unwrap_or(1000)).await.map_err(journal_error)?;
    let mut withdrawals = Vec::with_capacity(rows.len());
    for row in &rows {
        withdrawals.push(view_with_approvals(&service, row).await?);
    }
    Ok(Json(PendingList { withdrawals }).into_response())
}
