//! The REST routes: `POST /v1/withdrawals`, `GET /v1/withdrawals/{id}` and
//! `POST /v1/withdrawals/{id}/cancel`. They check the client and the policy, store through the journal and
//! hand the rest to the [`Engine`](super::Engine).

use std::sync::{Arc, PoisonError};

use alloy_primitives::U256;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Engine;
use super::engine::withdrawal_request;
use crate::app::Service;
use crate::config::ClientConfig;
use crate::journal::{Cancelled, Inserted, NewWithdrawal, Status, Withdrawal};
use crate::policy::{Asset, Denial, SignRequest, totals};

/// The body of `POST /v1/withdrawals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WithdrawalRequest {
    idempotency_key: String,
    key: String,
    to: String,
    asset: String,
    amount: String,
}

/// A REST error: status, a stable kind, a message, and optional details merged into the body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    details: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "kind": self.kind, "message": self.message });
        if let (Some(body), Value::Object(details)) = (body.as_object_mut(), self.details) {
            body.extend(details);
        }
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}

fn error(status: StatusCode, kind: &'static str, message: impl std::fmt::Display, details: Value) -> ApiError {
    ApiError { status, kind, message: message.to_string(), details }
}

fn bad_request(message: impl std::fmt::Display) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_request", message, Value::Null)
}

fn journal_error(journal_error: impl std::fmt::Display) -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, "journal", journal_error, Value::Null)
}

/// The JSON form of a withdrawal in the API.
fn view(service: &Service, withdrawal: &Withdrawal) -> Value {
    let from = service.shared.keys.get(&withdrawal.key).map(crate::shared::Key::address);
    json!({
        "id": withdrawal.id,
        "idempotency_key": withdrawal.idempotency_key,
        "key": withdrawal.key,
        "from": from,
        "to": withdrawal.recipient,
        "asset": match withdrawal.asset { Asset::Ether => "ETH".to_owned(), Asset::Token(token) => token.to_string() },
        "amount": withdrawal.amount.to_string(),
        "status": withdrawal.status.as_str(),
        "final": withdrawal.confirmed || withdrawal.status == Status::Failed,
        "nonce": withdrawal.nonce,
        "tx_hash": withdrawal.tx_hash,
        "block_number": withdrawal.block_number,
        "cancel_requested": withdrawal.cancel_requested,
        "error": withdrawal.error,
        "transactions": withdrawal.attempts.len(),
    })
}

/// Whether the request's bearer token is a known client's (checked before the body is read).
pub(crate) fn authenticate(service: &Service, headers: &HeaderMap) -> Result<(), ApiError> {
    client(service, headers).map(drop)
}

/// The client behind the request's bearer token, if it may make withdrawals at all.
fn client<'a>(service: &'a Service, headers: &HeaderMap) -> Result<(&'a str, &'a ClientConfig), ApiError> {
    let token = crate::service::bearer(headers).ok_or_else(|| {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token (Authorization: Bearer …)", Value::Null)
    })?;
    service
        .config
        .authenticate(token)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown bearer token", Value::Null))
}

fn engine(service: &Service) -> Result<&Arc<Engine>, ApiError> {
    let engine = service.engine.as_ref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "withdrawals_disabled",
            "withdrawals need a journal: set `journal` in the configuration",
            Value::Null,
        )
    })?;
    if let Some(reason) = engine.halted() {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "halted", reason, Value::Null));
    }
    Ok(engine)
}

/// `POST /v1/withdrawals`.
pub(crate) async fn post(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let engine = engine(&service)?;
    let request: WithdrawalRequest =
        serde_json::from_slice(&body).map_err(|error| bad_request(format!("the body is not a withdrawal: {error}")))?;
    if request.idempotency_key.is_empty() || request.idempotency_key.len() > 200 {
        return Err(bad_request("`idempotency_key` must be 1 to 200 characters"));
    }
    if !client.may("withdrawals", &request.key) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this client may not make withdrawals with key `{}`", request.key),
            Value::Null,
        ));
    }
    let key = service.shared.keys.get(&request.key).ok_or_else(|| {
        error(StatusCode::FORBIDDEN, "forbidden", format!("no key named `{}`", request.key), Value::Null)
    })?;
    let recipient = ethkms::units::parse_address(&request.to).map_err(|error| bad_request(format!("`to`: {error}")))?;
    let asset = if request.asset.eq_ignore_ascii_case("eth") {
        Asset::Ether
    } else {
        Asset::Token(
            ethkms::units::parse_address(&request.asset)
                .map_err(|error| bad_request(format!("`asset` must be ETH or an ERC-20 contract address: {error}")))?,
        )
    };
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
    };
    let transaction = withdrawal_request(key.address(), recipient, asset, amount);
    let policy_request = SignRequest::from_transaction(&key.name, key.chain_id, &transaction);
    let shared = Arc::clone(&service.shared);
    let check = Box::new(move || {
        shared
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check_and_record(&policy_request, std::time::SystemTime::now())
            .map(|movements| totals(&movements).into_iter().collect())
    });
    let inserted = engine.journal.insert(new.clone(), check).await.map_err(journal_error)?;
    match inserted {
        Inserted::New(withdrawal) => {
            service.shared.metrics.withdrawals.inc("accepted");
            let body = view(&service, &withdrawal);
            engine.submit(withdrawal);
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Inserted::Existing(withdrawal) if new.same_as(&withdrawal) => {
            Ok((StatusCode::OK, Json(view(&service, &withdrawal))).into_response())
        }
        Inserted::Existing(withdrawal) => Err(error(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "idempotency key `{}` was used for withdrawal {} with other parameters",
                new.idempotency_key, withdrawal.id
            ),
            json!({ "id": withdrawal.id }),
        )),
        Inserted::Refused(Denial { rule, message }) => {
            service.shared.metrics.denials.inc(&rule.to_string());
            service
                .shared
                .audit(json!({
                    "kind": "denial", "method": "withdrawals", "client": client_name, "key": key.name,
                    "rule": rule.to_string(), "reason": message, "to": recipient, "asset": asset.to_string(),
                    "amount": amount.to_string(),
                }))
                .map_err(|audit_error| error(StatusCode::SERVICE_UNAVAILABLE, "audit", audit_error, Value::Null))?;
            Err(error(
                StatusCode::FORBIDDEN,
                "policy_denied",
                format!("denied by policy rule `{rule}`: {message}"),
                json!({ "rule": rule.to_string() }),
            ))
        }
    }
}

/// The withdrawal `id` if it belongs to `client_name`.
async fn owned(engine: &Engine, client_name: &str, id: &str) -> Result<Withdrawal, ApiError> {
    match engine.journal.get(id).await.map_err(journal_error)? {
        Some(withdrawal) if withdrawal.client.as_deref() == Some(client_name) => Ok(withdrawal),
        _ => Err(error(StatusCode::NOT_FOUND, "not_found", format!("no withdrawal `{id}`"), Value::Null)),
    }
}

/// `GET /v1/withdrawals/{id}`: only the client that made it sees it.
pub(crate) async fn get(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let withdrawal = owned(engine(&service)?, client_name, &id).await?;
    Ok(Json(view(&service, &withdrawal)).into_response())
}

/// `POST /v1/withdrawals/{id}/cancel`: before signing, cancelled at once (`200`); after, a cancellation is
/// requested (`202`) — a zero-value transaction to the key itself with the withdrawal's nonce, and the
/// withdrawal ends `cancelled` only if that transaction is the one mined. Too late (`409`) once mined.
pub(crate) async fn cancel(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let engine = engine(&service)?;
    owned(engine, client_name, &id).await?;
    let answer = engine.journal.cancel(&id).await.map_err(journal_error)?;
    let status = match answer {
        Cancelled::Now(released) => {
            service.shared.release(&released);
            service.shared.metrics.withdrawals.inc("cancelled");
            StatusCode::OK
        }
        Cancelled::Requested => {
            engine.cancel_requested(&id);
            StatusCode::ACCEPTED
        }
        Cancelled::Unchanged(Status::Cancelled) => StatusCode::OK,
        Cancelled::Unchanged(status) => {
            return Err(error(
                StatusCode::CONFLICT,
                "not_cancellable",
                format!("withdrawal `{id}` is {status}: too late to cancel"),
                json!({ "status": status.as_str() }),
            ));
        }
        Cancelled::NotFound => {
            return Err(error(StatusCode::NOT_FOUND, "not_found", format!("no withdrawal `{id}`"), Value::Null));
        }
    };
    let withdrawal = owned(engine, client_name, &id).await?;
    let _ = service.shared.audit(json!({
        "kind": "cancel", "client": client_name, "withdrawal": id, "status": withdrawal.status.as_str(),
    }));
    Ok((status, Json(view(&service, &withdrawal))).into_response())
}
