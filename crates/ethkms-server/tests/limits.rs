//! Limits against hostile clients, on the server binary: an anonymous 200 MB body is answered 401 before
//! it is read (the process's resident memory barely moves), an authenticated one past the body limit is
//! refused with 413, and the service keeps serving.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The peak resident memory of process `pid` so far (`VmHWM`), in KiB (Linux): a body read and freed again
/// still shows.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Posts `size` bytes to `path` on `address` in 1 MiB writes, with `token` if any, and returns the status line
/// (the server may answer and close before all is written).
fn post_huge(address: &str, path: &str, token: Option<&str>, size: usize) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n{authorization}Content-Length: \
         {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut written = 0;
    while written < size {
        if stream.write_all(&chunk).is_err() {
            break; // the server answered and closed: nothing more of the body is wanted
        }
        written += chunk.len();
    }
    let mut answer = [0u8; 256];
    let read = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_huge_body_is_refused_unread_and_an_authenticated_one_at_the_limit() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    let rpc_url = ethkms_test_support::service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let address = format!("127.0.0.1:{}", free_port());
    let config_path = paths.journal.with_extension("toml");
    std::fs::write(&config_path, configuration(&address, &rpc_url, &key, &paths)).unwrap();
    let url = format!("http://{address}");
    let server = Server::start(&config_path, &kms_endpoint, &url).await;
    let pid = server.child.id();
    let before = resident_kib(pid);

    let anonymous = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || post_huge(&address, "/v1/withdrawals", None, 200 << 20)).await.unwrap()
    };
    assert!(anonymous.contains("401"), "{anonymous}");
    let grown = resident_kib(pid).saturating_sub(before);
    assert!(grown < 10 * 1024, "the server's peak memory grew by {grown} KiB reading an anonymous body");

    let authenticated = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || post_huge(&address, "/v1/withdrawals", Some(TOKEN), 8 << 20)).await.unwrap()
    };
    assert!(authenticated.contains("413"), "{authenticated}");

    // Still serving.
    let api = Api { url, http: reqwest::Client::new() };
    let (status, body) = api.post(&json!({ "idempotency_key": "x" })).await;
    assert_eq!(status, 400, "{body}");
    drop(server);
}

/// Reads what the server sends on `stream` until it closes or `within` passes: the first line of its
/// answer (empty if it closed without one), and whether it closed.
fn answer_and_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false, // still open when `within` passed
        }
    };
    (String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned(), closed)
}

/// A connection cap, header and body timeouts and a cap on requests in flight, on a service whose limits are
/// set low: connections past the cap are closed at once; a client that sends its headers or body too slowly is
/// cut off; a request past the in-flight cap is answered 503 with `Retry-After` while the others are served;
/// and after all that the service answers as before, every refusal counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_surplus_clients_are_cut_off_and_counted() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = ethkms_test_support::service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let limits = "limits = { max_connections = 3, max_in_flight_requests = 1, header_timeout_seconds = 1, \
                  body_timeout_seconds = 1 }\n";
    let text = format!("{limits}{}", configuration("127.0.0.1:0", &rpc_url, &key, &paths));
    let api = serve_in_process(&text, backend).await;
    // A client that keeps no idle connection, which would hold one of the three.
    let api = Api { url: api.url, http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap() };
    let address = api.url.trim_start_matches("http://").to_owned();

    // Slow headers: a request line and no more is closed after the header timeout, unanswered or 408.
    let mut slow_headers = TcpStream::connect(&address).unwrap();
    slow_headers.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = answer_and_close(&mut slow_headers, Duration::from_secs(5));
    assert!(
        closed && started.elapsed() < Duration::from_secs(4),
        "slow headers still open after {:?}",
        started.elapsed()
    );

    // Slow body: authenticated, a Content-Length it never sends: 408 after the body timeout. Meanwhile it holds
    // the only in-flight slot, so another request is answered 503 with Retry-After.
    let mut slow_body = TcpStream::connect(&address).unwrap();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer reader-token\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n{\"jsonrpc\"";
    slow_body.write_all(head.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = api
        .http
        .post(format!("{}/", api.url))
        .bearer_auth("reader-token")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    let body: serde_json::Value = busy.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "overloaded", "{body}");
    let (answer, _) = answer_and_close(&mut slow_body, Duration::from_secs(5));
    assert!(answer.contains("408"), "{answer}");
    drop((slow_headers, slow_body));

    // The connection cap: three held open, the fourth closed at once without an answer. The three send
    // nothing, so the header timeout closes them after a second: on a machine so busy that the check took
    // that long, a slot was free again and the check is made anew (as it is when the server has not got
    // to the fourth within the wait).
    for attempt in 1.. {
        let started = std::time::Instant::now();
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&address).unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut surplus = TcpStream::connect(&address).unwrap();
        let (answer, closed) = answer_and_close(&mut surplus, Duration::from_millis(500));
        drop(held);
        if closed && answer.is_empty() {
            break;
        }
        let took = started.elapsed();
        // Neither answered nor closed within the wait: the server had not got to it yet (a busy machine), or
        // it holds it open as a fourth connection — the next attempt tells, and the fifth fails.
        let unanswered = answer.is_empty() && !closed;
        assert!(
            attempt < 5 && (unanswered || took >= Duration::from_millis(900)),
            "the fourth connection was served ({took:?} after the three, attempt {attempt}): {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Served as before, and every refusal counted.
    let answer = api.call("eth_chainId", json!([])).await;
    assert_eq!(answer["result"], "0x7a69", "{answer}");
    assert!(api.metric("ethkms_overload_refusals_total{limit=\"requests\"} ").await >= 1.0);
    assert!(api.metric("ethkms_overload_refusals_total{limit=\"connections\"} ").await >= 1.0);
}

/// An upstream whose URL holds secrets (userinfo, path, query) and does not answer: `/readyz` says not
/// ready without a word of it and without a KMS request per probe, and a proxied read's error hides it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_with_a_secret_in_its_url_shows_none_of_it() {
    use ethkms::backend::{CreateKeyRequest, KeyBackend, MemoryBackend};
    let memory = std::sync::Arc::new(MemoryBackend::new());
    let backend: std::sync::Arc<dyn KeyBackend> = memory.clone();
    let key = backend.create_key(&CreateKeyRequest::new()).await.unwrap().key_id;
    let upstream = format!("http://user:SECRET1@127.0.0.1:{}/v3/SECRET2?apikey=SECRET3", free_port());
    let paths = Paths::new();
    let api = serve_in_process_unready(&configuration("127.0.0.1:0", &upstream, &key, &paths), backend).await;
    let before = memory.request_counts();
    for _ in 0..5 {
        let response = api.http.get(format!("{}/readyz", api.url)).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(!body.contains("SECRET") && !body.contains("127.0.0.1"), "{body}");
    }
    let after = memory.request_counts();
    assert_eq!((after.public_key, after.sign), (before.public_key, before.sign), "no KMS request per probe");

    let answer = api.call("eth_blockNumber", json!([])).await;
    let message = answer["error"]["message"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(!answer.to_string().contains("SECRET"), "{answer}");
    assert!(message.contains("upstream"), "{message}");
    let metrics = api.metrics().await;
    assert!(!metrics.contains("SECRET"));
}
