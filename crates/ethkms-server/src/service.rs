//! The HTTP service: JSON-RPC 2.0 signing for authenticated clients, with every transaction checked by
//! the policy engine before any KMS request and every signature and denial recorded in the audit log
//! (flushed to disk) before the answer leaves; other `eth_*` calls are proxied to the upstream node.
//! Also `/healthz`, `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

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
use tokio::sync::Mutex as AsyncMutex;

use crate::config::{ClientConfig, Config};
use crate::policy::{Denial, PolicyEngine, SignRequest};
use crate::rpc::{Call, RequestBody, RpcError, parse_body};

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
struct Key {
    name: String,
    signer: KmsSigner,
    /// The next nonce, once known; held while a transaction of this key is signed and sent, so
    /// concurrent sends get contiguous nonces and a failed send leaves no gap.
    nonce: AsyncMutex<Option<u64>>,
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    signatures: Mutex<BTreeMap<String, u64>>,
    denials: Mutex<BTreeMap<String, u64>>,
    kms_errors: Mutex<BTreeMap<String, u64>>,
    /// Signing latency histogram: counts per upper bound in seconds, then the sum in microseconds.
    latency_buckets: [AtomicU64; 8],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

const LATENCY_BOUNDS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl Metrics {
    fn count(map: &Mutex<BTreeMap<String, u64>>, label: &str) {
        *map.lock().unwrap_or_else(PoisonError::into_inner).entry(label.to_owned()).or_default() += 1;
    }

    fn observe(&self, seconds: f64) {
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
        let _ = writeln!(
            text,
            "# HELP ethkms_requests_total JSON-RPC requests received.\n# TYPE ethkms_requests_total counter\nethkms_requests_total {}",
            self.requests.load(Ordering::Relaxed)
        );
        counter(&mut text, "ethkms_signatures_total", "Signatures released, by method.", "method", &self.signatures);
        counter(&mut text, "ethkms_policy_denials_total", "Requests denied by policy, by rule.", "rule", &self.denials);
        counter(&mut text, "ethkms_kms_errors_total", "Key service errors, by kind.", "kind", &self.kms_errors);
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
    config: Config,
    manager: WalletManager,
    keys: BTreeMap<String, Key>,
    by_address: BTreeMap<Address, String>,
    policy: Mutex<PolicyEngine>,
    audit: Mutex<AuditLog>,
    metrics: Metrics,
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
}

impl Service {
    /// Opens every configured key (one `GetPublicKey` each) and the audit log.
    ///
    /// # Errors
    /// [`StartError`] naming the key or file that failed.
    pub async fn start(config: Config, backend: Arc<dyn KeyBackend>) -> Result<Arc<Self>, StartError> {
        let manager = WalletManager::with_backend(backend, ChainSettings::new(config.upstream.clone()))
            .map_err(StartError::Upstream)?;
        let mut keys = BTreeMap::new();
        let mut by_address = BTreeMap::new();
        let mut policies = std::collections::HashMap::new();
        for (name, key) in &config.keys {
            let reference = KeyRef::new(key.key.clone())
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let handle = ethkms::backend::KeyHandle::open(Arc::clone(manager.backend()), reference)
                .await
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let signer = KmsSigner::from_handle(handle, Some(key.chain_id));
            by_address.insert(signer.address(), name.clone());
            policies.insert(name.clone(), key.policy.clone());
            keys.insert(name.clone(), Key { name: name.clone(), signer, nonce: AsyncMutex::new(None) });
        }
        let audit = AuditLog::open(&config.audit_log)?;
        Ok(Arc::new(Self {
            config,
            manager,
            keys,
            by_address,
            policy: Mutex::new(PolicyEngine::new(policies)),
            audit: Mutex::new(audit),
            metrics: Metrics::default(),
        }))
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", post(rpc))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(self))
    }

    fn audit(&self, event: Value) -> Result<(), RpcError> {
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
        RpcError::new(codes::SERVER_ERROR, error.to_string())
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
        if let Err(Denial { rule, message }) = checked {
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
                // One transaction of this key at a time: contiguous nonces, no gap after a failure. The
                // node's pending count is consulted every time, so transactions sent from the same key
                // elsewhere (the CLI, an operator) do not leave the service with a stale nonce.
                let mut next = key.nonce.lock().await;
                let pending_count =
                    chain::nonce(self.manager.provider(), from).await.map_err(|error| self.backend_error(&error))?;
                let nonce = next.map_or(pending_count, |cached| cached.max(pending_count));
                let raw = self.sign_transaction(client_name, key, method, request, Some(nonce)).await?;
                let pending = match self.manager.provider().send_raw_transaction(&raw).await {
                    Ok(pending) => pending,
                    Err(error) => {
                        // Not sent: the nonce stays free for the next request; ask the node again then.
                        *next = None;
                        return Err(RpcError::new(
                            codes::SERVER_ERROR,
                            format!("the node refused the transaction: {error}"),
                        ));
                    }
                };
                *next = Some(nonce + 1);
                Ok(json!(pending.tx_hash()))
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

fn bearer(headers: &HeaderMap) -> Option<&str> {
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

/// Serves `service` on `listener` until `shutdown` resolves, then finishes the requests in flight (up to
/// 30 s). With `tls`, over HTTPS (rustls) with that certificate and key.
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
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_secs(30)));
    });
    listener.set_nonblocking(true)?;
    match tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key).await?;
            axum_server::from_tcp_rustls(listener, config)?.handle(handle).serve(app.into_make_service()).await
        }
        None => axum_server::from_tcp(listener)?.handle(handle).serve(app.into_make_service()).await,
    }
}
