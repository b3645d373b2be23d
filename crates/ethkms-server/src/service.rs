//! The HTTP service: JSON-RPC 2.0 signing for authenticated clients, with every transaction checked by
//! the policy engine before any KMS request and every signature and denial recorded in the audit log
//! (flushed to disk) before the answer leaves; other `eth_*` calls are proxied to the upstream node.
//! Transactions (`eth_signTransaction`, `eth_sendTransaction`) take their nonce from the
//! [withdrawal engine](crate::withdrawals), which journals, broadcasts, bumps and confirms them like
//! withdrawals. Also the routes of [`crate::withdrawals`], `/healthz`, `/readyz`, `/metrics` and `/openapi.json`
//! (the [OpenAPI document](crate::withdrawals::openapi)); a path that matches no route is answered a JSON
//! `404`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use alloy_primitives::{Address, hex};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::Signer;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ethkms::eth::SignerError;
use serde_json::{Value, json};

pub use crate::app::{Service, StartError};
use crate::config::ClientConfig;
use crate::journal::LimitCheck;
use crate::limits::{BodyError, ConnectionCap, read_body};
use crate::policy::{Denial, PolicyEngine, SignRequest, TypedRequest, totals};
use crate::rpc::{Call, RequestBody, RpcError, parse_body};
use crate::shared::Key;
use crate::withdrawals::engine::{FailureKind, RpcFailure};

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
    /// The key service or the node failed, or the key cannot be used (`data.kind` says which,
    /// `data.retryable` whether trying again later may help).
    pub const SERVER_ERROR: i64 = -32000;
    /// The key service is throttling signatures (EIP-1474 "limit exceeded"): retry later, more slowly.
    pub const LIMIT_EXCEEDED: i64 = -32005;
    /// Invalid method parameters: the client's own mistake, not worth retrying as it is.
    pub const INVALID_PARAMS: i64 = -32602;
}

/// The JSON-RPC answer for a signer error, by whose fault it is: throttling is `-32005`, a key-service or
/// node failure a server error (`data.retryable` when trying later may help), and only what the request
/// itself got wrong is invalid params.
fn signer_error(error: &SignerError) -> RpcError {
    use ethkms::backend::BackendError;
    let (code, kind, retryable) = match error {
        SignerError::Backend(BackendError::Throttled { .. }) => (codes::LIMIT_EXCEEDED, "kms_throttled", true),
        SignerError::Backend(backend) if backend.is_retryable() => (codes::SERVER_ERROR, "kms_unavailable", true),
        SignerError::Backend(_) => (codes::SERVER_ERROR, "kms", false),
        SignerError::Rpc(_) => (codes::SERVER_ERROR, "node", true),
        SignerError::ReceiptTimeout { .. } | SignerError::Reverted { .. } => {
            (codes::SERVER_ERROR, "transaction", false)
        }
        _ => (codes::INVALID_PARAMS, "invalid_params", false),
    };
    RpcError::with_data(code, error.to_string(), json!({ "kind": kind, "retryable": retryable }))
}

/// The JSON-RPC answer for a transaction the engine gave up on (nothing was signed, or nothing broadcast).
fn engine_failure(failure: RpcFailure) -> RpcError {
    let (code, kind, retryable) = match failure.kind {
        FailureKind::Client => (codes::INVALID_PARAMS, "invalid_params", false),
        FailureKind::Throttled => (codes::LIMIT_EXCEEDED, "kms_throttled", true),
        FailureKind::Unavailable => (codes::SERVER_ERROR, "unavailable", true),
        FailureKind::Server => (codes::SERVER_ERROR, "server", false),
    };
    RpcError::with_data(code, failure.reason, json!({ "kind": kind, "retryable": retryable }))
}

impl Service {
    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        // The REST API: the client is authenticated before any of the body is read, and no body is read past
        // MAX_BODY_BYTES (an anonymous multi-gigabyte request costs nothing).
        let rest = Router::new()
            .route("/v1/withdrawals", post(crate::withdrawals::api::post))
            .route("/v1/withdrawals/{id}", get(crate::withdrawals::api::get))
            .route("/v1/withdrawals/{id}/cancel", post(crate::withdrawals::api::cancel))
            .route("/v1/withdrawals/{id}/approvals", post(crate::approvals::api::decide))
            .route("/v1/approvals", get(crate::approvals::api::list))
            .route(
                "/v1/keys/{key}/allowlist",
                post(crate::approvals::allowlist::propose).get(crate::approvals::allowlist::list),
            )
            .route("/v1/keys/{key}/allowlist/{address}", delete(crate::approvals::allowlist::remove))
            .route("/v1/keys/{key}/allowlist/{address}/approvals", post(crate::approvals::allowlist::decide))
            .route("/v1/deposit-addresses", post(crate::deposits::api::post_address))
            .route("/v1/deposits", get(crate::deposits::api::list))
            .route("/v1/webhooks/deliveries", get(crate::webhooks::api::deliveries))
            .route_layer(axum::middleware::from_fn_with_state(Arc::clone(self), authenticated));
        // Signing and withdrawals take one of `limits.max_in_flight_requests` slots, or are answered 503 at
        // once; the probes and metrics never wait behind them.
        let limited = Router::new()
            .route("/", post(rpc))
            .merge(rest)
            .route_layer(axum::middleware::from_fn_with_state(Arc::clone(self), within_capacity));
        Router::new()
            .route("/healthz", get(crate::probes::healthz))
            .route("/readyz", get(crate::probes::ready))
            .route("/metrics", get(crate::probes::metrics))
            .route("/openapi.json", get(crate::withdrawals::openapi::openapi_json))
            .merge(limited)
            .fallback(crate::withdrawals::api::no_route)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(self))
    }

    async fn audit(&self, event: Value) -> Result<(), RpcError> {
        self.shared.audit(event).await.map_err(|error| RpcError::new(codes::SERVER_ERROR, error.to_string()))
    }

    fn key_for(&self, client: &ClientConfig, method: &str, address: &Value) -> Result<&Key, RpcError> {
        let address: Address = serde_json::from_value(address.clone())
            .map_err(|_| RpcError::new(-32602, format!("`{address}` is not an address")))?;
        let name = self
            .shared
            .by_address
            .get(&address)
            .ok_or_else(|| RpcError::new(codes::FORBIDDEN, format!("{address} is not a key of this service")))?;
        if !client.may(method, name) {
            return Err(RpcError::new(
                codes::FORBIDDEN,
                format!("this client may not call {method} with key `{name}`"),
            ));
        }
        self.shared.keys.get(name).ok_or_else(|| RpcError::new(codes::SERVER_ERROR, "key vanished"))
    }

    fn backend_error(&self, error: &SignerError) -> RpcError {
        self.shared.count_kms_error(error);
        signer_error(error)
    }

    async fn sign_message(&self, client_name: &str, key: &Key, method: &str, data: &Value) -> Result<Value, RpcError> {
        let text = data.as_str().ok_or_else(|| RpcError::new(-32602, "the message must be a string"))?;
        let message = match text.strip_prefix("0x").map(hex::decode) {
            Some(Ok(bytes)) => bytes,
            _ => text.as_bytes().to_vec(),
        };
        let started = Instant::now();
        let signature =
            key.signer.sign_message(&message).await.map_err(|error| self.backend_error(&SignerError::from(error)))?;
        self.shared.metrics.signing_seconds.observe(started.elapsed().as_secs_f64());
        self.audit(json!({
            "kind": "signature", "method": method, "client": client_name, "key": key.name,
            "address": key.address(), "digest": alloy_primitives::B256::from(ethkms::core::eip191_hash_message(&message)),
        })).await?;
        self.shared.metrics.signatures.inc(method);
        Ok(json!(signature.to_string()))
    }

    /// `eth_signTransaction` and `eth_sendTransaction`: checks the policy (the amount counted against the
    /// limits in the same step), stores the transaction in the journal and has the engine take a nonce,
    /// sign, store and broadcast it. `eth_signTransaction` answers the signed bytes, `eth_sendTransaction`
    /// the hash; either way the engine follows the transaction to confirmation (broadcasting it again and
    /// bumping its fees as needed), since its nonce is taken.
    async fn transaction(
        &self,
        client_name: &str,
        key: &Key,
        method: &str,
        request: TransactionRequest,
    ) -> Result<Value, RpcError> {
        let engine = self.engine.as_ref().ok_or_else(|| {
            RpcError::new(codes::SERVER_ERROR, "transactions need a journal: set `journal` in the configuration")
        })?;
        if let Some(reason) = engine.halted() {
            return Err(RpcError::new(codes::SERVER_ERROR, format!("the engine is halted: {reason}")));
        }
        if !engine.is_recovered() {
            return Err(RpcError::new(
                codes::SERVER_ERROR,
                "the service is recovering its journal after a start; try again in a moment",
            ));
        }
        let policy_request = SignRequest::from_transaction(&key.name, key.chain_id, &request);
        let chain = policy_request.chain_id;
        // Every rule but the daily limit first, so that a denial names its rule before a wrong chain is
        // reported (with nothing spent, only the transaction's own amount counts).
        let precheck = self.policy().check_spent(&policy_request, &crate::journal::Spent::new(), SystemTime::now());
        if let Err(denial) = precheck {
            let details = crate::shared::request_fields(&request);
            return Err(self.denied(client_name, key, method, denial, details).await);
        }
        if chain != key.chain_id {
            return Err(RpcError::new(
                -32602,
                format!("chain id {chain}: key `{}` signs for chain {}; nothing was signed", key.name, key.chain_id),
            ));
        }
        // Checked and counted against the daily limits in the journal's transaction that stores it, so that
        // concurrent requests — on any replica — cannot both pass a limit.
        let check = crate::shared::limit_check(&self.shared, policy_request);
        match engine.transact(client_name, method, key, &request, check).await {
            Ok(Ok(attempt)) if method == "eth_signTransaction" => Ok(json!(attempt.raw)),
            Ok(Ok(attempt)) => Ok(json!(attempt.tx_hash)),
            Ok(Err(denial)) => {
                let details = crate::shared::request_fields(&request);
                Err(self.denied(client_name, key, method, denial, details).await)
            }
            Err(failure) => Err(engine_failure(failure)),
        }
    }

    /// `eth_signTypedData_v4`: parsed once, into the digest signed and what the policy checks (what permits
    /// allow is counted against the limits, given back if the signature fails, and kept in the journal).
    async fn sign_typed(&self, client_name: &str, key: &Key, method: &str, json: &str) -> Result<Value, RpcError> {
        let typed = TypedRequest::parse(json).map_err(|error| RpcError::new(-32602, error.to_string()))?;
        let now = SystemTime::now();
        // With a journal, what permits allow is counted there (every replica's), under its lock; without
        // one, in this process.
        let tag = format!("typed-{}", uuid::Uuid::new_v4());
        let checked = match &self.engine {
            Some(engine) => {
                let assets = self.policy().limited_assets(&key.name);
                let (shared, name, chain_id, typed) =
                    (Arc::clone(&self.shared), key.name.clone(), key.chain_id, typed.clone());
                let check = LimitCheck {
                    assets,
                    check: Box::new(move |spent| {
                        let policy = shared.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        policy
                            .check_typed_spent(&name, chain_id, &typed, now, spent)
                            .map(|movements| totals(&movements).into_iter().collect())
                    }),
                };
                match engine.journal.record_spends(&key.name, &tag, check).await {
                    Ok(checked) => checked.map(|_| Vec::new()),
                    Err(error) => {
                        return Err(RpcError::new(codes::SERVER_ERROR, format!("{error}; nothing was signed")));
                    }
                }
            }
            None => self.policy().check_typed_and_record(&key.name, key.chain_id, &typed, now),
        };
        let movements = match checked {
            Ok(movements) => movements,
            Err(denial) => {
                let details = json!({ "primary_type": typed.primary_type, "digest": typed.digest });
                return Err(self.denied(client_name, key, method, denial, details).await);
            }
        };
        let started = Instant::now();
        let signature = match key.signer.sign_digest(&typed.digest).await {
            Ok(signature) => signature,
            Err(error) => {
                match &self.engine {
                    Some(engine) => {
                        if let Err(release) = engine.journal.release_spends(&tag).await {
                            tracing::warn!(key = %key.name, %release, "a permit's amounts stay counted");
                        }
                    }
                    None => {
                        self.policy().forget(&key.name, &movements, now);
                    }
                }
                return Err(self.backend_error(&error));
            }
        };
        self.shared.metrics.signing_seconds.observe(started.elapsed().as_secs_f64());
        self.audit(json!({
            "kind": "signature", "method": method, "client": client_name, "key": key.name,
            "address": key.address(), "digest": typed.digest,
        }))
        .await?;
        self.shared.metrics.signatures.inc(method);
        Ok(json!(signature.to_string()))
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, PolicyEngine> {
        self.shared.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A policy denial: counted, audited (with `details`), and answered `-32003` naming the rule.
    async fn denied(&self, client_name: &str, key: &Key, method: &str, denial: Denial, details: Value) -> RpcError {
        let Denial { rule, message } = denial;
        self.shared.metrics.denials.inc(rule.name());
        let mut record = json!({
            "kind": "denial", "method": method, "client": client_name, "key": key.name,
            "rule": rule.name(), "reason": message,
        });
        if let (Some(record), Value::Object(details)) = (record.as_object_mut(), details) {
            record.extend(details);
        }
        if let Err(error) = self.audit(record).await {
            return error;
        }
        RpcError::with_data(
            codes::POLICY_DENIED,
            format!("denied by policy rule `{rule}`: {message}"),
            json!({ "rule": rule.name() }),
        )
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
                self.shared
                    .keys
                    .values()
                    .filter(|key| client.keys.contains(&key.name))
                    .map(Key::address)
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
                self.sign_typed(client_name, key, method, &json).await
            }
            "eth_signTransaction" | "eth_sendTransaction" => {
                let request: TransactionRequest = serde_json::from_value(param(0)?.clone())
                    .map_err(|error| RpcError::new(-32602, format!("not a transaction object: {error}")))?;
                let from = request.from.ok_or_else(|| RpcError::new(-32602, "the transaction needs `from`"))?;
                let key = self.key_for(client, method, &json!(from))?;
                self.transaction(client_name, key, method, request).await
            }
            other if other.starts_with("eth_") => {
                let result: Value = self
                    .shared
                    .manager
                    .provider()
                    .raw_request(other.to_owned().into(), params.to_vec())
                    .await
                    .map_err(|error| {
                        RpcError::new(codes::SERVER_ERROR, crate::shared::redact_urls(&format!("upstream: {error}")))
                    })?;
                Ok(result)
            }
            other => Err(RpcError::new(-32601, format!("method `{other}` does not exist here"))),
        }
    }
}

/// The header that names a REST request, for the audit log and the client's own logs: the client's if it
/// sends one (1 to 128 visible ASCII characters), else a new UUID; answered back either way.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Lets a request through to a REST route only with a known bearer token, before its body is read; then
/// reads the body, at most [`MAX_BODY_BYTES`] within the body timeout, and answers it as request
/// [`REQUEST_ID_HEADER`].
async fn authenticated(
    State(service): State<Arc<Service>>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    if let Err(error) = crate::withdrawals::api::authenticate(&service, request.headers()) {
        return error.into_response();
    }
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let (parts, body) = request.into_parts();
    let mut response = match read_body(body, MAX_BODY_BYTES, service.config.limits.body_timeout()).await {
        Ok(bytes) => {
            let request = Request::from_parts(parts, Body::from(bytes));
            crate::shared::with_request_id(json!(request_id), next.run(request)).await
        }
        Err(error) => {
            let message = body_message(&error, service.config.limits.body_timeout());
            closing(crate::withdrawals::api::unread_body(&error, message).into_response())
        }
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Runs a signing or withdrawal request if one of the in-flight slots is free, else answers 503 at once.
async fn within_capacity(
    State(service): State<Arc<Service>>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let refuse = |what: &str| crate::withdrawals::api::overloaded(what).into_response();
    crate::limits::within_capacity(&service.in_flight, &service.shared.metrics.overload, refuse, || next.run(request))
        .await
}

fn body_message(error: &BodyError, timeout: Duration) -> String {
    match error {
        BodyError::TooLarge => format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        BodyError::TooSlow => format!("the request body was not sent within {} s", timeout.as_secs()),
    }
}

/// 413 for a body over the limit, 408 for one sent too slowly, with `body` as the JSON answer.
fn body_refusal(error: &BodyError, body: impl FnOnce() -> Value) -> Response {
    let status = match error {
        BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
    };
    closing((status, axum::Json(body())).into_response())
}

/// `response` with `Connection: close`: the rest of an unread body is never read, so the connection cannot
/// carry another request, and the client must not reuse it.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn rpc(State(service): State<Arc<Service>>, request: Request<Body>) -> Response {
    service.shared.metrics.requests.inc();
    let client = bearer(request.headers()).and_then(|token| service.config.authenticate(token));
    let Some((client_name, client)) = client else {
        let error = RpcError::new(codes::UNAUTHORIZED, "missing or unknown bearer token (Authorization: Bearer …)");
        return (StatusCode::UNAUTHORIZED, axum::Json(error.to_json(&Value::Null))).into_response();
    };
    let timeout = service.config.limits.body_timeout();
    let body = match read_body(request.into_body(), MAX_BODY_BYTES, timeout).await {
        Ok(body) => body,
        Err(error) => {
            return body_refusal(&error, || RpcError::new(-32600, body_message(&error, timeout)).to_json(&Value::Null));
        }
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
    let answer =
        crate::shared::with_request_id(call.id.clone(), service.call(client_name, client, &call.method, &call.params));
    match answer.await {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": call.id, "result": result }),
        Err(error) => error.to_json(&call.id),
    }
}

/// Resolves on SIGINT or SIGTERM: the `shutdown` to give [`serve`] in a process of its own (the
/// `ethkms-server` binary, `ethkms serve`).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = interrupt.await;
        return;
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
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
    let limits = service.config.limits;
    let refusals = service.shared.metrics.overload.clone();
    // Connections past the cap are closed before any TLS handshake; a client has `header_timeout` to send
    // each request's headers, the first request's too.
    let served = match tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key).await?;
            let mut server = axum_server::from_tcp_rustls(listener, config)?
                .map(|tls| ConnectionCap::new(tls, limits.max_connections, refusals))
                .first_request_timeout(limits.header_timeout());
            server.http_builder().http1().header_read_timeout(limits.header_timeout());
            server.handle(handle).serve(app.into_make_service()).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .map(|plain| ConnectionCap::new(plain, limits.max_connections, refusals))
                .first_request_timeout(limits.header_timeout());
            server.http_builder().http1().header_read_timeout(limits.header_timeout());
            server.handle(handle).serve(app.into_make_service()).await
        }
    };
    stopping.stop(Duration::from_secs(30)).await;
    served
}
