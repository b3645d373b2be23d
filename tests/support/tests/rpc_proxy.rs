//! The fault-injecting JSON-RPC proxy against a fake upstream of the test's own (no node needed): pass
//! through, each fault, outages, batches, determinism of the seeded decisions, and the statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::{Json, Router};
use ethkms_test_support::rpc_proxy::{Faults, INJECTED_ERROR_CODE, INJECTED_ERROR_MESSAGE, ProxyStats, RpcProxy};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the fake upstream answers to `eth_sendRawTransaction`.
const TX_HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

/// What the fake upstream has seen.
#[derive(Default)]
struct Seen {
    /// HTTP requests.
    requests: AtomicU64,
    /// `eth_sendRawTransaction` calls (batch entries count one each).
    sends: AtomicU64,
}

/// A fake node on 127.0.0.1: `eth_sendRawTransaction` answers [`TX_HASH`], any other method echoes its
/// method and params; batches are answered entry by entry.
struct Upstream {
    url: String,
    seen: Arc<Seen>,
    server: JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new().fallback(answer).layer(DefaultBodyLimit::disable()).with_state(Arc::clone(&seen));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen, server }
    }

    fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }

    fn sends(&self) -> u64 {
        self.seen.sends.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Json<Value> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    Json(match body {
        Value::Array(calls) => calls.iter().map(|call| answer_one(&seen, call)).collect(),
        call => answer_one(&seen, &call),
    })
}

fn answer_one(seen: &Seen, call: &Value) -> Value {
    let result = if call["method"] == "eth_sendRawTransaction" {
        seen.sends.fetch_add(1, Ordering::SeqCst);
        json!(TX_HASH)
    } else {
        json!({ "method": call["method"], "params": call["params"] })
    };
    json!({ "jsonrpc": "2.0", "id": call["id"], "result": result })
}

/// What a client saw of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// HTTP 200 with a JSON body.
    Json(Value),
    /// Another status.
    Status(u16),
    /// A transport error: no response.
    Dropped,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Outcome {
    match client.post(url).json(body).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            Outcome::Json(response.json().await.expect("a complete JSON body"))
        }
        Ok(response) => {
            let status = response.status().as_u16();
            // The body arrives in full: a bad gateway is a response, not a broken connection.
            let text = response.text().await.expect("a complete text body");
            assert!(text.starts_with("proxy: "), "{text}");
            Outcome::Status(status)
        }
        Err(error) => {
            assert!(!error.is_timeout(), "a dropped connection, not a timeout: {error}");
            Outcome::Dropped
        }
    }
}

fn call(id: impl Into<Value>, method: &str, params: Value) -> Value {
    let mut call = json!({ "jsonrpc": "2.0", "id": id.into(), "method": method });
    call["params"] = params;
    call
}

fn send_raw(id: u64) -> Value {
    call(id, "eth_sendRawTransaction", json!(["0x02f86c0180843b9aca00"]))
}

fn injected_error(id: impl Into<Value>) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.into(),
        "error": { "code": INJECTED_ERROR_CODE, "message": INJECTED_ERROR_MESSAGE },
    })
}

#[tokio::test]
async fn passes_through_results_and_ids() {
    let upstream = Upstream::start().await;
    let proxy = RpcProxy::start(&upstream.url, 1, Faults::none()).await.unwrap();
    let client = client();

    let sent = post(&client, proxy.url(), &send_raw(41)).await;
    assert_eq!(sent, Outcome::Json(json!({ "jsonrpc": "2.0", "id": 41, "result": TX_HASH })));
    let echoed = post(&client, proxy.url(), &call("call-7", "eth_getBalance", json!(["0xabc", "latest"]))).await;
    let expected = json!({ "method": "eth_getBalance", "params": ["0xabc", "latest"] });
    assert_eq!(echoed, Outcome::Json(json!({ "jsonrpc": "2.0", "id": "call-7", "result": expected })));
    // A body larger than axum's default limit (2 MiB), as a transaction with blobs can be.
    let big = "ab".repeat(1_500_000);
    let echoed = post(&client, proxy.url(), &call(3, "eth_call", json!([big]))).await;
    let Outcome::Json(echoed) = echoed else { panic!("{echoed:?}") };
    assert_eq!(echoed["result"]["params"][0], json!(big));

    assert_eq!((upstream.requests(), upstream.sends()), (3, 1));
    assert_eq!(proxy.stats(), ProxyStats { requests: 3, forwarded: 3, ..ProxyStats::default() });
    // The one raw transaction is recorded, with when it came.
    let sent = proxy.raw_transactions();
    assert_eq!(sent.iter().map(|sent| sent.raw.as_str()).collect::<Vec<_>>(), ["0x02f86c0180843b9aca00"]);
    assert!(sent[0].at <= std::time::SystemTime::now());
}

#[tokio::test]
async fn forwards_the_transaction_then_answers_an_error() {
    let upstream = Upstream::start().await;
    let faults = Faults { forwarded_then_error: 1.0, ..Faults::none() };
    let proxy = RpcProxy::start(&upstream.url, 2, faults).await.unwrap();
    let client = client();

    assert_eq!(post(&client, proxy.url(), &send_raw(9)).await, Outcome::Json(injected_error(9)));
    assert_eq!(upstream.sends(), 1, "the node has the transaction");
    // Other methods are not affected.
    let chain = post(&client, proxy.url(), &call(10, "eth_chainId", json!([]))).await;
    let Outcome::Json(chain) = chain else { panic!("{chain:?}") };
    assert_eq!(chain["result"]["method"], "eth_chainId");
    assert_eq!(upstream.requests(), 2);
    let stats = proxy.stats();
    assert_eq!(stats, ProxyStats { requests: 2, forwarded: 2, forwarded_then_error: 1, ..ProxyStats::default() });
}

#[tokio::test]
async fn replaces_only_the_transactions_of_a_batch() {
    let upstream = Upstream::start().await;
    let faults = Faults { forwarded_then_error: 1.0, ..Faults::none() };
    let proxy = RpcProxy::start(&upstream.url, 3, faults).await.unwrap();
    let batch =
        json!([call(1, "eth_chainId", json!([])), send_raw(2), call(3, "eth_blockNumber", json!([])), send_raw(4)]);

    let answers = post(&client(), proxy.url(), &batch).await;
    let Outcome::Json(Value::Array(answers)) = answers else { panic!("{answers:?}") };
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0]["result"]["method"], "eth_chainId");
    assert_eq!(answers[1], injected_error(2));
    assert_eq!(answers[2]["result"]["method"], "eth_blockNumber");
    assert_eq!(answers[3], injected_error(4));
    assert_eq!((upstream.requests(), upstream.sends()), (1, 2));
    assert_eq!(proxy.stats().forwarded_then_error, 1);
}

#[tokio::test]
async fn bad_gateway_is_not_forwarded() {
    let upstream = Upstream::start().await;
    let faults = Faults { bad_gateway: 1.0, ..Faults::none() };
    let proxy = RpcProxy::start(&upstream.url, 4, faults).await.unwrap();
    let client = client();

    let mut statuses = Vec::new();
    for id in 0..20 {
        let request = if id % 2 == 0 { send_raw(id) } else { call(id, "eth_chainId", json!([])) };
        match post(&client, proxy.url(), &request).await {
            Outcome::Status(status) => statuses.push(status),
            other => panic!("{other:?}"),
        }
    }
    assert!(statuses.iter().all(|status| [502, 503].contains(status)), "{statuses:?}");
    assert!(statuses.contains(&502) && statuses.contains(&503), "the seed picks both: {statuses:?}");
    assert_eq!(upstream.requests(), 0);
    assert_eq!(proxy.stats(), ProxyStats { requests: 20, bad_gateway: 20, ..ProxyStats::default() });
}

#[tokio::test]
async fn dropped_connections_are_transport_errors() {
    let upstream = Upstream::start().await;
    let faults = Faults { drop_connection: 1.0, ..Faults::none() };
    let proxy = RpcProxy::start(&upstream.url, 5, faults).await.unwrap();
    let client = client();

    for id in 0..30 {
        // `post` asserts that the error is not a timeout.
        assert_eq!(post(&client, proxy.url(), &send_raw(id)).await, Outcome::Dropped, "request {id}");
    }
    let stats = proxy.stats();
    assert_eq!((stats.requests, stats.dropped), (30, 30));
    assert_eq!(upstream.sends(), stats.dropped_after_forward);
    assert_eq!(stats.forwarded, stats.dropped_after_forward);
    assert!(0 < stats.dropped_after_forward && stats.dropped_after_forward < 30, "{stats:?}");

    // The proxy keeps serving once the faults are off (the random sequence keeps going).
    proxy.set_faults(Faults::none());
    assert!(matches!(post(&client, proxy.url(), &send_raw(99)).await, Outcome::Json(_)));
}

#[tokio::test]
async fn a_dropped_connection_writes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start().await;
    let faults = Faults { drop_connection: 1.0, ..Faults::none() };
    let proxy = RpcProxy::start(&upstream.url, 10, faults).await.unwrap();
    let address = proxy.url().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let body = send_raw(1).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    // Closed (cleanly or reset) without a single byte of a response.
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}: {}", String::from_utf8_lossy(&received));
    assert!(received.is_empty());
    assert_eq!(proxy.stats().dropped, 1);
}

#[tokio::test]
async fn outages_drop_every_request_until_they_end() {
    let upstream = Upstream::start().await;
    let proxy = RpcProxy::start(&upstream.url, 6, Faults::none()).await.unwrap();
    let client = client();

    proxy.set_outage(true);
    assert_eq!(post(&client, proxy.url(), &send_raw(1)).await, Outcome::Dropped);
    assert_eq!(post(&client, proxy.url(), &call(2, "eth_chainId", json!([]))).await, Outcome::Dropped);
    proxy.set_outage(false);
    assert!(matches!(post(&client, proxy.url(), &send_raw(3)).await, Outcome::Json(_)));
    assert_eq!(upstream.requests(), 1);

    proxy.outage_for(Duration::from_secs(1));
    assert_eq!(post(&client, proxy.url(), &send_raw(4)).await, Outcome::Dropped);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(matches!(post(&client, proxy.url(), &send_raw(5)).await, Outcome::Json(_)));
    assert_eq!(upstream.sends(), 2);

    // set_outage(false) ends an outage_for early.
    proxy.outage_for(Duration::from_secs(3600));
    assert_eq!(post(&client, proxy.url(), &send_raw(6)).await, Outcome::Dropped);
    proxy.set_outage(false);
    assert!(matches!(post(&client, proxy.url(), &send_raw(7)).await, Outcome::Json(_)));

    assert_eq!(proxy.stats(), ProxyStats { requests: 7, forwarded: 3, outage_refused: 4, ..ProxyStats::default() });
}

/// What happened to one `eth_sendRawTransaction`, as the client and the node saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Passed,
    ForwardedThenError,
    BadGateway(u16),
    Dropped { forwarded: bool },
}

/// Sends 50 sequential `eth_sendRawTransaction` through a new proxy with `seed` and checks the
/// statistics against what was seen.
async fn run(seed: u64) -> Vec<Kind> {
    let upstream = Upstream::start().await;
    let faults = Faults { forwarded_then_error: 0.5, bad_gateway: 0.2, drop_connection: 0.2 };
    let proxy = RpcProxy::start(&upstream.url, seed, faults).await.unwrap();
    let client = client();
    let mut kinds = Vec::new();
    for id in 0..50 {
        let sends = upstream.sends();
        let outcome = post(&client, proxy.url(), &send_raw(id)).await;
        let forwarded = upstream.sends() - sends;
        let kind = match outcome {
            Outcome::Json(answer) if answer["result"] == TX_HASH => Kind::Passed,
            Outcome::Json(answer) if answer == injected_error(id) => Kind::ForwardedThenError,
            Outcome::Status(status) => Kind::BadGateway(status),
            Outcome::Dropped => Kind::Dropped { forwarded: forwarded == 1 },
            Outcome::Json(answer) => panic!("{answer}"),
        };
        let expected_forwards =
            u64::from(matches!(kind, Kind::Passed | Kind::ForwardedThenError | Kind::Dropped { forwarded: true }));
        assert_eq!(forwarded, expected_forwards, "{kind:?}");
        kinds.push(kind);
    }

    let count = |wanted: fn(&Kind) -> bool| kinds.iter().filter(|kind| wanted(kind)).count() as u64;
    let expected = ProxyStats {
        requests: 50,
        forwarded: count(|kind| {
            matches!(kind, Kind::Passed | Kind::ForwardedThenError | Kind::Dropped { forwarded: true })
        }),
        forwarded_then_error: count(|kind| *kind == Kind::ForwardedThenError),
        bad_gateway: count(|kind| matches!(kind, Kind::BadGateway(_))),
        dropped: count(|kind| matches!(kind, Kind::Dropped { .. })),
        dropped_after_forward: count(|kind| *kind == Kind::Dropped { forwarded: true }),
        outage_refused: 0,
        upstream_failed: 0,
        newest_state_ahead: 0,
    };
    assert_eq!(proxy.stats(), expected);
    assert_eq!(upstream.sends(), expected.forwarded);
    kinds
}

#[tokio::test]
async fn a_seed_reproduces_its_decisions() {
    let first = run(42).await;
    let again = run(42).await;
    let other = run(43).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    // Every kind of fault occurs in 50 requests (fixed by the seed).
    for kind in [
        Kind::Passed,
        Kind::ForwardedThenError,
        Kind::BadGateway(502),
        Kind::BadGateway(503),
        Kind::Dropped { forwarded: false },
        Kind::Dropped { forwarded: true },
    ] {
        assert!(first.contains(&kind), "{kind:?} never happened: {first:?}");
    }
}

#[tokio::test]
async fn a_dropped_proxy_stops_serving() {
    let upstream = Upstream::start().await;
    let proxy = RpcProxy::start(&upstream.url, 8, Faults::none()).await.unwrap();
    let url = proxy.url().to_owned();
    assert!(matches!(post(&client(), &url, &send_raw(1)).await, Outcome::Json(_)));
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post(&client(), &url, &send_raw(2)).await, Outcome::Dropped);
    assert_eq!(upstream.sends(), 1);
}

#[tokio::test]
#[should_panic(expected = "sum to at most 1")]
async fn probabilities_over_one_are_refused() {
    let faults = Faults { forwarded_then_error: 0.6, bad_gateway: 0.6, ..Faults::none() };
    let _proxy = RpcProxy::start("http://127.0.0.1:9/", 9, faults).await;
}
