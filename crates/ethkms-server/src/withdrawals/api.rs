//! The REST routes: `POST /v1/withdrawals`, `GET /v1/withdrawals/{id}` and
//! `POST /v1/withdrawals/{id}/cancel`. They check the client and the policy, store through the journal and
//! hand the rest to the [`Engine`](super::Engine). Every answer is JSON — a [`WithdrawalView`] or an
//! [`ErrorBody`], also for a body that cannot be read or a path that matches no route — and each handler's
//! `#[utoipa::path]` lists every status it can answer, for the [OpenAPI document](super::openapi).

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::Engine;
use super::body::{WithdrawalRequest, parse_withdrawal};
use super::engine::withdrawal_request;
use crate::app::Service;
use crate::config::ClientConfig;
use crate::journal::{Cancelled, Inserted, NewWithdrawal, Status, Withdrawal};
use crate::policy::{Asset, Denial, SignRequest};

/// What kind of error, stable for clients to match on; it decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// 400: the body or the path is not valid (the message names the field).
    InvalidRequest,
    /// 401: no bearer token, or an unknown one.
    Unauthorized,
    /// 403: this client may not use the key, or there is no such key.
    Forbidden,
    /// 403: a policy rule denied the withdrawal (`rule` names it).
    PolicyDenied,
    /// 404: no such withdrawal for this client, or no such route.
    NotFound,
    /// 409: the idempotency key was used with other parameters (`id` is that withdrawal).
    IdempotencyKeyReused,
    /// 409: too late to cancel (`status` is the withdrawal's).
    NotCancellable,
    /// 403: an approver's decision that does not count: not an approver of the key, or a signature over
    /// other content, for another chain or by another key (the message names which).
    ApprovalRefused,
    /// 409: a decision on a withdrawal not waiting for it: the approver decided before, or the withdrawal
    /// expired, was rejected or approved (`status` is the withdrawal's).
    ApprovalConflict,
    /// 409: an allowlist change that cannot be made: the key takes no additions (no `destination_allowlist`
    /// or no approvals), the address is listed or proposed already, or it is in the configuration's list.
    AllowlistConflict,
    /// 413: the body is larger than 1 MiB.
    BodyTooLarge,
    /// 408: the body was not all sent within `limits.body_timeout_seconds`.
    RequestTimeout,
    /// 503: too many requests at once, or too many withdrawals waiting to be signed (`Retry-After`).
    Overloaded,
    /// 503: the journal failed; nothing was stored.
    Journal,
    /// 503: the audit log could not be written.
    Audit,
    /// 503: the server has no journal configured.
    WithdrawalsDisabled,
    /// 503: the engine halted (see the server's log).
    Halted,
}

impl ErrorKind {
    const fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::PolicyDenied | Self::ApprovalRefused => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::IdempotencyKeyReused | Self::NotCancellable | Self::ApprovalConflict | Self::AllowlistConflict => {
                StatusCode::CONFLICT
            }
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Journal | Self::Audit | Self::WithdrawalsDisabled | Self::Halted | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Every error answer: `{"error": {"kind", "message", …}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ApiError,
}

/// A REST error: its kind (which decides the status), a message, and details for some kinds.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ApiError {
    kind: ErrorKind,
    /// What went wrong, for people.
    message: String,
    /// `idempotency_key_reused`: the withdrawal made with that key.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// `policy_denied`: the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// `not_cancellable`, `approval_conflict`: where the withdrawal is.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

impl ApiError {
    /// `approval_conflict`, with where the withdrawal is.
    pub(crate) fn conflict(message: impl std::fmt::Display, status: Status) -> Self {
        Self { status: Some(status), ..error(ErrorKind::ApprovalConflict, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut response = (status, Json(ErrorBody { error: self })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Everything answered 503 here passes: the journal, the audit log, the engine's recovery.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::limits::RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The answer for a body that could not be read: too large (413) or sent too slowly (408).
pub(crate) fn unread_body(error: &crate::limits::BodyError, message: String) -> ApiError {
    let kind = match error {
        crate::limits::BodyError::TooLarge => ErrorKind::BodyTooLarge,
        crate::limits::BodyError::TooSlow => ErrorKind::RequestTimeout,
    };
    self::error(kind, message)
}

/// The answer for overload: 503 with `Retry-After`.
pub(crate) fn overloaded(message: impl std::fmt::Display) -> ApiError {
    error(ErrorKind::Overloaded, format!("{message}; retry after {} s", crate::limits::RETRY_AFTER_SECONDS))
}

pub(crate) fn error(kind: ErrorKind, message: impl std::fmt::Display) -> ApiError {
    ApiError { kind, message: message.to_string(), id: None, rule: None, status: None }
}

pub(crate) fn bad_request(message: impl std::fmt::Display) -> ApiError {
    error(ErrorKind::InvalidRequest, message)
}

pub(crate) fn journal_error(journal_error: impl std::fmt::Display) -> ApiError {
    error(ErrorKind::Journal, journal_error)
}

/// A body that could not be read: too large (413) or cut short (400).
pub(crate) fn unreadable(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(ErrorKind::BodyTooLarge, format!("the body is larger than {} bytes", crate::service::MAX_BODY_BYTES))
    } else {
        bad_request(format!("the body could not be read: {}", rejection.body_text()))
    }
}

/// The withdrawal id from the path (a rejection is a path that does not decode to UTF-8).
pub(crate) fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id).map_err(|rejection| bad_request(format!("the withdrawal id: {}", rejection.body_text())))
}

/// Any path that matches no route.
pub(crate) async fn no_route(uri: Uri) -> ApiError {
    error(ErrorKind::NotFound, format!("no route {}", uri.path()))
}

/// A withdrawal as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Withdrawal)]
pub(crate) struct WithdrawalView {
    /// Its id.
    id: String,
    /// The client's idempotency key (`null` for a transaction made through JSON-RPC).
    idempotency_key: Option<String>,
    /// The signing key's name.
    key: String,
    /// The signing key's address.
    #[schema(value_type = Option<String>)]
    from: Option<Address>,
    /// The recipient (EIP-55).
    #[schema(value_type = String)]
    to: Address,
    /// `ETH`, or the token's contract address (EIP-55).
    asset: String,
    /// Wei, or the token's smallest unit, in decimal.
    amount: String,
    status: Status,
    /// Whether the status can no longer change: confirmed, or failed.
    #[serde(rename = "final")]
    is_final: bool,
    /// Its nonce, once it is being signed.
    nonce: Option<u64>,
    /// The transaction mined, or the latest signed.
    #[schema(value_type = Option<String>)]
    tx_hash: Option<B256>,
    /// The block it was mined in.
    block_number: Option<u64>,
    /// A cancellation was requested after it was signed.
    cancel_requested: bool,
    /// Why it failed.
    error: Option<String>,
    /// How many transactions were signed for it (fee bumps and a cancellation share its nonce).
    transactions: usize,
    /// Its approvals, if it needed approvals (`pending_approval`, and after).
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<crate::approvals::api::ApprovalView>,
}

impl WithdrawalView {
    /// `approval` set.
    pub(crate) fn with_approval(self, approval: Option<crate::approvals::api::ApprovalView>) -> Self {
        Self { approval, ..self }
    }

    pub(crate) fn new(service: &Service, withdrawal: &Withdrawal) -> Self {
        let from = service.shared.keys.get(&withdrawal.key).map(crate::shared::Key::address);
        Self::of(withdrawal, from, withdrawal.attempts.len())
    }

    /// `withdrawal`, sent `from`, with `transactions` signed (a webhook's event: the row as it was, without
    /// its attempts).
    pub(crate) fn of(withdrawal: &Withdrawal, from: Option<Address>, transactions: usize) -> Self {
        Self {
            id: withdrawal.id.clone(),
            idempotency_key: withdrawal.idempotency_key.clone(),
            key: withdrawal.key.clone(),
            from,
            to: withdrawal.recipient,
            asset: match withdrawal.asset {
                Asset::Ether => "ETH".to_owned(),
                Asset::Token(token) => token.to_string(),
            },
            amount: withdrawal.amount.to_string(),
            status: withdrawal.status,
            is_final: withdrawal.confirmed || withdrawal.status == Status::Failed,
            nonce: withdrawal.nonce,
            tx_hash: withdrawal.tx_hash,
            block_number: withdrawal.block_number,
            cancel_requested: withdrawal.cancel_requested,
            error: withdrawal.error.clone(),
            transactions,
            approval: None,
        }
    }
}

fn view(service: &Service, withdrawal: &Withdrawal) -> Json<WithdrawalView> {
    Json(WithdrawalView::new(service, withdrawal))
}

/// Whether the request's bearer token is a known client's (checked before the body is read).
pub(crate) fn authenticate(service: &Service, headers: &HeaderMap) -> Result<(), ApiError> {
    client(service, headers).map(drop)
}

/// The client behind the request's bearer token, if it may make withdrawals at all.
pub(crate) fn client<'a>(service: &'a Service, headers: &HeaderMap) -> Result<(&'a str, &'a ClientConfig), ApiError> {
    let token = crate::service::bearer(headers)
        .ok_or_else(|| error(ErrorKind::Unauthorized, "missing bearer token (Authorization: Bearer …)"))?;
    service.config.authenticate(token).ok_or_else(|| error(ErrorKind::Unauthorized, "unknown bearer token"))
}

pub(crate) fn engine(service: &Service) -> Result<&Arc<Engine>, ApiError> {
    let engine = service.engine.as_ref().ok_or_else(|| {
        error(ErrorKind::WithdrawalsDisabled, "withdrawals need a journal: set `journal` in the configuration")
    })?;
    if let Some(reason) = engine.halted() {
        return Err(error(ErrorKind::Halted, reason));
    }
    Ok(engine)
}

/// Make a withdrawal
///
/// Checks the body and the key's policy (the amount counted against its daily limit), stores the
/// withdrawal in the journal and answers `202`; the engine then signs, broadcasts and follows it to
/// confirmation. The same client and idempotency key never make a second withdrawal: the same request again
/// answers `200` with the first, other parameters `409`.
#[utoipa::path(
    post,
    path = "/v1/withdrawals",
    operation_id = "create_withdrawal",
    tag = "withdrawals",
    security(("bearer" = [])),
    request_body(content = WithdrawalRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: stored, to be signed and sent", body = WithdrawalView, links(
            ("GetWithdrawal" = (operation_id = "get_withdrawal", parameters(("id" = "$response.body#/id")))),
            ("CancelWithdrawal" = (operation_id = "cancel_withdrawal", parameters(("id" = "$response.body#/id"))))
        )),
        (status = 200, description = "Made before with this idempotency key and the same parameters", body = WithdrawalView),
        (status = 400, description = "`invalid_request`: the body is not a valid withdrawal", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 403, description = "`forbidden` (the key is not this client's) or `policy_denied`", body = ErrorBody),
        (status = 409, description = "`idempotency_key_reused`: used before with other parameters", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body was sent too slowly", body = ErrorBody),
        (status = 413, description = "`body_too_large`: more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `audit`, `withdrawals_disabled`, `halted` or `overloaded`: nothing was stored; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn post(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let engine = engine(&service)?;
    let body = body.map_err(|rejection| unreadable(&rejection))?;
    let request = parse_withdrawal(&body).map_err(bad_request)?;
    if !client.may("withdrawals", &request.key) {
        return Err(error(
            ErrorKind::Forbidden,
            format!("this client may not make withdrawals with key `{}`", request.key),
        ));
    }
    let key = service
        .shared
        .keys
        .get(&request.key)
        .ok_or_else(|| error(ErrorKind::Forbidden, format!("no key named `{}`", request.key)))?;
    let (recipient, asset) = (request.to, request.asset);
    let amount = match asset {
        Asset::Ether => ethkms::units::parse_value(&request.amount),
        Asset::Token(_) => request
            .amount
            .parse::<U256>()
            .map_err(|error| format!("`{}` is not an amount in the token's smallest unit: {error}", request.amount)),
    }
    .map_err(|error| bad_request(format!("`amount`: {error}")))?;
    if amount.is_zero() {
        return Err(bad_request("`amount` must be more than zero"));
    }
    let new = NewWithdrawal {
        client: client_name.to_owned(),
        idempotency_key: request.idempotency_key,
        key: key.name.clone(),
        recipient,
        asset,
        amount,
        approval: service
            .config
            .keys
            .get(&key.name)
            .and_then(|config| config.approvals.as_ref())
            .filter(|approvals| approvals.needed(asset, amount))
            .map(|approvals| crate::approvals::terms(approvals.quorum, approvals.expiry)),
    };
    let transaction = withdrawal_request(key.address(), recipient, asset, amount);
    let policy_request = SignRequest::from_transaction(&key.name, key.chain_id, &transaction);
    let check = crate::shared::limit_check(&service.shared, policy_request);
    if engine.backlog() >= service.config.limits.max_pending_withdrawals {
        service.shared.metrics.overload.inc("pending_withdrawals");
        return Err(overloaded(format!(
            "{} withdrawals are waiting to be signed (limits.max_pending_withdrawals)",
            engine.backlog()
        )));
    }
    let inserted = engine.journal.insert(new.clone(), check).await.map_err(|journal| {
        if matches!(journal, crate::journal::JournalError::Busy(_)) {
            service.shared.metrics.overload.inc("journal_queue");
        }
        journal_error(journal)
    })?;
    match inserted {
        Inserted::New(withdrawal) if withdrawal.status == Status::PendingApproval => {
            service.shared.metrics.withdrawals.inc("pending_approval");
            let _ = service
                .shared
                .audit(json!({
                    "kind": "approval_requested", "client": client_name, "withdrawal": withdrawal.id,
                    "key": key.name, "to": recipient, "asset": asset.to_string(), "amount": amount.to_string(),
                }))
                .await;
            let body = crate::approvals::api::view_with_approvals(&service, &withdrawal).await?;
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Inserted::New(withdrawal) => {
            service.shared.metrics.withdrawals.inc("accepted");
            let body = view(&service, &withdrawal);
            engine.submit(withdrawal);
            Ok((StatusCode::ACCEPTED, body).into_response())
        }
        Inserted::Existing(withdrawal) if new.same_as(&withdrawal) => {
            Ok((StatusCode::OK, view(&service, &withdrawal)).into_response())
        }
        Inserted::Existing(withdrawal) => Err(ApiError {
            id: Some(withdrawal.id.clone()),
            ..error(
                ErrorKind::IdempotencyKeyReused,
                format!(
                    "idempotency key `{}` was used for withdrawal {} with other parameters",
                    new.idempotency_key, withdrawal.id
                ),
            )
        }),
        Inserted::Refused(Denial { rule, message }) => {
            service.shared.metrics.denials.inc(&rule.to_string());
            service
                .shared
                .audit(json!({
                    "kind": "denial", "method": "withdrawals", "client": client_name, "key": key.name,
                    "rule": rule.to_string(), "reason": message, "to": recipient, "asset": asset.to_string(),
                    "amount": amount.to_string(),
                }))
                .await
                .map_err(|audit_error| error(ErrorKind::Audit, audit_error))?;
            Err(ApiError {
                rule: Some(rule.to_string()),
                ..error(ErrorKind::PolicyDenied, format!("denied by policy rule `{rule}`: {message}"))
            })
        }
    }
}

/// The withdrawal `id` if it belongs to `client_name`.
async fn owned(engine: &Engine, client_name: &str, id: &str) -> Result<Withdrawal, ApiError> {
    match engine.journal.get(id).await.map_err(journal_error)? {
        Some(withdrawal) if withdrawal.client.as_deref() == Some(client_name) => Ok(withdrawal),
        _ => Err(error(ErrorKind::NotFound, format!("no withdrawal `{id}`"))),
    }
}

/// Get a withdrawal
///
/// Only the client that made it sees it.
#[utoipa::path(
    get,
    path = "/v1/withdrawals/{id}",
    operation_id = "get_withdrawal",
    tag = "withdrawals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The withdrawal's id")),
    responses(
        (status = 200, description = "The withdrawal", body = WithdrawalView),
        (status = 400, description = "`invalid_request`: the id is not UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 404, description = "`not_found`: no such withdrawal of this client", body = ErrorBody),
        (status = 408, description = "`request_timeout`: a body was sent too slowly", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body of more than 1 MiB", body = ErrorBody),
        (status = 503, description = "`journal`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let id = path_id(id)?;
    let withdrawal = owned(engine(&service)?, client_name, &id).await?;
    Ok(Json(crate::approvals::api::view_with_approvals(&service, &withdrawal).await?).into_response())
}

/// Cancel a withdrawal
///
/// Before signing, cancelled at once (`200`); after, a cancellation is requested (`202`) — a zero-value
/// transaction to the key itself with the withdrawal's nonce, and the withdrawal ends `cancelled` only if
/// that transaction is the one mined. Too late (`409`) once mined.
#[utoipa::path(
    post,
    path = "/v1/withdrawals/{id}/cancel",
    operation_id = "cancel_withdrawal",
    tag = "withdrawals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The withdrawal's id")),
    responses(
        (status = 200, description = "Cancelled (it had not been signed), or cancelled before", body = WithdrawalView),
        (status = 202, description = "Signed already: a cancellation transaction is requested", body = WithdrawalView),
        (status = 400, description = "`invalid_request`: the id is not UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no bearer token, or an unknown one", body = ErrorBody),
        (status = 404, description = "`not_found`: no such withdrawal of this client", body = ErrorBody),
        (status = 408, description = "`request_timeout`: a body was sent too slowly", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a body of more than 1 MiB", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: too late (`status` says where it is)", body = ErrorBody),
        (status = 503, description = "`journal`, `withdrawals_disabled`, `halted` or `overloaded`; retry after `Retry-After`", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let id = path_id(id)?;
    let engine = engine(&service)?;
    owned(engine, client_name, &id).await?;
    let answer = engine.journal.cancel(&id).await.map_err(journal_error)?;
    let status = match answer {
        Cancelled::Now(_) => {
            service.shared.metrics.withdrawals.inc("cancelled");
            StatusCode::OK
        }
        Cancelled::Requested => {
            engine.cancel_requested(&id);
            StatusCode::ACCEPTED
        }
        Cancelled::Unchanged(Status::Cancelled) => StatusCode::OK,
        Cancelled::Unchanged(status) => {
            return Err(ApiError {
                status: Some(status),
                ..error(ErrorKind::NotCancellable, format!("withdrawal `{id}` is {status}: too late to cancel"))
            });
        }
        Cancelled::NotFound => return Err(error(ErrorKind::NotFound, format!("no withdrawal `{id}`"))),
    };
    let withdrawal = owned(engine, client_name, &id).await?;
    let _ = service
        .shared
        .audit(json!({
            "kind": "cancel", "client": client_name, "withdrawal": id, "status": withdrawal.status.as_str(),
        }))
        .await;
    Ok((status, view(&service, &withdrawal)).into_response())
}
