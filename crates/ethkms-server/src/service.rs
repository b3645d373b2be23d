//! The HTTP service: JSON-RPC 2.0 signing for authenticated clients, with every transaction checked by
//! the policy engine before any KMS request and every signature and denial recorded in the audit log
//! (flushed to disk) before the answer leaves; other `eth_*` calls are proxied to the upstream node.
//! Also the REST withdrawals of [`crate::withdrawals`], `/healthz`, `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use alloy_eips::eip2718::Encodable2718;
use alloy_network::{Ethereum, EthereumWallet, NetworkTransactionBuilder};
use alloy_primitives::{Address, Bytes, U256, hex};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::Signer;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ethkms::audit::AuditLog;
use ethkms::backend::{BackendError, KeyBackend, KeyRef};
use ethkms::eth::{KmsSigner, SignerError, chain};
use ethkms::{ChainSettings, WalletManager};
use serde_json::{Value, json};

use crate::config::{ClientConfig, Config};
use crate::journal::{Journal, now_ms};
use crate::nonces::Nonces;
use crate::policy::{Denial, Movement, PolicyEngine, SignRequest};
use crate::rpc::{Call, RequestBody, RpcError, parse_body};
use crate::withdrawals::{InFlight, WithdrawalSettings};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// JSON-RPC error codes used besides the standard ones.
pub mod codes {
    /// Missing or unknown bearer token.
    pub const UNAUTHORIZED: i64 = -32001;
    /// The client may not use this method or key.
    pub const FORBIDDEN: i64 = -32002;
    /// A policy rule denied the transaction.
    pub const POLICY_DENIED: i64 = -32003;
    /// The key service or the node failed.
    pub const SERVER_ERROR: i64 = -32000;
}

/// One configured key, opened.
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) signer: KmsSigner,
    pub(crate) chain_id: u64,
    /// Its nonces: contiguous for concurrent transactions, and given back when the node refuses one.
    pub(crate) nonces: Mutex<Nonces>,
    /// Withdrawals of this key about to take a nonce (a free nonce is not filled while any is).
    pub(crate) waiting: WorkCounter,
}

/// Counts pieces of work in progress; each [`WorkCounter::start`] guard counts until dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkCounter {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

/// One piece of work of a [`WorkCounter`].
pub(crate) struct WorkGuard(WorkCounter);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl WorkCounter {
    pub(crate) fn start(&self) -> WorkGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        WorkGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in progress, or `timeout`; returns whether it got there.
    async fn idle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    requests: AtomicU64,
    pub(crate) signatures: Mutex<BTreeMap<String, u64>>,
    pub(crate) denials: Mutex<BTreeMap<String, u64>>,
    pub(crate) kms_errors: Mutex<BTreeMap<String, u64>>,
    /// Withdrawals by what became of them: accepted, mined, failed.
    pub(crate) withdrawals: Mutex<BTreeMap<String, u64>>,
    pub(crate) gaps_filled: AtomicU64,
    pub(crate) rebroadcasts: AtomicU64,
    pub(crate) unresolved: AtomicU64,
    /// Signing latency histogram: counts per upper bound in seconds, then the sum in microseconds.
    latency_buckets: [AtomicU64; 8],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

const LATENCY_BOUNDS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl Metrics {
    pub(crate) fn count(map: &Mutex<BTreeMap<String, u64>>, label: &str) {
        *map.lock().unwrap_or_else(PoisonError::into_inner).entry(label.to_owned()).or_default() += 1;
    }

    pub(crate) fn observe(&self, seconds: f64) {
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BOUNDS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        // Microseconds fit in u64 for any latency this service can have.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.latency_sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut text = String::new();
        let counter = |text: &mut String, name: &str, help: &str, label: &str, map: &Mutex<BTreeMap<String, u64>>| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, count) in map.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                let _ = writeln!(text, "{name}{{{label}=\"{value}\"}} {count}");
            }
        };
        let single = |text: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        single(&mut text, "ethkms_requests_total", "JSON-RPC requests received.", &self.requests);
        counter(&mut text, "ethkms_signatures_total", "Signatures released, by method.", "method", &self.signatures);
        counter(&mut text, "ethkms_policy_denials_total", "Requests denied by policy, by rule.", "rule", &self.denials);
        counter(&mut text, "ethkms_kms_errors_total", "Key service errors, by kind.", "kind", &self.kms_errors);
        counter(
            &mut text,
            "ethkms_withdrawals_total",
            "Withdrawals accepted, mined and failed.",
            "status",
            &self.withdrawals,
        );
        single(
            &mut text,
            "ethkms_nonce_gaps_filled_total",
            "Nonce gaps filled with a zero-value transfer to the key itself.",
            &self.gaps_filled,
        );
        single(
            &mut text,
            "ethkms_rebroadcasts_total",
            "Transactions signed again with higher fees after staying unmined.",
            &self.rebroadcasts,
        );
        single(
            &mut text,
            "ethkms_withdrawals_unresolved_total",
            "Withdrawals whose nonce was mined without a receipt for any of their transactions (another \
             transaction may have used the nonce).",
            &self.unresolved,
        );
        let name = "ethkms_signing_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time to sign, KMS request and verification included.\n# TYPE {name} histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BOUNDS) {
            let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
        text
    }
}

/// The running service's state.
pub struct Service {
    pub(crate) config: Config,
    pub(crate) manager: WalletManager,
    pub(crate) keys: BTreeMap<String, Key>,
    by_address: BTreeMap<Address, String>,
    pub(crate) policy: Mutex<PolicyEngine>,
    audit: Mutex<AuditLog>,
    pub(crate) metrics: Metrics,
    pub(crate) journal: Option<Journal>,
    pub(crate) settings: WithdrawalSettings,
    /// Withdrawals signed and not yet mined, by id.
    pub(crate) in_flight: Mutex<HashMap<String, InFlight>>,
    pub(crate) fee_cache: Mutex<Option<(Instant, chain::Fees)>>,
    /// Background work (withdrawals being signed and sent) that shutdown waits for.
    pub(crate) work: WorkCounter,
    pub(crate) stopping: AtomicBool,
    /// `true` once the journal has been recovered after the start.
    pub(crate) recovered: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("listen", &self.config.listen)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("clients", &self.config.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A key could not be opened.
    #[error("key `{name}`: {source}")]
    Key {
        /// The key's name in the configuration.
        name: String,
        /// Why.
        source: SignerError,
    },
    /// The audit log could not be opened (or does not verify).
    #[error(transparent)]
    Audit(#[from] ethkms::audit::AuditError),
    /// The upstream URL is invalid.
    #[error(transparent)]
    Upstream(SignerError),
    /// The withdrawal journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

impl Service {
    /// Opens every configured key (one `GetPublicKey` each), the audit log and the withdrawal journal;
    /// replays the journal's amounts into the daily limits, then (in the background, retrying until the
    /// node answers) broadcasts its signed transactions again and resumes its unfinished withdrawals.
    ///
    /// # Errors
    /// [`StartError`] naming the key or file that failed.
    pub async fn start(config: Config, backend: Arc<dyn KeyBackend>) -> Result<Arc<Self>, StartError> {
        let manager = WalletManager::with_backend(backend, ChainSettings::new(config.upstream.clone()))
            .map_err(StartError::Upstream)?;
        let mut keys = BTreeMap::new();
        let mut by_address = BTreeMap::new();
        let mut policies = HashMap::new();
        for (name, key) in &config.keys {
            let reference = KeyRef::new(key.key.clone())
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let handle = ethkms::backend::KeyHandle::open(Arc::clone(manager.backend()), reference)
                .await
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let signer = KmsSigner::from_handle(handle, Some(key.chain_id));
            by_address.insert(signer.address(), name.clone());
            policies.insert(name.clone(), key.policy.clone());
            keys.insert(
                name.clone(),
                Key {
                    name: name.clone(),
                    signer,
                    chain_id: key.chain_id,
                    nonces: Mutex::new(Nonces::default()),
                    waiting: WorkCounter::default(),
                },
            );
        }
        let audit = AuditLog::open(&config.audit_log)?;
        let mut policy = PolicyEngine::new(policies);
        let journal = match &config.journal {
            Some(path) => {
                let journal = Journal::open(path)?;
                let day = u64::try_from(crate::policy::DAY.as_millis()).unwrap_or(u64::MAX);
                for (key, asset, amount, at_ms) in journal.spends_since(now_ms().saturating_sub(day)).await? {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
                    policy.record(&key, Movement { asset, recipient: Address::ZERO, amount }, at);
                }
                Some(journal)
            }
            None => None,
        };
        let service = Arc::new(Self {
            settings: config.withdrawals,
            config,
            manager,
            keys,
            by_address,
            policy: Mutex::new(policy),
            audit: Mutex::new(audit),
            metrics: Metrics::default(),
            journal,
            in_flight: Mutex::new(HashMap::new()),
            fee_cache: Mutex::new(None),
            work: WorkCounter::default(),
            stopping: AtomicBool::new(false),
            recovered: tokio::sync::watch::Sender::new(false),
        });
        let recovering = Arc::clone(&service);
        tokio::spawn(async move { recovering.recover().await });
        if service.journal.is_some() {
            tokio::spawn(Arc::clone(&service).watch());
        }
        Ok(service)
    }

    /// Stops background work: waits up to `timeout` for withdrawals being signed and sent (what is
    /// left resumes at the next start), stops the watcher and closes the journal.
    pub async fn stop(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        if !self.work.idle(timeout).await {
            eprintln!(
                "ethkms-server: {} withdrawals still in progress; they resume at the next start",
                self.work.count()
            );
        }
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", post(rpc))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .route("/v1/withdrawals", post(crate::withdrawals::post))
            .route("/v1/withdrawals/{id}", get(crate::withdrawals::get))
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(self))
    }

    pub(crate) fn audit(&self, event: Value) -> Result<(), RpcError> {
        self.audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(event)
            .map(|_| ())
            .map_err(|error| RpcError::new(codes::SERVER_ERROR, format!("audit log: {error}; nothing was released")))
    }

    fn key_for(&self, client: &ClientConfig, method: &str, address: &Value) -> Result<&Key, RpcError> {
        let address: Address = serde_json::from_value(address.clone())
            .map_err(|_| RpcError::new(-32602, format!("`{address}` is not an address")))?;
        let name = self
            .by_address
            .get(&address)
            .ok_or_else(|| RpcError::new(codes::FORBIDDEN, format!("{address} is not a key of this service")))?;
        if !client.may(method, name) {
            return Err(RpcError::new(
                codes::FORBIDDEN,
                format!("this client may not call {method} with key `{name}`"),
            ));
        }
        self.keys.get(name).ok_or_else(|| RpcError::new(codes::SERVER_ERROR, "key vanished"))
    }

    fn backend_error(&self, error: &SignerError) -> RpcError {
        self.count_kms_error(error);
        RpcError::new(codes::SERVER_ERROR, error.to_string())
    }

    /// Counts a key-service error by kind (`ethkms_kms_errors_total`); other errors are not counted.
    pub(crate) fn count_kms_error(&self, error: &SignerError) {
        let kind = match &error {
            SignerError::Backend(BackendError::Throttled { .. }) => "throttled",
            SignerError::Backend(BackendError::Timeout { .. } | BackendError::Transport { .. }) => "transport",
            SignerError::Backend(BackendError::InvalidSignature { .. }) => "invalid_signature",
            SignerError::Backend(_) => "other",
            _ => "",
        };
        if !kind.is_empty() {
            Metrics::count(&self.metrics.kms_errors, kind);
        }
    }

    async fn sign_message(&self, client_name: &str, key: &Key, method: &str, data: &Value) -> Result<Value, RpcError> {
        let text = data.as_str().ok_or_else(|| RpcError::new(-32602, "the message must be a string"))?;
        let message = match text.strip_prefix("0x").map(hex::decode) {
            Some(Ok(bytes)) => bytes,
            _ => text.as_bytes().to_vec(),
        };
        let started = Instant::now();
        let signature = key
            .signer
            .sign_message(&message)
            .await
            .map_err(|error| RpcError::new(codes::SERVER_ERROR, error.to_string()))?;
        self.metrics.observe(started.elapsed().as_secs_f64());
        self.audit(json!({
            "kind": "signature", "method": method, "client": client_name, "key": key.name,
            "address": key.signer.address(), "digest": alloy_primitives::B256::from(ethkms::core::eip191_hash_message(&message)),
        }))?;
        Metrics::count(&self.metrics.signatures, method);
        Ok(json!(signature.to_string()))
    }

    /// Checks the policy, fills the transaction, signs it (audit record first) and returns the raw bytes.
    async fn sign_transaction(
        &self,
        client_name: &str,
        key: &Key,
        method: &str,
        mut request: TransactionRequest,
        nonce: Option<u64>,
    ) -> Result<Bytes, RpcError> {
        let chain_id = key.signer.chain_id().unwrap_or_default();
        let chain = request.chain_id.unwrap_or(chain_id);
        let to = request.to.and_then(|to| to.to().copied()).unwrap_or_default();
        let policy_request = SignRequest {
            key: key.name.clone(),
            chain_id: chain,
            to,
            value: request.value.unwrap_or(U256::ZERO),
            data: request.input.input().cloned().unwrap_or_default(),
        };
        // Checked and counted against the limits in one step, so that concurrent requests cannot both
        // pass a daily limit. If signing fails afterwards the amount stays counted: the safe side.
        let checked = self
            .policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check_and_record(&policy_request, SystemTime::now());
        let movement = match checked {
            Ok(movement) => movement,
            Err(Denial { rule, message }) => {
                Metrics::count(&self.metrics.denials, &rule.to_string());
                self.audit(json!({
                "kind": "denial", "method": method, "client": client_name, "key": key.name, "rule": rule.to_string(),
                "reason": message, "to": to, "value": policy_request.value.to_string(),
            }))?;
                return Err(RpcError::with_data(
                    codes::POLICY_DENIED,
                    format!("denied by policy rule `{rule}`: {message}"),
                    json!({ "rule": rule.to_string() }),
                ));
            }
        };
        if let Some(journal) = &self.journal {
            journal
                .record_spend(&key.name, movement.asset, movement.amount)
                .await
                .map_err(|error| RpcError::new(codes::SERVER_ERROR, format!("{error}; nothing was signed")))?;
        }
        let from = key.signer.address();
        request.from = Some(from);
        request.chain_id = Some(chain);
        if nonce.is_some() {
            request.nonce = nonce;
        }
        let request =
            chain::fill_request(self.manager.provider(), request).await.map_err(|error| self.backend_error(&error))?;
        let started = Instant::now();
        let wallet = EthereumWallet::from(key.signer.clone());
        let envelope = NetworkTransactionBuilder::<Ethereum>::build(request, &wallet)
            .await
            .map_err(|error| RpcError::new(-32602, format!("cannot sign the transaction: {error}")))?;
        self.metrics.observe(started.elapsed().as_secs_f64());
        let raw: Bytes = envelope.encoded_2718().into();
        // In the audit log, flushed, before the signature leaves.
        self.audit(json!({
            "kind": "signature", "method": method, "client": client_name, "key": key.name, "address": from,
            "tx_hash": envelope.tx_hash(), "to": to, "value": policy_request.value.to_string(), "chain_id": chain,
        }))?;
        Metrics::count(&self.metrics.signatures, method);
        Ok(raw)
    }

    async fn call(
        &self,
        client_name: &str,
        client: &ClientConfig,
        method: &str,
        params: &[Value],
    ) -> Result<Value, RpcError> {
        let param = |index: usize| {
            params.get(index).ok_or_else(|| RpcError::new(-32602, format!("{method} needs parameter {}", index + 1)))
        };
        match method {
            "eth_accounts" => Ok(json!(
                self.keys
                    .values()
                    .filter(|key| client.keys.contains(&key.name))
                    .map(|key| key.signer.address())
                    .collect::<Vec<_>>()
            )),
            "personal_sign" => {
                let key = self.key_for(client, method, param(1)?)?;
                self.sign_message(client_name, key, method, param(0)?).await
            }
            "eth_sign" => {
                let key = self.key_for(client, method, param(0)?)?;
                self.sign_message(client_name, key, method, param(1)?).await
            }
            "eth_signTypedData_v4" => {
                let key = self.key_for(client, method, param(0)?)?;
                let typed = param(1)?;
                let json = typed.as_str().map_or_else(|| typed.to_string(), str::to_owned);
                let digest =
                    ethkms::eth::typed_data_hash(&json).map_err(|error| RpcError::new(-32602, error.to_string()))?;
                let started = Instant::now();
                let signature = key.signer.sign_digest(&digest).await.map_err(|error| self.backend_error(&error))?;
                self.metrics.observe(started.elapsed().as_secs_f64());
                self.audit(json!({
                    "kind": "signature", "method": method, "client": client_name, "key": key.name,
                    "address": key.signer.address(), "digest": digest,
                }))?;
                Metrics::count(&self.metrics.signatures, method);
                Ok(json!(signature.to_string()))
            }
            "eth_signTransaction" | "eth_sendTransaction" => {
                let request: TransactionRequest = serde_json::from_value(param(0)?.clone())
                    .map_err(|error| RpcError::new(-32602, format!("not a transaction object: {error}")))?;
                let from = request.from.ok_or_else(|| RpcError::new(-32602, "the transaction needs `from`"))?;
                let key = self.key_for(client, method, &json!(from))?;
                if method == "eth_signTransaction" {
                    return Ok(json!(self.sign_transaction(client_name, key, method, request, None).await?));
                }
                // Contiguous nonces shared with withdrawals; a nonce whose transaction is not sent is
                // given back. The node's pending count is consulted every time, so transactions sent
                // from the same key elsewhere (the CLI, an operator) do not leave a stale nonce.
                let pending_count =
                    chain::nonce(self.manager.provider(), from).await.map_err(|error| self.backend_error(&error))?;
                let nonce = {
                    let mut nonces = key.nonces.lock().unwrap_or_else(PoisonError::into_inner);
                    nonces.observe_pending(pending_count);
                    nonces.allocate()
                };
                let give_back = || key.nonces.lock().unwrap_or_else(PoisonError::into_inner).release(nonce);
                let raw = match self.sign_transaction(client_name, key, method, request, Some(nonce)).await {
                    Ok(raw) => raw,
                    Err(error) => {
                        give_back();
                        return Err(error);
                    }
                };
                match self.manager.provider().send_raw_transaction(&raw).await {
                    Ok(pending) => Ok(json!(pending.tx_hash())),
                    Err(error) => {
                        give_back();
                        Err(RpcError::new(codes::SERVER_ERROR, format!("the node refused the transaction: {error}")))
                    }
                }
            }
            other if other.starts_with("eth_") => {
                let result: Value = self
                    .manager
                    .provider()
                    .raw_request(other.to_owned().into(), params.to_vec())
                    .await
                    .map_err(|error| RpcError::new(codes::SERVER_ERROR, format!("upstream: {error}")))?;
                Ok(result)
            }
            other => Err(RpcError::new(-32601, format!("method `{other}` does not exist here"))),
        }
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn rpc(State(service): State<Arc<Service>>, request: Request<Body>) -> Response {
    service.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let client = bearer(request.headers()).and_then(|token| service.config.authenticate(token));
    let Some((client_name, client)) = client else {
        let error = RpcError::new(codes::UNAUTHORIZED, "missing or unknown bearer token (Authorization: Bearer …)");
        return (StatusCode::UNAUTHORIZED, axum::Json(error.to_json(&Value::Null))).into_response();
    };
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await else {
        let error = RpcError::new(-32600, format!("the request body is larger than {MAX_BODY_BYTES} bytes"));
        return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(error.to_json(&Value::Null))).into_response();
    };
    let answer = match parse_body(&body) {
        Err(error) => error.to_json(&Value::Null),
        Ok(RequestBody::Single(call)) => one(&service, client_name, client, call).await,
        Ok(RequestBody::Batch(calls)) => {
            let mut answers = Vec::with_capacity(calls.len());
            for call in calls {
                answers.push(one(&service, client_name, client, call).await);
            }
            Value::Array(answers)
        }
    };
    axum::Json(answer).into_response()
}

async fn one(
    service: &Service,
    client_name: &str,
    client: &ClientConfig,
    call: Result<Call, (Value, RpcError)>,
) -> Value {
    let call = match call {
        Ok(call) => call,
        Err((id, error)) => return error.to_json(&id),
    };
    match service.call(client_name, client, &call.method, &call.params).await {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": call.id, "result": result }),
        Err(error) => error.to_json(&call.id),
    }
}

async fn ready(State(service): State<Arc<Service>>) -> Response {
    for key in service.keys.values() {
        let reference = key.signer.handle().key().clone();
        if let Err(error) = service.manager.backend().public_key(&reference).await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("key `{}`: {error}", key.name)).into_response();
        }
    }
    match service.manager.provider().get_chain_id().await {
        Ok(_) => "ready".into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("upstream node: {error}")).into_response(),
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], service.metrics.render()).into_response()
}

/// Serves `service` on `listener` until `shutdown` resolves, then finishes the requests in flight and the
/// withdrawals being signed and sent (up to 30 s each) and closes the journal. With `tls`, over HTTPS
/// (rustls) with that certificate and key.
///
/// # Errors
/// The certificate or key cannot be read, or serving fails.
pub async fn serve(
    service: Arc<Service>,
    listener: std::net::TcpListener,
    tls: Option<&crate::config::TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = service.router();
    let stopping = Arc::clone(&service);
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    listener.set_nonblocking(true)?;
    let served = match tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key).await?;
            axum_server::from_tcp_rustls(listener, config)?.handle(handle).serve(app.into_make_service()).await
        }
        None => axum_server::from_tcp(listener)?.handle(handle).serve(app.into_make_service()).await,
    };
    stopping.stop(Duration::from_secs(30)).await;
    served
}
