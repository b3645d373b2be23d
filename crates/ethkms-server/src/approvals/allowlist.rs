//! Time-locked additions to a key's destination allowlist, guarded by the key's approvers. The routes:
//! `POST /v1/keys/{key}/allowlist` (a client with the `allowlist` method proposes an address; it takes
//! effect `allowlist_delay_seconds` later, and only once the key's quorum of approvers has approved it),
//! `GET /v1/keys/{key}/allowlist` (the configuration's entries and the added ones, with their state),
//! `POST /v1/keys/{key}/allowlist/{address}/approvals` (an approver's EIP-712 [decision](super::typed),
//! carried by a client with `approvals`: an approval counts towards the quorum, a rejection before the
//! addition takes effect cancels it) and `DELETE /v1/keys/{key}/allowlist/{address}` (a removal, at once).
//! The configuration's `destination_allowlist` stays the static base: it cannot be changed here.
//!
//! Every proposal, decision, approval, cancellation and removal goes to the audit log. The policy engine
//! allows an approved addition from its effective time on ([`refresh`] hands it the approved additions:
//! at once on the replica that made the change, every [`REFRESH_INTERVAL`] on every replica).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, Bytes};
use axum::Json;
use axum::body::Bytes as Body;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::api::DecisionKind;
use super::typed::AdditionContent;
use crate::app::Service;
use crate::config::{ALLOWLIST_METHOD, APPROVALS_METHOD, ApprovalSettings, ClientConfig};
use crate::journal::{
    Addition, AdditionDecided, AllowlistStatus, Decision, JournalStore, NewAddition, Proposed, now_ms,
};
use crate::shared::{Key, Shared};
use crate::withdrawals::Engine;
use crate::withdrawals::api::{
    ApiError, ErrorBody, ErrorKind, bad_request, client, engine, error, journal_error, unreadable,
};

/// How often every replica reads the approved additions again (a change on another replica shows here
/// within this; one on this replica at once).
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The longest label, in characters.
const MAX_LABEL: usize = 100;

/// Hands the policy engine every approved addition, with when it takes effect.
pub(crate) async fn refresh(shared: &Shared, journal: &dyn JournalStore) -> Result<(), crate::journal::JournalError> {
    let mut by_key: HashMap<String, Vec<(Address, SystemTime)>> = HashMap::new();
    for entry in journal.approved_additions().await? {
        let from = UNIX_EPOCH + Duration::from_millis(entry.effective_ms);
        by_key.entry(entry.key).or_default().push((entry.address, from));
    }
    let mut policy = shared.policy.lock().unwrap_or_else(PoisonError::into_inner);
    for name in shared.keys.keys() {
        policy.set_added(name, by_key.remove(name).unwrap_or_default());
    }
    Ok(())
}

/// Refreshes the approved additions every [`REFRESH_INTERVAL`] until the engine stops.
pub(crate) fn refresh_in_background(engine: Arc<Engine>) {
    tokio::spawn(async move {
        while !engine.stopping.load(Ordering::Relaxed) {
            if let Err(error) = refresh(&engine.shared, engine.journal.as_ref()).await {
                tracing::warn!(%error, "reading the approved allowlist additions; the next round tries again");
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
    });
}

/// An allowlist entry, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EntryView {
    /// The destination.
    #[schema(value_type = String)]
    address: Address,
    /// `static` (the configuration's), `proposed`, `approved`, `cancelled` or `removed`.
    status: String,
    /// Whether it allows the address now.
    active: bool,
    /// An added entry's label.
    label: Option<String>,
    /// The client that proposed it.
    proposed_by: Option<String>,
    /// When it was proposed, Unix seconds.
    proposed_at: Option<u64>,
    /// When it takes effect (with its quorum), Unix seconds.
    effective: Option<u64>,
    /// Distinct approvals needed.
    quorum: Option<u32>,
    /// The approvers who approved it, in order.
    #[schema(value_type = Vec<String>)]
    approved_by: Vec<Address>,
    /// The approver who cancelled it, if one did.
    #[schema(value_type = Option<String>)]
    rejected_by: Option<Address>,
    /// While approvers may still decide: the EIP-712 message they sign to approve it
    /// (`eth_signTypedData_v4` JSON); with `message.approve` false, to cancel it.
    #[schema(value_type = Option<Object>)]
    typed_data: Option<serde_json::Value>,
}

impl EntryView {
    fn listed(address: Address) -> Self {
        Self {
            address,
            status: "static".into(),
            active: true,
            label: None,
            proposed_by: None,
            proposed_at: None,
            effective: None,
            quorum: None,
            approved_by: Vec::new(),
            rejected_by: None,
            typed_data: None,
        }
    }

    fn added(key: &Key, entry: &Addition, now: u64) -> Self {
        let decided = |approve: bool| entry.decisions.iter().filter(move |decision| decision.approve == approve);
        let open = entry.status == AllowlistStatus::Proposed
            || (entry.status == AllowlistStatus::Approved && entry.effective_ms > now);
        Self {
            address: entry.address,
            status: entry.status.as_str().into(),
            active: entry.active(now),
            label: entry.label.clone(),
            proposed_by: Some(entry.client.clone()),
            proposed_at: Some(entry.proposed_ms / 1000),
            effective: Some(entry.effective_ms / 1000),
            quorum: Some(entry.quorum),
            approved_by: decided(true).map(|decision| decision.approver).collect(),
            rejected_by: decided(false).map(|decision| decision.approver).next(),
            typed_data: open.then(|| content(key, entry, true).typed_data()),
        }
    }
}

/// What an approver signs to decide (`approve`) on `entry` of `key`.
fn content(key: &Key, entry: &Addition, approve: bool) -> AdditionContent {
    AdditionContent {
        key: key.address(),
        chain_id: key.chain_id,
        destination: entry.address,
        effective: entry.effective_ms / 1000,
        approve,
    }
}

/// A key's allowlist: the configuration's entries, then the added ones.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AllowlistView {
    /// The key.
    key: String,
    /// The configuration's entries (`static`), then the added ones, oldest first (the latest 1000).
    entries: Vec<EntryView>,
}

/// A proposed addition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProposalRequest {
    /// The destination to allow.
    #[schema(pattern = r"^0x([0-9a-f]{40}|[0-9A-F]{40})$", example = "0x90f79bf6eb2c4f870365e785982e1f101e93b906")]
    address: String,
    /// A label for people (at most 100 characters, no control characters).
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    label: Option<String>,
}

/// An approver's decision on an addition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdditionDecisionRequest {
    /// The approver's address.
    #[schema(pattern = r"^0x([0-9a-f]{40}|[0-9A-F]{40})$", example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    approver: String,
    /// `approve` or `reject` (a rejection before the addition takes effect cancels it).
    decision: DecisionKind,
    /// The approver's EIP-712 signature of the entry's `typed_data` (with `approve` as decided): 65 bytes,
    /// hexadecimal.
    #[schema(pattern = r"^0x[0-9a-fA-F]{130}$")]
    signature: String,
}

/// The key `name` and its approval settings and static allowlist, if `client` may use it with one of
/// `methods` and it takes additions.
fn addable<'a>(
    service: &'a Service,
    client: &ClientConfig,
    methods: &[&str],
    name: &str,
) -> Result<(&'a Key, &'a ApprovalSettings, &'a [Address]), ApiError> {
    let forbidden = || error(ErrorKind::Forbidden, format!("this client may not change the allowlist of key `{name}`"));
    if !methods.iter().any(|method| client.may(method, name)) {
        return Err(forbidden());
    }
    let (Some(key), Some(config)) = (service.shared.keys.get(name), service.config.keys.get(name)) else {
        return Err(forbidden());
    };
    let Some(listed) = config.policy.destination_allowlist.as_deref() else {
        return Err(error(
            ErrorKind::AllowlistConflict,
            format!("key `{name}` has no destination_allowlist: it allows any destination, and takes no additions"),
        ));
    };
    let Some(settings) = config.approvals.as_ref() else {
        return Err(error(
            ErrorKind::AllowlistConflict,
            format!("key `{name}` has no [keys.{name}.approvals]: additions need approvers and a quorum"),
        ));
    };
    Ok((key, settings, listed))
}

fn key_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(key)| key).map_err(|rejection| bad_request(format!("the key: {}", rejection.body_text())))
}

fn entry_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), ApiError> {
    let Path((key, address)) =
        path.map_err(|rejection| bad_request(format!("the key and address: {}", rejection.body_text())))?;
    Ok((key, address))
}

/// The address of the path, read once the key is known to take changes from this client.
fn path_address(address: &str) -> Result<Address, ApiError> {
    ethkms::units::parse_address(address).map_err(|message| bad_request(format!("the address: {message}")))
}

async fn audit(service: &Service, event: serde_json::Value) -> Result<(), ApiError> {
    service.shared.audit(event).await.map_err(|audit_error| error(ErrorKind::Audit, audit_error))
}

/// Refreshes the policy's additions after a change on this replica (the periodic refresh retries).
async fn refreshed(service: &Service) {
    if let Some(engine) = &service.engine
        && let Err(error) = refresh(&service.shared, engine.journal.as_ref()).await
    {
        tracing::warn!(%error, "reading the approved allowlist additions after a change");
    }
}

/// Propose an allowlist addition
///
/// Proposes `address` for the key's destination allowlist. It takes effect `allowlist_delay_seconds`
/// (`[keys.NAME.approvals]`) from now, and only once the key's quorum of approvers has approved it; any
/// approver may cancel it until then. Only for keys with a `destination_allowlist` and approvals.
#[utoipa::path(
    post,
    path = "/v1/keys/{key}/allowlist",
    operation_id = "propose_allowlist_addition",
    tag = "allowlist",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "The key's name")),
    request_body(content = ProposalRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Proposed: the entry, with when it takes effect and what approvers sign", body = EntryView),
        (status = 400, description = "`invalid_request`: the body, the address or the label cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: no such key, or this client may not change its allowlist", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was sent too slowly", body = ErrorBody),
        (status = 409, description = "`allowlist_conflict`: the key takes no additions (no destination_allowlist or no approvals), or the address is listed or proposed already", body = ErrorBody),
        (status = 413, description = "`body_too_large`: more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `audit`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn propose(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<Body, BytesRejection>,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let name = key_path(key)?;
    let body = body.map_err(|rejection| unreadable(&rejection))?;
    let request: ProposalRequest =
        serde_json::from_slice(&body).map_err(|error| bad_request(format!("not a proposal: {error}")))?;
    // Whether this client may change this key's allowlist first: the values are checked for it.
    let (key, settings, listed) = addable(&service, client, &[ALLOWLIST_METHOD], &name)?;
    let address =
        ethkms::units::parse_address(&request.address).map_err(|error| bad_request(format!("`address`: {error}")))?;
    if address.is_zero() {
        return Err(bad_request("`address`: the zero address is not a destination"));
    }
    if let Some(label) = &request.label
        && (label.chars().count() > MAX_LABEL || label.chars().any(char::is_control))
    {
        return Err(bad_request(format!("`label`: at most {MAX_LABEL} characters, without control characters")));
    }
    if listed.contains(&address) {
        let message = format!("{address} is on key `{name}`'s destination_allowlist in the configuration already");
        return Err(error(ErrorKind::AllowlistConflict, message));
    }
    let engine = engine(&service)?;
    let exists = |entry: &Addition| {
        let message = format!("{address} has a {} addition to key `{name}`'s allowlist already", entry.status);
        error(ErrorKind::AllowlistConflict, message)
    };
    if let Some(entry) = engine.journal.live_addition(&name, address).await.map_err(journal_error)? {
        return Err(exists(&entry));
    }
    let proposed_ms = now_ms();
    let effective_ms = (proposed_ms / 1000).saturating_add(settings.allowlist_delay.as_secs()).saturating_mul(1000);
    // In the audit log before it is stored: a proposal the log cannot take is not stored.
    audit(
        &service,
        json!({
            "kind": "allowlist_proposal", "client": client_name, "key": name, "address": address,
            "label": request.label, "effective": effective_ms / 1000, "quorum": settings.quorum,
        }),
    )
    .await?;
    let new = NewAddition {
        key: name.clone(),
        address,
        client: client_name.to_owned(),
        label: request.label,
        quorum: settings.quorum,
        proposed_ms,
        effective_ms,
    };
    let entry = match engine.journal.propose_addition(new).await.map_err(journal_error)? {
        Proposed::New(entry) => entry,
        Proposed::Exists(entry) => return Err(exists(&entry)),
    };
    service.shared.metrics.allowlist.inc("proposed");
    tracing::info!(key = %name, %address, effective = effective_ms / 1000, "allowlist addition proposed");
    Ok((StatusCode::ACCEPTED, Json(EntryView::added(key, &entry, now_ms()))).into_response())
}

/// List a key's allowlist
///
/// The key's destination allowlist: the configuration's entries (`static`), then the added ones with
/// their state, decisions and (while approvers may decide) the message they sign.
#[utoipa::path(
    get,
    path = "/v1/keys/{key}/allowlist",
    operation_id = "list_allowlist",
    tag = "allowlist",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "The key's name")),
    responses(
        (status = 200, description = "The key's allowlist", body = AllowlistView),
        (status = 400, description = "`invalid_request`: the path cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: no such key, or this client has neither `allowlist` nor `approvals` for it", body = ErrorBody),
        (status = 408, description = "`request_timeout`: a body was sent too slowly", body = ErrorBody),
        (status = 409, description = "`allowlist_conflict`: the key takes no additions (no destination_allowlist or no approvals)", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body of more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (_, client) = client(&service, &headers)?;
    let name = key_path(key)?;
    let (key, _, listed) = addable(&service, client, &[ALLOWLIST_METHOD, APPROVALS_METHOD], &name)?;
    let added = engine(&service)?.journal.additions(&name, 1000).await.map_err(journal_error)?;
    let now = now_ms();
    let mut entries: Vec<EntryView> = listed.iter().copied().map(EntryView::listed).collect();
    entries.extend(added.iter().map(|entry| EntryView::added(key, entry, now)));
    Ok(Json(AllowlistView { key: name, entries }).into_response())
}

/// Decide on an allowlist addition
///
/// Posts an approver's EIP-712 signature approving or rejecting an addition. It counts only if it
/// recovers to one of the key's approvers over exactly this addition (key, destination, effective time) on
/// the key's chain, once per approver. The approval that completes the quorum approves it (in effect from
/// its effective time); a rejection before then cancels it.
#[utoipa::path(
    post,
    path = "/v1/keys/{key}/allowlist/{address}/approvals",
    operation_id = "decide_allowlist_addition",
    tag = "allowlist",
    security(("bearer" = [])),
    params(
        ("key" = String, Path, description = "The key's name"),
        ("address" = String, Path, description = "The destination proposed"),
    ),
    request_body(content = AdditionDecisionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Counted: the entry as it is now (`proposed`, `approved` or `cancelled`)", body = EntryView),
        (status = 400, description = "`invalid_request`: the body, the address or the signature cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: no such key, or this client has no `approvals` for it; `approval_refused`: not an approver, or a signature over other content, for another chain or by another key", body = ErrorBody),
        (status = 404, description = "`not_found`: no proposed or approved addition of this address", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was sent too slowly", body = ErrorBody),
        (status = 409, description = "`approval_conflict`: this approver decided before, or the addition is in effect; `allowlist_conflict`: the key takes no additions", body = ErrorBody),
        (status = 413, description = "`body_too_large`: more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `audit`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn decide(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Body, BytesRejection>,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let (name, address) = entry_path(path)?;
    let body = body.map_err(|rejection| unreadable(&rejection))?;
    let request: AdditionDecisionRequest =
        serde_json::from_slice(&body).map_err(|error| bad_request(format!("not a decision: {error}")))?;
    let (key, settings, _) = addable(&service, client, &[APPROVALS_METHOD], &name)?;
    let address = path_address(&address)?;
    let approver =
        ethkms::units::parse_address(&request.approver).map_err(|error| bad_request(format!("`approver`: {error}")))?;
    let signature: Bytes =
        request.signature.parse().map_err(|error| bad_request(format!("`signature` is not hexadecimal: {error}")))?;
    let engine = engine(&service)?;
    let not_found =
        || error(ErrorKind::NotFound, format!("no proposed or approved addition of {address} to key `{name}`"));
    let entry = engine.journal.live_addition(&name, address).await.map_err(journal_error)?.ok_or_else(not_found)?;
    if !settings.approvers.contains(&approver) {
        return Err(error(ErrorKind::ApprovalRefused, format!("{approver} is not an approver of key `{name}`")));
    }
    let approve = request.decision == DecisionKind::Approve;
    let ours = content(key, &entry, approve);
    let recovered = ours.signer(&signature).map_err(bad_request)?;
    if recovered != approver {
        return Err(error(
            ErrorKind::ApprovalRefused,
            format!(
                "the signature does not recover to {approver} over this addition (chain {}, key {}, destination \
                 {address}, effective {}, approve {approve}): it was made over other content, for another chain, or \
                 by another key (it recovers to {recovered})",
                ours.chain_id, ours.key, ours.effective
            ),
        ));
    }
    let decision_name = if approve { "approve" } else { "reject" };
    audit(
        &service,
        json!({
            "kind": "allowlist_decision", "client": client_name, "key": name, "address": address,
            "addition": entry.id, "approver": approver, "decision": decision_name, "signature": signature,
        }),
    )
    .await?;
    let decision = Decision { approver, approve, signature, at_ms: now_ms() };
    let decided = engine.journal.decide_addition(&name, address, decision).await.map_err(journal_error)?;
    let outcome = match &decided {
        AdditionDecided::Counted(_) => "counted",
        AdditionDecided::Approved(_) => "approved",
        AdditionDecided::Cancelled(_) => "cancelled",
        AdditionDecided::Duplicate => "duplicate",
        AdditionDecided::NotPending(_) | AdditionDecided::NotFound => "not_pending",
    };
    service.shared.metrics.allowlist.inc(outcome);
    tracing::info!(key = %name, %address, %approver, decision = decision_name, outcome, "allowlist decision");
    let entry = match decided {
        AdditionDecided::Counted(_) => engine.journal.live_addition(&name, address).await.map_err(journal_error)?,
        AdditionDecided::Approved(entry) | AdditionDecided::Cancelled(entry) => {
            let kind =
                if entry.status == AllowlistStatus::Approved { "allowlist_approved" } else { "allowlist_cancelled" };
            let event = json!({
                "kind": kind, "key": name, "address": address, "addition": entry.id, "by": approver,
                "effective": entry.effective_ms / 1000,
            });
            if let Err(audit_error) = service.shared.audit(event).await {
                tracing::error!(key = %name, %address, %audit_error, "the audit log did not take an allowlist change");
            }
            refreshed(&service).await;
            Some(entry)
        }
        AdditionDecided::Duplicate => {
            let message = format!("{approver} has already decided on the addition of {address} to key `{name}`");
            return Err(error(ErrorKind::ApprovalConflict, message));
        }
        AdditionDecided::NotPending(status) => {
            let message = format!(
                "the addition of {address} to key `{name}` is {status} and in effect: it takes no decisions (remove it \
                 with DELETE instead)"
            );
            return Err(error(ErrorKind::ApprovalConflict, message));
        }
        AdditionDecided::NotFound => return Err(not_found()),
    };
    let entry = entry.ok_or_else(not_found)?;
    Ok(Json(EntryView::added(key, &entry, now_ms())).into_response())
}

/// Remove an allowlist addition
///
/// Removes an added destination (proposed or approved) from the key's allowlist, at once. The
/// configuration's entries cannot be removed here.
#[utoipa::path(
    delete,
    path = "/v1/keys/{key}/allowlist/{address}",
    operation_id = "remove_allowlist_addition",
    tag = "allowlist",
    security(("bearer" = [])),
    params(
        ("key" = String, Path, description = "The key's name"),
        ("address" = String, Path, description = "The destination to remove"),
    ),
    responses(
        (status = 200, description = "Removed: the entry as it is now (`removed`)", body = EntryView),
        (status = 400, description = "`invalid_request`: the path cannot be read", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden`: no such key, or this client may not change its allowlist", body = ErrorBody),
        (status = 404, description = "`not_found`: no proposed or approved addition of this address", body = ErrorBody),
        (status = 408, description = "`request_timeout`: a body was sent too slowly", body = ErrorBody),
        (status = 409, description = "`allowlist_conflict`: the address is on the configuration's list (change it there), or the key takes no additions", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body of more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `audit`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let (name, address) = entry_path(path)?;
    let (key, _, listed) = addable(&service, client, &[ALLOWLIST_METHOD], &name)?;
    let address = path_address(&address)?;
    if listed.contains(&address) {
        let message = format!(
            "{address} is on key `{name}`'s destination_allowlist in the configuration: remove it there, not \
             through the API"
        );
        return Err(error(ErrorKind::AllowlistConflict, message));
    }
    let engine = engine(&service)?;
    audit(&service, json!({ "kind": "allowlist_removal", "client": client_name, "key": name, "address": address }))
        .await?;
    let removed = engine.journal.remove_addition(&name, address, now_ms()).await.map_err(journal_error)?;
    let Some(entry) = removed else {
        return Err(error(
            ErrorKind::NotFound,
            format!("no proposed or approved addition of {address} to key `{name}`"),
        ));
    };
    refreshed(&service).await;
    service.shared.metrics.allowlist.inc("removed");
    tracing::info!(key = %name, %address, "allowlist addition removed");
    Ok(Json(EntryView::added(key, &entry, now_ms())).into_response())
}
