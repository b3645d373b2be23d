//! A fault-injecting JSON-RPC proxy for tests.
//!
//! [`RpcProxy`] listens on 127.0.0.1 (a free port) and forwards every JSON-RPC `POST` body to an
//! upstream node, answering with the node's status and body, except when it injects a fault:
//!
//! - **forwarded then error** ([`Faults::forwarded_then_error`]), for `eth_sendRawTransaction` only: the
//!   request *is* forwarded (the node has the transaction), then the client is told it failed with a
//!   JSON-RPC error it has never seen before (HTTP 200, the request's id, code `-32000`). The nastiest
//!   fault: a client that re-signs with another nonce pays twice.
//! - **bad gateway** ([`Faults::bad_gateway`]), any method: not forwarded; HTTP 502 or 503 (the random
//!   sequence picks) with a short `text/plain` body.
//! - **dropped connection** ([`Faults::drop_connection`]), any method: forwarded first or not (the random
//!   sequence picks; [`ProxyStats::dropped_after_forward`] counts the forwarded ones), then the connection
//!   is closed before a single byte of the response is written, so the client sees a transport error.
//! - **outage** ([`RpcProxy::set_outage`], [`RpcProxy::outage_for`]): every request has its connection
//!   dropped without being forwarded. (Refusing connections is not possible while the socket listens, and
//!   a dropped connection is what a client sees of a node that died mid-request.)
//!
//! - **newest state ahead** ([`RpcProxy::set_newest_state_ahead`]): an `eth_getBalance` of the node's
//!   newest block is held until the next block is mined and answered with that block's balance — what anvil
//!   does now and then.
//!
//! It also records every raw transaction sent through it ([`RpcProxy::raw_transactions`]), forwarded or
//! not: with a proxy per client, a test knows what each one tried to broadcast, and when.
//!
//! # How a connection is dropped
//!
//! The handler answers with a response whose body stream fails on its first poll. hyper buffers the
//! response head and polls the body before flushing anything; the body error aborts the connection with
//! the head still unwritten, so the client reads end-of-stream where a response should be (reqwest:
//! `Err`, "connection closed before message completed"). The request body has been read in full by
//! then, so the socket closes cleanly rather than being reset. The crate's tests check that reqwest gets
//! an `Err` and not a response.
//!
//! # Determinism
//!
//! Every request that is not refused by an outage takes exactly two values from a
//! `ChaCha8Rng::seed_from_u64(seed)` behind a mutex (one picks the fault, one the variant: 502 or 503,
//! forwarded before the drop or not), whatever the outcome. The same seed, probabilities and sequence of
//! requests therefore give the same sequence of decisions; concurrent requests take their values in the
//! order they reach the mutex.
//!
//! The faults occupy fixed, consecutive bands of the unit interval, in the order
//! `forwarded_then_error`, `bad_gateway`, `drop_connection`; each probability is the chance of its fault
//! per request. A request that is not an `eth_sendRawTransaction` and falls in the
//! `forwarded_then_error` band is passed through unchanged.
//!
//! # Batches
//!
//! A batch (a JSON array) is one request for the decision: bad gateway and dropped connection apply to
//! the whole batch. If the batch contains `eth_sendRawTransaction` calls with an id, the after-forward
//! error applies too: the batch is forwarded and the answers to those calls (matched by id) are replaced
//! by the injected error, the other answers kept. Bodies that are not JSON are forwarded unchanged
//! (bad gateway and dropped connection still apply).

mod ahead;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// The JSON-RPC method whose answers [`Faults::forwarded_then_error`] replaces.
const SEND_RAW: &str = "eth_sendRawTransaction";

/// The message of the injected JSON-RPC error: no client should recognise it.
pub const INJECTED_ERROR_MESSAGE: &str = "proxy: upstream answered something unfamiliar (injected fault)";

/// The code of the injected JSON-RPC error (a generic server error).
pub const INJECTED_ERROR_CODE: i64 = -32000;

/// How often each fault is injected: probabilities per request, in `[0, 1]`, summing to at most 1.
///
/// The seed is given once, to [`RpcProxy::start`]; [`RpcProxy::set_faults`] changes the probabilities
/// while the random sequence keeps going. Start from [`Faults::none`]:
///
/// ```
/// use ethkms_test_support::rpc_proxy::Faults;
///
/// let faults = Faults { forwarded_then_error: 0.2, drop_connection: 0.1, ..Faults::none() };
/// assert_eq!(faults.bad_gateway, 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// `eth_sendRawTransaction` is forwarded, then answered with a JSON-RPC error
    /// ([`INJECTED_ERROR_MESSAGE`]) instead of the node's answer.
    pub forwarded_then_error: f64,
    /// Not forwarded; HTTP 502 or 503.
    pub bad_gateway: f64,
    /// Forwarded or not, then the connection is closed without a response.
    pub drop_connection: f64,
}

impl Faults {
    /// No faults: every request is passed through.
    #[must_use]
    pub const fn none() -> Self {
        Self { forwarded_then_error: 0.0, bad_gateway: 0.0, drop_connection: 0.0 }
    }

    /// Panics unless every field is a probability and their sum is at most 1.
    fn check(&self) {
        for (name, probability) in [
            ("forwarded_then_error", self.forwarded_then_error),
            ("bad_gateway", self.bad_gateway),
            ("drop_connection", self.drop_connection),
        ] {
            assert!((0.0..=1.0).contains(&probability), "Faults::{name} must be in [0, 1], not {probability}");
        }
        let sum = self.forwarded_then_error + self.bad_gateway + self.drop_connection;
        assert!(sum <= 1.0 + 1e-9, "the probabilities of Faults must sum to at most 1, not {sum}");
    }

    /// The decision for a roll in `[0, 1)` and a coin; `sends_raw` if the request carries an
    /// `eth_sendRawTransaction` the after-forward error can replace.
    fn pick(&self, roll: f64, coin: bool, sends_raw: bool) -> Decision {
        let mut edge = self.forwarded_then_error;
        if roll < edge {
            return if sends_raw { Decision::ForwardThenError } else { Decision::Pass };
        }
        edge += self.bad_gateway;
        if roll < edge {
            return Decision::BadGateway(if coin { StatusCode::BAD_GATEWAY } else { StatusCode::SERVICE_UNAVAILABLE });
        }
        edge += self.drop_connection;
        if roll < edge {
            return Decision::Drop { forward_first: coin };
        }
        Decision::Pass
    }
}

/// What the proxy did so far. Every request counts once in `requests` and at most once in each other
/// field (`dropped_after_forward` is part of `dropped`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests received (any outcome).
    pub requests: u64,
    /// Requests the upstream answered (with any HTTP status), including those whose answer was then
    /// replaced by a fault.
    pub forwarded: u64,
    /// Requests forwarded, then answered with the injected JSON-RPC error.
    pub forwarded_then_error: u64,
    /// Requests answered with an injected 502 or 503, not forwarded.
    pub bad_gateway: u64,
    /// Requests whose connection was dropped by an injected fault (not counting outages).
    pub dropped: u64,
    /// The part of `dropped` the upstream answered before the connection was dropped.
    pub dropped_after_forward: u64,
    /// Requests whose connection was dropped because of an outage, not forwarded.
    pub outage_refused: u64,
    /// Requests the upstream did not answer (a transport error); the client got a 502 (or the dropped
    /// connection it was going to get anyway).
    pub upstream_failed: u64,
    /// Balance reads of the newest block answered with the next block's balance
    /// ([`RpcProxy::set_newest_state_ahead`]).
    pub newest_state_ahead: u64,
}

/// A raw transaction a client sent through the proxy (`eth_sendRawTransaction`, alone or in a batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTransactionSent {
    /// When the proxy received it.
    pub at: SystemTime,
    /// The transaction, as sent: `0x`-prefixed hex of its EIP-2718 encoding.
    pub raw: String,
}

/// A fault-injecting JSON-RPC proxy on 127.0.0.1; see the [module documentation](self).
///
/// Dropping it stops the server: it stops accepting connections, idle connections are closed, and any
/// request still arriving on an open connection has its connection dropped without being forwarded.
///
/// ```no_run
/// use std::time::Duration;
///
/// use ethkms_test_support::rpc_proxy::{Faults, RpcProxy};
///
/// # async fn demo(anvil_url: &str) -> std::io::Result<()> {
/// // Seed 7: a failing run is reproduced by running it again with the same seed.
/// let faults = Faults { forwarded_then_error: 0.3, bad_gateway: 0.1, drop_connection: 0.1 };
/// let proxy = RpcProxy::start(anvil_url, 7, faults).await?;
/// // Point the code under test at `proxy.url()` instead of the node, then:
/// proxy.outage_for(Duration::from_secs(2));
/// // ... later, let everything through and check that faults happened.
/// proxy.set_faults(Faults::none());
/// assert!(proxy.stats().forwarded_then_error > 0);
/// # Ok(())
/// # }
/// ```
pub struct RpcProxy {
    url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl RpcProxy {
    /// Starts a proxy to `upstream` (an `http://` URL) on a free port of 127.0.0.1, with the random
    /// sequence `ChaCha8Rng::seed_from_u64(seed)`.
    ///
    /// # Errors
    ///
    /// If the socket cannot be bound or the HTTP client cannot be built.
    ///
    /// # Panics
    ///
    /// If `faults` are not probabilities summing to at most 1, or outside a Tokio runtime.
    pub async fn start(upstream: &str, seed: u64, faults: Faults) -> std::io::Result<Self> {
        faults.check();
        let client = reqwest::Client::builder().no_proxy().build().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            client,
            control: Mutex::new(Control {
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults,
                outage: Outage::Off,
                newest_state_ahead: false,
                stats: ProxyStats::default(),
                sent: Vec::new(),
            }),
        });
        let app = Router::new().fallback(handle).layer(DefaultBodyLimit::disable()).with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                debug!(%error, "rpc proxy: server stopped");
            }
        });
        debug!(%url, upstream, seed, ?faults, "rpc proxy: started");
        Ok(Self { url, shared, server })
    }

    /// The proxy's URL, `http://127.0.0.1:<port>/`: give it to the client under test.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// With `true`, every `eth_getBalance` of the node's newest block (by tag, number or hash) is held
    /// until the next block is mined and answered with that block's balance, as anvil does now and then; a
    /// client that takes a read of the newest block for that block's state is caught at once.
    pub fn set_newest_state_ahead(&self, on: bool) {
        self.shared.control().newest_state_ahead = on;
    }

    /// Changes the probabilities from the next request on; the random sequence keeps going.
    ///
    /// # Panics
    ///
    /// If `faults` are not probabilities summing to at most 1.
    pub fn set_faults(&self, faults: Faults) {
        faults.check();
        self.shared.control().faults = faults;
    }

    /// Starts (`true`) or ends (`false`) an outage: while it lasts, every request has its connection
    /// dropped without being forwarded. Replaces any [`outage_for`](Self::outage_for) in progress.
    pub fn set_outage(&self, on: bool) {
        self.shared.control().outage = if on { Outage::On } else { Outage::Off };
    }

    /// Starts an outage that ends by itself after `duration` (replacing any outage in progress); like
    /// [`set_outage(true)`](Self::set_outage), then `set_outage(false)` once `duration` has passed.
    ///
    /// The end is a deadline checked by each request rather than a timer task, so this needs no
    /// runtime and an earlier call can never end a later outage.
    pub fn outage_for(&self, duration: Duration) {
        self.shared.control().outage = Instant::now().checked_add(duration).map_or(Outage::On, Outage::Until);
    }

    /// What the proxy did so far.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        self.shared.control().stats
    }

    /// Every raw transaction sent through the proxy so far, in the order received, whatever the proxy
    /// then did with it.
    #[must_use]
    pub fn raw_transactions(&self) -> Vec<RawTransactionSent> {
        self.shared.control().sent.clone()
    }
}

impl fmt::Debug for RpcProxy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let control = self.shared.control();
        formatter
            .debug_struct("RpcProxy")
            .field("url", &self.url)
            .field("upstream", &self.shared.upstream)
            .field("faults", &control.faults)
            .field("outage", &control.outage)
            .field("stats", &control.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        // Aborting the accept loop closes the listener and asks open connections to shut down
        // gracefully; a request that still arrives on one is dropped, not forwarded.
        self.shared.control().outage = Outage::On;
        self.server.abort();
    }
}

/// What the handler and the [`RpcProxy`] share.
struct Shared {
    upstream: String,
    client: reqwest::Client,
    control: Mutex<Control>,
}

/// The mutable part, behind one mutex (never held across an await).
struct Control {
    rng: ChaCha8Rng,
    faults: Faults,
    outage: Outage,
    newest_state_ahead: bool,
    stats: ProxyStats,
    sent: Vec<RawTransactionSent>,
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    Off,
    On,
    Until(Instant),
}

/// What to do with one request.
#[derive(Clone, Copy, Debug)]
enum Decision {
    Pass,
    ForwardThenError,
    BadGateway(StatusCode),
    Drop { forward_first: bool },
}

/// The upstream's answer.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        match self.content_type {
            Some(content_type) => response.headers_mut().insert(CONTENT_TYPE, content_type),
            None => response.headers_mut().remove(CONTENT_TYPE),
        };
        response
    }
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the request, records its raw transactions and decides; `None` during an outage.
    fn decide(&self, call: &Call) -> Option<Decision> {
        let mut control = self.control();
        control.stats.requests += 1;
        let at = SystemTime::now();
        control.sent.extend(call.raw_transactions.iter().map(|raw| RawTransactionSent { at, raw: raw.clone() }));
        let in_outage = match control.outage {
            Outage::Off => false,
            Outage::On => true,
            Outage::Until(end) if Instant::now() < end => true,
            Outage::Until(_) => {
                control.outage = Outage::Off;
                false
            }
        };
        if in_outage {
            control.stats.outage_refused += 1;
            return None;
        }
        let roll = unit(control.rng.next_u64());
        let coin = control.rng.next_u64() & 1 == 1;
        Some(control.faults.pick(roll, coin, call.sends_raw()))
    }

    /// Forwards `body` to the upstream; counts the outcome.
    async fn forward(&self, call: &Call, body: Bytes) -> Result<Answer, reqwest::Error> {
        let result = async {
            let response = self
                .client
                .post(&self.upstream)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = response.bytes().await?;
            Ok(Answer { status, content_type, body })
        }
        .await;
        let mut control = self.control();
        match &result {
            Ok(_) => control.stats.forwarded += 1,
            Err(error) => {
                control.stats.upstream_failed += 1;
                debug!(method = %call.label, %error, "rpc proxy: upstream failed");
            }
        }
        result
    }
}

/// The proxy's only handler: every path, every method (anything but `POST` gets 405).
async fn handle(State(shared): State<Arc<Shared>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "proxy: JSON-RPC takes POST\n").into_response();
    }
    let call = Call::parse(&body);
    let Some(decision) = shared.decide(&call) else {
        debug!(method = %call.label, fault = "outage", "rpc proxy: connection dropped");
        return dropped_connection();
    };
    let ahead = shared.control().newest_state_ahead;
    let body = if ahead && let Some(rewritten) = ahead::rewrite(&shared.client, &shared.upstream, &body).await {
        shared.control().stats.newest_state_ahead += 1;
        Bytes::from(rewritten)
    } else {
        body
    };
    match decision {
        Decision::Pass => match shared.forward(&call, body).await {
            Ok(answer) => answer.into_response(),
            Err(error) => upstream_failed(&error),
        },
        Decision::ForwardThenError => match shared.forward(&call, body).await {
            Ok(answer) => match call.injected_error(&answer) {
                Some(replaced) => {
                    shared.control().stats.forwarded_then_error += 1;
                    debug!(method = %call.label, fault = "forwarded_then_error", "rpc proxy: injected fault");
                    (StatusCode::OK, axum::Json(replaced)).into_response()
                }
                None => answer.into_response(),
            },
            Err(error) => upstream_failed(&error),
        },
        Decision::BadGateway(status) => {
            shared.control().stats.bad_gateway += 1;
            debug!(method = %call.label, fault = "bad_gateway", status = status.as_u16(), "rpc proxy: injected fault");
            (status, format!("proxy: injected fault: {status}\n")).into_response()
        }
        Decision::Drop { forward_first } => {
            let answered = forward_first && shared.forward(&call, body).await.is_ok();
            {
                let mut control = shared.control();
                control.stats.dropped += 1;
                control.stats.dropped_after_forward += u64::from(answered);
            }
            debug!(method = %call.label, fault = "drop_connection", forward_first, "rpc proxy: injected fault");
            dropped_connection()
        }
    }
}

/// A response hyper cannot send: its body fails on the first poll, before the head is flushed, so the
/// connection is closed with nothing written.
fn dropped_connection() -> Response {
    let error = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "proxy: dropped connection");
    Response::new(Body::from_stream(futures_util::stream::iter([Err::<Bytes, _>(error)])))
}

/// The answer when the upstream did not answer: 502 with the reason.
fn upstream_failed(error: &reqwest::Error) -> Response {
    (StatusCode::BAD_GATEWAY, format!("proxy: upstream failed: {error}\n")).into_response()
}

/// A uniform value in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    const SCALE: f64 = 1.0 / (1_u64 << 53) as f64;
    (bits >> 11) as f64 * SCALE
}

/// The injected JSON-RPC error for a request with this id.
fn error_object(id: &Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": INJECTED_ERROR_CODE, "message": INJECTED_ERROR_MESSAGE },
    })
}

/// What the proxy needs to know of a request body.
struct Call {
    /// The method, `batch` or `unparsable`, for the logs.
    label: String,
    shape: Shape,
    /// The transactions of its `eth_sendRawTransaction` calls (their first parameter).
    raw_transactions: Vec<String>,
}

enum Shape {
    /// One call; `sends_raw` if its method is `eth_sendRawTransaction`.
    Single { id: Value, sends_raw: bool },
    /// A batch and the ids of its `eth_sendRawTransaction` calls.
    Batch { send_raw_ids: Vec<Value> },
    /// Not JSON, or JSON that is neither an object nor an array.
    Other,
}

impl Call {
    fn parse(body: &[u8]) -> Self {
        let sends_raw = |call: &Value| call.get("method").and_then(Value::as_str) == Some(SEND_RAW);
        let raw_of = |call: &Value| call.pointer("/params/0").and_then(Value::as_str).map(str::to_owned);
        match serde_json::from_slice::<Value>(body) {
            Ok(call @ Value::Object(_)) => {
                let method = call.get("method").and_then(Value::as_str).unwrap_or("?");
                Self {
                    label: method.to_owned(),
                    shape: Shape::Single {
                        id: call.get("id").cloned().unwrap_or(Value::Null),
                        sends_raw: sends_raw(&call),
                    },
                    raw_transactions: if sends_raw(&call) { raw_of(&call).into_iter().collect() } else { Vec::new() },
                }
            }
            Ok(Value::Array(calls)) => Self {
                label: "batch".to_owned(),
                shape: Shape::Batch {
                    send_raw_ids: calls
                        .iter()
                        .filter(|call| sends_raw(call))
                        .filter_map(|call| call.get("id").cloned())
                        .collect(),
                },
                raw_transactions: calls.iter().filter(|call| sends_raw(call)).filter_map(raw_of).collect(),
            },
            _ => Self { label: "unparsable".to_owned(), shape: Shape::Other, raw_transactions: Vec::new() },
        }
    }

    /// Whether the after-forward error can replace something.
    fn sends_raw(&self) -> bool {
        match &self.shape {
            Shape::Single { sends_raw, .. } => *sends_raw,
            Shape::Batch { send_raw_ids } => !send_raw_ids.is_empty(),
            Shape::Other => false,
        }
    }

    /// The body that replaces the upstream's `answer`, or `None` if there is nothing to replace (a
    /// batch answered with something other than an array).
    fn injected_error(&self, answer: &Answer) -> Option<Value> {
        match &self.shape {
            Shape::Single { id, .. } => Some(error_object(id)),
            Shape::Batch { send_raw_ids } => {
                let Ok(Value::Array(mut answers)) = serde_json::from_slice::<Value>(&answer.body) else {
                    return None;
                };
                for entry in &mut answers {
                    if let Some(id) = entry.get("id").filter(|id| send_raw_ids.contains(id)) {
                        *entry = error_object(id);
                    }
                }
                Some(Value::Array(answers))
            }
            Shape::Other => None,
        }
    }
}

#[cfg(test)]
mod tests;
