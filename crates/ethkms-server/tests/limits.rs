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
    let rpc_url = ethkms::backend::contract::service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
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
