//! REST withdrawals: `POST /v1/withdrawals` and `GET /v1/withdrawals/{id}`, and the engine behind them.
//!
//! A withdrawal is checked by the policy engine and stored in the [journal](crate::journal) before
//! `202 Accepted` is answered; the same client and idempotency key never make a second withdrawal. Then,
//! in the background:
//!
//! 1. the transaction is built (ether transfer or ERC-20 `transfer`), its gas estimated and its fees set;
//! 2. a nonce is allocated ([`Nonces`](crate::nonces::Nonces)), the transaction signed with KMS, the
//!    signature written to the audit log, and the signed transaction stored (status `signed`);
//! 3. it is broadcast (status `submitted`); a refusal by the node fails the withdrawal and gives the
//!    nonce back;
//! 4. a watcher follows each key's mined nonce and reads the receipt (status `mined`, or `failed` if
//!    it reverted). A transaction still unmined after `rebroadcast_after_seconds` is signed again with
//!    the same nonce and fees raised by at least 10% (and at least to the market's) — if it holds the
//!    key's next nonce or pays less than the market; later ones wait for it rather than all being
//!    re-signed at once. A nonce left free by a failure and not reused is
//!    filled with a zero-value transfer to the key itself (`ethkms_nonce_gaps_filled_total`).
//!
//! After a crash, withdrawals with a stored transaction are broadcast again as they are — never signed
//! anew with another nonce — and the others are processed as new, so nothing is lost and nothing is
//! paid twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction as _, Transaction as _, TxEnvelope};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::Signer as _;
use alloy_sol_types::SolCall;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ethkms::eth::chain::{self, Fees};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::journal::{Attempt, Inserted, Journal, Kind, NewWithdrawal, Status, Withdrawal, now_ms};
use crate::policy::{Asset, Denial, SignRequest, transferCall};
use crate::service::{Key, Metrics, Service};

/// How long fee estimates are reused.
const FEES_FOR: Duration = Duration::from_secs(1);

/// How many watcher rounds a mined nonce may show no receipt for any of the withdrawal's transactions
/// before this is reported (`ethkms_withdrawals_unresolved_total`).
const MISSES_BEFORE_WARNING: u32 = 20;

/// Settings of the withdrawal engine (`[withdrawals]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WithdrawalSettings {
    /// How often the watcher checks for mined transactions.
    pub poll_interval: Duration,
    /// How long a transaction may stay unmined before it is re-broadcast with higher fees.
    pub rebroadcast_after: Duration,
}

impl Default for WithdrawalSettings {
    fn default() -> Self {
        Self { poll_interval: Duration::from_millis(500), rebroadcast_after: Duration::from_secs(60) }
    }
}

/// A withdrawal whose transaction is signed and not yet mined.
#[derive(Debug)]
pub(crate) struct InFlight {
    withdrawal: Withdrawal,
    /// The node confirmed it has the latest transaction.
    submitted: bool,
    /// Watcher rounds in which the nonce was mined but no receipt of ours was found.
    misses: u32,
}

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

/// The JSON form of a withdrawal in the API.
fn view(service: &Service, withdrawal: &Withdrawal) -> Value {
    let from = service.keys.get(&withdrawal.key).map(|key| key.signer.address());
    json!({
        "id": withdrawal.id,
        "idempotency_key": withdrawal.idempotency_key,
        "key": withdrawal.key,
        "from": from,
        "to": withdrawal.recipient,
        "asset": match withdrawal.asset { Asset::Ether => "ETH".to_owned(), Asset::Token(token) => token.to_string() },
        "amount": withdrawal.amount.to_string(),
        "status": withdrawal.status.as_str(),
        "nonce": withdrawal.nonce,
        "tx_hash": withdrawal.tx_hash,
        "block_number": withdrawal.block_number,
        "error": withdrawal.error,
        "transactions": withdrawal.attempts.len(),
    })
}

/// The client behind the request's bearer token, if it may make withdrawals at all.
fn client<'a>(
    service: &'a Service,
    headers: &HeaderMap,
) -> Result<(&'a str, &'a crate::config::ClientConfig), ApiError> {
    let token = crate::service::bearer(headers).ok_or_else(|| {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token (Authorization: Bearer …)", Value::Null)
    })?;
    service
        .config
        .authenticate(token)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown bearer token", Value::Null))
}

fn journal(service: &Service) -> Result<&Journal, ApiError> {
    service.journal.as_ref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "withdrawals_disabled",
            "withdrawals need a journal: set `journal` in the configuration",
            Value::Null,
        )
    })
}

/// `POST /v1/withdrawals`.
pub(crate) async fn post(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (client_name, client) = client(&service, &headers)?;
    let journal = journal(&service)?.clone();
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
    let key = service.keys.get(&request.key).ok_or_else(|| {
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
    let policy_request = SignRequest {
        key: key.name.clone(),
        chain_id: key.chain_id,
        to: transaction_to(recipient, asset),
        value: transaction_value(asset, amount),
        data: transaction_data(recipient, asset, amount),
    };
    let checker = Arc::clone(&service);
    let check = move || {
        checker
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check_and_record(&policy_request, std::time::SystemTime::now())
            .map(|movement| (movement.asset, movement.amount))
    };
    let inserted = journal
        .insert(new.clone(), check)
        .await
        .map_err(|journal_error| error(StatusCode::INTERNAL_SERVER_ERROR, "journal", journal_error, Value::Null))?;
    match inserted {
        Inserted::New(withdrawal) => {
            Metrics::count(&service.metrics.withdrawals, "accepted");
            let body = view(&service, &withdrawal);
            service.spawn_processing(withdrawal);
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
            Metrics::count(&service.metrics.denials, &rule.to_string());
            service
                .audit(json!({
                    "kind": "denial", "method": "withdrawals", "client": client_name, "key": key.name,
                    "rule": rule.to_string(), "reason": message, "to": recipient, "asset": asset.to_string(),
                    "amount": amount.to_string(),
                }))
                .map_err(|audit_error| {
                    error(StatusCode::INTERNAL_SERVER_ERROR, "audit", audit_error.message, Value::Null)
                })?;
            Err(error(
                StatusCode::FORBIDDEN,
                "policy_denied",
                format!("denied by policy rule `{rule}`: {message}"),
                json!({ "rule": rule.to_string() }),
            ))
        }
    }
}

/// `GET /v1/withdrawals/{id}`: only the client that made it sees it.
pub(crate) async fn get(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (client_name, _) = client(&service, &headers)?;
    let withdrawal = journal(&service)?
        .get(&id)
        .await
        .map_err(|journal_error| error(StatusCode::INTERNAL_SERVER_ERROR, "journal", journal_error, Value::Null))?;
    match withdrawal {
        Some(withdrawal) if withdrawal.client.as_deref() == Some(client_name) => {
            Ok(Json(view(&service, &withdrawal)).into_response())
        }
        _ => Err(error(StatusCode::NOT_FOUND, "not_found", format!("no withdrawal `{id}`"), Value::Null)),
    }
}

/// The transaction that carries `withdrawal` from `from`, without nonce, gas or fees.
fn withdrawal_request(from: Address, withdrawal: &Withdrawal) -> TransactionRequest {
    TransactionRequest::default()
        .from(from)
        .to(transaction_to(withdrawal.recipient, withdrawal.asset))
        .value(transaction_value(withdrawal.asset, withdrawal.amount))
        .input(transaction_data(withdrawal.recipient, withdrawal.asset, withdrawal.amount).into())
}

fn transaction_to(recipient: Address, asset: Asset) -> Address {
    match asset {
        Asset::Ether => recipient,
        Asset::Token(token) => token,
    }
}

fn transaction_value(asset: Asset, amount: U256) -> U256 {
    if asset == Asset::Ether { amount } else { U256::ZERO }
}

fn transaction_data(recipient: Address, asset: Asset, amount: U256) -> Bytes {
    match asset {
        Asset::Ether => Bytes::new(),
        Asset::Token(_) => transferCall { to: recipient, amount }.abi_encode().into(),
    }
}

/// How the node answered a broadcast.
enum Broadcast {
    /// It has the transaction (now, or from before).
    Accepted,
    /// The nonce is used: by another transaction of ours (then the watcher finds its receipt) or by
    /// someone else's.
    NonceUsed,
    /// A replacement whose fees are not high enough.
    Underpriced(String),
    /// Refused for another reason: the transaction will never be mined.
    Refused(String),
    /// No answer (network): the node may or may not have it.
    Unknown(String),
}

/// Why a withdrawal could not be signed.
enum Trouble {
    /// Permanent: fail the withdrawal with this message.
    Fail(String),
    /// Passing (the node is unreachable, the journal failed): try again later.
    Retry(String),
}

impl Service {
    /// Runs `withdrawal` (accepted, no transaction yet; a gap fill with its nonce) in the background.
    pub(crate) fn spawn_processing(self: &Arc<Self>, withdrawal: Withdrawal) {
        let service = Arc::clone(self);
        let guard = self.work.start();
        tokio::spawn(async move {
            service.process(withdrawal).await;
            drop(guard);
        });
    }

    /// Waits until the journal has been recovered after the start.
    async fn recovered(&self) {
        let _ = self.recovered.subscribe().wait_for(|done| *done).await;
    }

    async fn broadcast(&self, raw: &Bytes) -> Broadcast {
        match self.manager.provider().send_raw_transaction(raw).await {
            Ok(_) => Broadcast::Accepted,
            Err(error) => {
                let Some(payload) = error.as_error_resp() else { return Broadcast::Unknown(error.to_string()) };
                let message = payload.message.to_lowercase();
                if message.contains("already known")
                    || message.contains("known transaction")
                    || message.contains("already imported")
                {
                    Broadcast::Accepted
                } else if message.contains("nonce too low") || message.contains("nonce has already been used") {
                    Broadcast::NonceUsed
                } else if message.contains("underpriced") {
                    Broadcast::Underpriced(payload.message.to_string())
                } else {
                    Broadcast::Refused(payload.message.to_string())
                }
            }
        }
    }

    /// The gas limit of a withdrawal: 21,000 for ether sent to an address without code (what any
    /// estimate gives, without making the node execute it), else the node's estimate.
    async fn gas(&self, withdrawal: &Withdrawal, probe: TransactionRequest) -> Result<u64, Trouble> {
        if withdrawal.kind == Kind::GapFill {
            return Ok(21_000);
        }
        let provider = self.manager.provider();
        if withdrawal.asset == Asset::Ether {
            let code = provider
                .get_code_at(withdrawal.recipient)
                .await
                .map_err(|error| Trouble::Retry(format!("the recipient's code: {error}")))?;
            if code.is_empty() {
                return Ok(21_000);
            }
        }
        provider.estimate_gas(probe).await.map_err(|error| match error.as_error_resp() {
            Some(payload) => Trouble::Fail(format!("the node would not execute it: {}", payload.message)),
            None => Trouble::Retry(format!("estimating gas: {error}")),
        })
    }

    /// The fees to pay now, reused for [`FEES_FOR`].
    async fn current_fees(&self) -> Result<Fees, Trouble> {
        if let Some((at, fees)) = *self.fee_cache.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < FEES_FOR
        {
            return Ok(fees);
        }
        let fees = chain::fees(self.manager.provider())
            .await
            .map_err(|error| Trouble::Retry(format!("fees from the node: {error}")))?;
        *self.fee_cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), fees));
        Ok(fees)
    }

    /// Signs a transaction of `withdrawal` with `nonce`, `gas` and `fees`, writes the audit record and
    /// stores the transaction; returns it.
    async fn sign_attempt(
        &self,
        key: &Key,
        withdrawal: &Withdrawal,
        nonce: u64,
        gas: u64,
        fees: Fees,
    ) -> Result<Attempt, Trouble> {
        let mut request = fees.apply(withdrawal_request(key.signer.address(), withdrawal).nonce(nonce).gas_limit(gas));
        request.chain_id = Some(key.chain_id);
        let unsigned = request
            .build_typed_tx()
            .map_err(|request| Trouble::Fail(format!("cannot build the transaction from {request:?}")))?;
        let started = Instant::now();
        let signature = key.signer.sign_digest(&unsigned.signature_hash()).await.map_err(|error| {
            self.count_kms_error(&error);
            Trouble::Fail(format!("signing failed: {error}"))
        })?;
        self.metrics.observe(started.elapsed().as_secs_f64());
        let envelope: TxEnvelope = unsigned.into_envelope(signature);
        let method = if withdrawal.kind == Kind::GapFill { "gap_fill" } else { "withdrawals" };
        self.audit(json!({
            "kind": "signature", "method": method, "client": withdrawal.client, "key": key.name,
            "address": key.signer.address(), "withdrawal": withdrawal.id, "nonce": nonce, "tx_hash": envelope.tx_hash(),
            "to": withdrawal.recipient, "asset": withdrawal.asset.to_string(), "amount": withdrawal.amount.to_string(),
            "chain_id": key.chain_id,
        }))
        .map_err(|error| Trouble::Fail(error.message))?;
        Metrics::count(&self.metrics.signatures, method);
        let (max_fee_per_gas, priority_fee_per_gas) = match fees {
            Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => (max_fee_per_gas, max_priority_fee_per_gas),
            Fees::Legacy { gas_price } => (gas_price, gas_price),
        };
        let attempt = Attempt {
            tx_hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            max_fee_per_gas,
            priority_fee_per_gas,
            signed_ms: now_ms(),
        };
        let journal = self.journal.as_ref().ok_or_else(|| Trouble::Fail("no journal".into()))?;
        journal
            .add_attempt(&withdrawal.id, nonce, attempt.clone())
            .await
            .map_err(|error| Trouble::Retry(format!("storing the signed transaction: {error}")))?;
        Ok(attempt)
    }

    /// Takes an accepted withdrawal (or a gap fill) to `submitted`, or to `failed`.
    async fn process(self: &Arc<Self>, mut withdrawal: Withdrawal) {
        self.recovered().await;
        let Some(key) = self.keys.get(&withdrawal.key) else {
            self.fail(&withdrawal, None, &format!("no key named `{}` in the configuration", withdrawal.key)).await;
            return;
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.try_process(key, &mut withdrawal).await {
                Ok(()) => return,
                Err(Trouble::Fail(reason)) => {
                    self.fail(&withdrawal, None, &reason).await;
                    return;
                }
                Err(Trouble::Retry(reason)) => {
                    if self.stopping.load(Ordering::Relaxed) {
                        eprintln!("ethkms-server: withdrawal {} left for the next start: {reason}", withdrawal.id);
                        return;
                    }
                    eprintln!("ethkms-server: withdrawal {}: {reason}; retrying in {delay:?}", withdrawal.id);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn try_process(&self, key: &Key, withdrawal: &mut Withdrawal) -> Result<(), Trouble> {
        let from = key.signer.address();
        let waiting = key.waiting.start();
        let gas = self.gas(withdrawal, withdrawal_request(from, withdrawal)).await?;
        let fees = self.current_fees().await?;
        // A gap fill was stored with the nonce it fills; a withdrawal takes one now.
        let nonce = match (withdrawal.kind, withdrawal.nonce) {
            (Kind::GapFill, Some(nonce)) => nonce,
            _ => key.nonces.lock().unwrap_or_else(PoisonError::into_inner).allocate(),
        };
        drop(waiting);
        let attempt = match self.sign_attempt(key, withdrawal, nonce, gas, fees).await {
            Ok(attempt) => attempt,
            Err(trouble) => {
                key.nonces.lock().unwrap_or_else(PoisonError::into_inner).release(nonce);
                return Err(trouble);
            }
        };
        withdrawal.nonce = Some(nonce);
        withdrawal.status = Status::Signed;
        withdrawal.tx_hash = Some(attempt.tx_hash);
        withdrawal.attempts.push(attempt.clone());
        self.track(withdrawal.clone(), false);
        if withdrawal.kind == Kind::GapFill {
            self.metrics.gaps_filled.fetch_add(1, Ordering::Relaxed);
        }
        match self.broadcast(&attempt.raw).await {
            Broadcast::Accepted => self.submitted(&withdrawal.id).await,
            Broadcast::Unknown(reason) => {
                // The watcher broadcasts it again until the node has it or its nonce is mined.
                eprintln!("ethkms-server: broadcasting withdrawal {}: {reason}; will retry", withdrawal.id);
            }
            Broadcast::NonceUsed => {
                // Signed with a nonce someone else used: this transaction can never be mined. Start
                // again from the node's count.
                self.untrack(&withdrawal.id);
                if let Ok(pending) = chain::nonce(self.manager.provider(), from).await {
                    key.nonces.lock().unwrap_or_else(PoisonError::into_inner).observe_pending(pending);
                }
                let journal = self.journal.as_ref().ok_or_else(|| Trouble::Fail("no journal".into()))?;
                journal.reset(&withdrawal.id).await.map_err(|error| Trouble::Retry(error.to_string()))?;
                withdrawal.nonce = None;
                withdrawal.status = Status::Accepted;
                withdrawal.attempts.clear();
                if withdrawal.kind == Kind::GapFill {
                    // The gap is gone: someone else filled it.
                    self.fail(withdrawal, None, "the nonce was used by another transaction").await;
                    return Ok(());
                }
                return Err(Trouble::Retry(format!("nonce {nonce} was used by another transaction")));
            }
            Broadcast::Underpriced(reason) | Broadcast::Refused(reason) => {
                self.untrack(&withdrawal.id);
                self.fail(withdrawal, Some((key, nonce)), &format!("the node refused the transaction: {reason}")).await;
            }
        }
        Ok(())
    }

    async fn submitted(&self, id: &str) {
        if let Some(in_flight) = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).get_mut(id) {
            in_flight.submitted = true;
            in_flight.withdrawal.status = Status::Submitted;
        }
        if let Some(journal) = &self.journal
            && let Err(error) = journal.mark_submitted(id).await
        {
            eprintln!("ethkms-server: withdrawal {id}: {error}");
        }
    }

    /// Marks `withdrawal` failed; a nonce it held (never accepted by the node) is given back.
    async fn fail(&self, withdrawal: &Withdrawal, nonce: Option<(&Key, u64)>, reason: &str) {
        if let Some((key, nonce)) = nonce {
            key.nonces.lock().unwrap_or_else(PoisonError::into_inner).release(nonce);
        }
        Metrics::count(&self.metrics.withdrawals, "failed");
        eprintln!("ethkms-server: withdrawal {} failed: {reason}", withdrawal.id);
        if let Some(journal) = &self.journal
            && let Err(error) = journal.mark_failed(&withdrawal.id, reason).await
        {
            eprintln!("ethkms-server: withdrawal {}: {error}", withdrawal.id);
        }
    }

    fn track(&self, withdrawal: Withdrawal, submitted: bool) {
        let id = withdrawal.id.clone();
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, InFlight { withdrawal, submitted, misses: 0 });
    }

    fn untrack(&self, id: &str) {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    /// After a start: sets each key's nonces from the node and the journal, broadcasts stored
    /// transactions again and processes withdrawals that had none. Retries until the node answers.
    pub(crate) async fn recover(self: &Arc<Self>) {
        let Some(journal) = self.journal.clone() else {
            let _ = self.recovered.send(true);
            return;
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.try_recover(&journal).await {
                Ok(()) => break,
                Err(reason) => {
                    eprintln!("ethkms-server: recovering the withdrawal journal: {reason}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        let _ = self.recovered.send(true);
    }

    async fn try_recover(self: &Arc<Self>, journal: &Journal) -> Result<(), String> {
        let unfinished = journal.unfinished().await.map_err(|error| error.to_string())?;
        let mut held: HashMap<&str, BTreeSet<u64>> = HashMap::new();
        for withdrawal in &unfinished {
            if let (Some(nonce), false) = (withdrawal.nonce, withdrawal.attempts.is_empty()) {
                held.entry(withdrawal.key.as_str()).or_default().insert(nonce);
            }
        }
        for key in self.keys.values() {
            let pending = chain::nonce(self.manager.provider(), key.signer.address())
                .await
                .map_err(|error| format!("the nonce of `{}`: {error}", key.name))?;
            let nonces = held.get(key.name.as_str()).cloned().unwrap_or_default();
            key.nonces.lock().unwrap_or_else(PoisonError::into_inner).recover(pending, &nonces);
        }
        for withdrawal in unfinished {
            match (withdrawal.kind, withdrawal.attempts.last().cloned()) {
                (_, Some(last)) => {
                    // Broadcast again as it is; the watcher sees it mined (or re-broadcasts it).
                    let accepted = matches!(self.broadcast(&last.raw).await, Broadcast::Accepted);
                    self.track(withdrawal, accepted);
                }
                (Kind::Withdrawal, None) => self.spawn_processing(withdrawal),
                (Kind::GapFill, None) => {
                    // Recomputed above: its nonce is free again if still a gap.
                    let _ = journal.mark_failed(&withdrawal.id, "superseded after a restart").await;
                }
            }
        }
        Ok(())
    }

    /// The watcher: every poll interval, settles mined withdrawals, re-broadcasts stuck ones and fills
    /// nonce gaps. Runs until the service stops.
    pub(crate) async fn watch(self: Arc<Self>) {
        self.recovered().await;
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping.load(Ordering::Relaxed) {
            ticker.tick().await;
            for key in self.keys.values() {
                if let Err(reason) = self.watch_key(key).await {
                    eprintln!("ethkms-server: watching key `{}`: {reason}", key.name);
                }
            }
        }
    }

    async fn watch_key(self: &Arc<Self>, key: &Key) -> Result<(), String> {
        let busy = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|entry| entry.withdrawal.key == key.name);
        let has_gaps = !key.nonces.lock().unwrap_or_else(PoisonError::into_inner).gaps().is_empty();
        if !busy && !has_gaps {
            return Ok(());
        }
        let address = key.signer.address();
        let mined_count = self
            .manager
            .provider()
            .get_transaction_count(address)
            .latest()
            .await
            .map_err(|error| format!("nonce: {error}"))?;
        let now = now_ms();
        let rebroadcast_after = u64::try_from(self.settings.rebroadcast_after.as_millis()).unwrap_or(u64::MAX);
        // Only what needs attention is copied: mined, not yet confirmed by the node, or unmined long.
        let (mined, waiting): (Vec<_>, Vec<_>) = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|entry| {
                let last_signed = entry.withdrawal.attempts.last().map_or(0, |last| last.signed_ms);
                entry.withdrawal.key == key.name
                    && (entry.withdrawal.nonce.is_some_and(|nonce| nonce < mined_count)
                        || !entry.submitted
                        || now.saturating_sub(last_signed) >= rebroadcast_after)
            })
            .map(|entry| (entry.withdrawal.clone(), entry.submitted))
            .partition(|(withdrawal, _)| withdrawal.nonce.is_some_and(|nonce| nonce < mined_count));
        let settle = mined.iter().map(|(withdrawal, _)| self.settle(withdrawal));
        futures_util::future::join_all(settle).await;
        // Re-signed with higher fees, once unmined for `rebroadcast_after`: the transaction holding
        // the key's next nonce (everything after it waits for it), and any paying less than the
        // market now. The others wait their turn rather than being re-signed all at once.
        let unmined_long = |withdrawal: &Withdrawal| {
            withdrawal.attempts.last().is_some_and(|last| now.saturating_sub(last.signed_ms) >= rebroadcast_after)
        };
        let market = if waiting.iter().any(|(withdrawal, _)| unmined_long(withdrawal)) {
            match self.current_fees().await {
                Ok(Fees::Eip1559 { max_fee_per_gas, .. }) => max_fee_per_gas,
                Ok(Fees::Legacy { gas_price }) => gas_price,
                Err(_) => 0,
            }
        } else {
            0
        };
        let mut stuck = Vec::new();
        for (withdrawal, submitted) in waiting {
            let Some(last) = withdrawal.attempts.last() else { continue };
            let blocking = withdrawal.nonce == Some(mined_count);
            if unmined_long(&withdrawal) && (blocking || last.max_fee_per_gas < market) {
                stuck.push(withdrawal);
            } else if !submitted && matches!(self.broadcast(&last.raw).await, Broadcast::Accepted) {
                self.submitted(&withdrawal.id).await;
            }
        }
        let bumps = stuck.iter().map(|withdrawal| self.bump(key, withdrawal));
        futures_util::future::join_all(bumps).await;
        self.fill_gaps(key, mined_count).await;
        Ok(())
    }

    /// A mined nonce: finds which of the withdrawal's transactions was mined.
    async fn settle(self: &Arc<Self>, withdrawal: &Withdrawal) {
        for attempt in withdrawal.attempts.iter().rev() {
            match self.manager.provider().get_transaction_receipt(attempt.tx_hash).await {
                Ok(Some(receipt)) => {
                    let success = receipt.status();
                    let block = receipt.block_number.unwrap_or_default();
                    if let Some(journal) = &self.journal
                        && let Err(error) = journal.mark_mined(&withdrawal.id, attempt.tx_hash, block, success).await
                    {
                        eprintln!("ethkms-server: withdrawal {}: {error}", withdrawal.id);
                        return;
                    }
                    self.untrack(&withdrawal.id);
                    Metrics::count(&self.metrics.withdrawals, if success { "mined" } else { "failed" });
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    eprintln!("ethkms-server: receipt of {}: {error}", attempt.tx_hash);
                    return;
                }
            }
        }
        // None of ours was mined with that nonce (yet: a node may answer the count before the
        // receipt). Never signed again with another nonce — if one of its transactions was mined after
        // all, that would pay twice — but reported until a receipt turns up.
        let misses = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = in_flight.get_mut(&withdrawal.id) else { return };
            entry.misses += 1;
            entry.misses
        };
        if misses == MISSES_BEFORE_WARNING {
            self.metrics.unresolved.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "ethkms-server: withdrawal {}: nonce {:?} is mined but none of its {} transactions has a receipt; \
                 it stays `submitted` until one does (another transaction may have used the nonce: check the chain)",
                withdrawal.id,
                withdrawal.nonce,
                withdrawal.attempts.len()
            );
        }
    }

    /// Signs `withdrawal` again with its nonce and fees at least 10% higher, and broadcasts it.
    async fn bump(&self, key: &Key, withdrawal: &Withdrawal) {
        let (Some(nonce), Some(last)) = (withdrawal.nonce, withdrawal.attempts.last()) else { return };
        let Ok(envelope) = TxEnvelope::decode_2718(&mut last.raw.as_ref()) else { return };
        let market = self.current_fees().await.ok();
        let fees = bumped_fees(&envelope, market);
        match self.sign_attempt(key, withdrawal, nonce, envelope.gas_limit(), fees).await {
            Ok(attempt) => {
                self.metrics.rebroadcasts.fetch_add(1, Ordering::Relaxed);
                let accepted = matches!(self.broadcast(&attempt.raw).await, Broadcast::Accepted);
                let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = in_flight.get_mut(&withdrawal.id) {
                    entry.withdrawal.attempts.push(attempt.clone());
                    entry.withdrawal.tx_hash = Some(attempt.tx_hash);
                    entry.submitted = accepted;
                }
            }
            Err(Trouble::Fail(reason) | Trouble::Retry(reason)) => {
                eprintln!("ethkms-server: re-broadcasting withdrawal {}: {reason}", withdrawal.id);
            }
        }
    }

    /// Fills each free nonce below those in use with a zero-value transfer to the key itself, unless a
    /// withdrawal of this key is about to take it.
    async fn fill_gaps(self: &Arc<Self>, key: &Key, mined_count: u64) {
        let gaps = {
            let mut nonces = key.nonces.lock().unwrap_or_else(PoisonError::into_inner);
            if key.waiting.count() > 0 {
                return;
            }
            let gaps: Vec<u64> = nonces.gaps().into_iter().filter(|nonce| *nonce >= mined_count).collect();
            gaps.into_iter().filter(|nonce| nonces.take(*nonce)).collect::<Vec<_>>()
        };
        let Some(journal) = self.journal.clone() else { return };
        for nonce in gaps {
            match journal.insert_gap_fill(&key.name, key.signer.address(), nonce).await {
                Ok(fill) => {
                    eprintln!("ethkms-server: filling nonce gap {nonce} of key `{}` ({})", key.name, fill.id);
                    self.spawn_processing(fill);
                }
                Err(error) => {
                    key.nonces.lock().unwrap_or_else(PoisonError::into_inner).release(nonce);
                    eprintln!("ethkms-server: storing a gap fill: {error}");
                }
            }
        }
    }
}

/// The fees of a replacement for `envelope`: at least 10% above its own (rounded up), and at least the
/// market's.
fn bumped_fees(envelope: &TxEnvelope, market: Option<Fees>) -> Fees {
    let bump = |fee: u128| fee.saturating_add(fee.div_ceil(10)).max(fee + 1);
    match envelope.max_priority_fee_per_gas() {
        Some(priority) => {
            let (mut max_fee, mut priority) = (bump(envelope.max_fee_per_gas()), bump(priority));
            if let Some(Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas }) = market {
                max_fee = max_fee.max(max_fee_per_gas);
                priority = priority.max(max_priority_fee_per_gas);
            }
            Fees::Eip1559 { max_fee_per_gas: max_fee.max(priority), max_priority_fee_per_gas: priority }
        }
        None => {
            let mut price = bump(envelope.gas_price().unwrap_or_default());
            if let Some(Fees::Legacy { gas_price }) = market {
                price = price.max(gas_price);
            }
            Fees::Legacy { gas_price: price }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxLegacy};
    use alloy_primitives::Signature;

    fn envelope_1559(max_fee: u128, priority: u128) -> TxEnvelope {
        let tx = TxEip1559 { max_fee_per_gas: max_fee, max_priority_fee_per_gas: priority, ..TxEip1559::default() };
        tx.into_signed(Signature::test_signature()).into()
    }

    #[test]
    fn replacements_pay_at_least_ten_percent_more_and_at_least_the_market() {
        let Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } = bumped_fees(&envelope_1559(1000, 15), None)
        else {
            panic!("an EIP-1559 transaction is replaced by one")
        };
        assert_eq!((max_fee_per_gas, max_priority_fee_per_gas), (1100, 17));
        // Tiny fees still go up.
        let Fees::Eip1559 { max_priority_fee_per_gas: tiny, .. } = bumped_fees(&envelope_1559(1, 1), None) else {
            panic!()
        };
        assert_eq!(tiny, 2);
        let market = Fees::Eip1559 { max_fee_per_gas: 5000, max_priority_fee_per_gas: 100 };
        let Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } =
            bumped_fees(&envelope_1559(1000, 15), Some(market))
        else {
            panic!()
        };
        assert_eq!((max_fee_per_gas, max_priority_fee_per_gas), (5000, 100));
        let legacy: TxEnvelope = TxLegacy { gas_price: 2_000_000_001, ..TxLegacy::default() }
            .into_signed(Signature::test_signature())
            .into();
        assert_eq!(bumped_fees(&legacy, None), Fees::Legacy { gas_price: 2_200_000_002 });
    }
}
