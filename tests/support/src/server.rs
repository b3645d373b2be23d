//! The signing service in process (`ethkms_server::service`), on a free port of 127.0.0.1, and a client
//! of its REST API and JSON-RPC endpoint that authenticates as [`TOKEN`]; files of a test's own for its
//! journal and audit log.
//!
//! Every helper panics when the service does not answer as expected: these are tests.

#![allow(clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use ethkms_backend::KeyBackend;
use ethkms_server::config::Config;
use ethkms_server::service::Service;
use serde_json::{Value, json};

use crate::unique;

/// The bearer token [`Api`] authenticates with unless told another (`token_sha256` of the client the
/// configuration gives it: `ethkms_server::config::token_hash(TOKEN)`).
pub const TOKEN: &str = "exchange-token";

/// A journal and an audit log of the test's own, in the temporary directory.
#[derive(Debug)]
pub struct Paths {
    /// The SQLite journal.
    pub journal: PathBuf,
    /// The audit log (JSON lines).
    pub audit: PathBuf,
}

impl Paths {
    /// Fresh names (nothing is created).
    #[must_use]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let base = std::env::temp_dir().join(unique("withdrawals"));
        Self { journal: base.with_extension("sqlite"), audit: base.with_extension("jsonl") }
    }
}

/// The start of a service configuration that every test shares: `listen`, the node at `rpc_url`, the
/// journal and audit log of `paths`, withdrawals polled every 100 ms (never rebroadcast within a test),
/// and key `hot` (KMS key `key`: an id, ARN or alias) on chain 31337 with one confirmation. Append the
/// key's `[keys.hot.policy]` and the `[clients.*]`.
#[must_use]
pub fn config_head(listen: &str, rpc_url: &str, key: &str, paths: &Paths) -> String {
    config_head_with_journal(listen, rpc_url, key, &paths.audit, &paths.journal.display().to_string())
}

/// [`config_head`] with the journal given as the configuration's `journal` value: a SQLite file's path,
/// or a `postgres://` URL (the replicated journal) — and the audit log at `audit`.
#[must_use]
pub fn config_head_with_journal(listen: &str, rpc_url: &str, key: &str, audit: &Path, journal: &str) -> String {
    format!(
        r#"
listen = "{listen}"
upstream = "{rpc_url}"
audit_log = "{audit}"
journal = "{journal}"
withdrawals = {{ poll_interval_ms = 100, rebroadcast_after_seconds = 600 }}
{hot}"#,
        audit = audit.display(),
        hot = config_key("hot", key),
    )
}

/// A `[keys.{name}]` section: KMS key `key` (an id, ARN or alias) on chain 31337 with one confirmation.
/// Append its `[keys.{name}.policy]` if it has one.
#[must_use]
pub fn config_key(name: &str, key: &str) -> String {
    format!("\n[keys.{name}]\nkey = \"{key}\"\nchain_id = 31337\nconfirmations = 1\n")
}

/// A `[clients.{name}]` section of a service configuration: the client authenticating with the bearer
/// token `token` may use key `hot` for `methods`.
#[must_use]
pub fn config_client(name: &str, token: &str, methods: &[&str]) -> String {
    config_client_of_keys(name, token, &["hot"], methods)
}

/// A `[clients.{name}]` section: the client authenticating with the bearer token `token` may use the keys
/// `keys` for `methods`.
#[must_use]
pub fn config_client_of_keys(name: &str, token: &str, keys: &[&str], methods: &[&str]) -> String {
    let quoted = |names: &[&str]| names.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "\n[clients.{name}]\ntoken_sha256 = \"{hash}\"\nkeys = [{keys}]\nmethods = [{methods}]\n",
        hash = ethkms_server::config::token_hash(token),
        keys = quoted(keys),
        methods = quoted(methods),
    )
}

/// The REST API of a running service.
#[derive(Debug)]
pub struct Api {
    /// The service's URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// The client.
    pub http: reqwest::Client,
}

impl Api {
    /// `POST /v1/withdrawals` as the client with `token`: (status, body).
    pub async fn post_as(&self, token: &str, body: &Value) -> (u16, Value) {
        let response =
            self.http.post(format!("{}/v1/withdrawals", self.url)).bearer_auth(token).json(body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `POST /v1/withdrawals` as [`TOKEN`]: (status, body).
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_as(TOKEN, body).await
    }

    /// `GET /v1/withdrawals/{id}` as the client with `token`: (status, body).
    pub async fn get_as(&self, token: &str, id: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}/v1/withdrawals/{id}", self.url)).bearer_auth(token).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `GET /v1/withdrawals/{id}` as [`TOKEN`], which must succeed: the withdrawal.
    pub async fn get(&self, id: &str) -> Value {
        let (status, body) = self.get_as(TOKEN, id).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until withdrawal `id` is final: confirmed, failed or cancelled.
    pub async fn settled(&self, id: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let withdrawal = self.get(id).await;
            if withdrawal["final"] == true {
                return withdrawal;
            }
            assert!(started.elapsed() < within, "withdrawal not settled in {within:?}: {withdrawal}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }

    /// The value of the metric line that starts with `prefix` (0 if absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(prefix).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_default()
    }

    /// `POST /v1/withdrawals/{id}/cancel`: (status, body).
    pub async fn cancel(&self, id: &str) -> (u16, Value) {
        let response =
            self.http.post(format!("{}/v1/withdrawals/{id}/cancel", self.url)).bearer_auth(TOKEN).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A JSON-RPC call to the service as the exchange client: the whole answer.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        self.http
            .post(format!("{}/", self.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until withdrawal `id` satisfies `condition`.
    pub async fn wait_until(&self, id: &str, within: Duration, condition: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let withdrawal = self.get(id).await;
            if condition(&withdrawal) {
                return withdrawal;
            }
            assert!(started.elapsed() < within, "condition not reached in {within:?}: {withdrawal}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Serves the configuration `text` in this process and waits until it is ready (journal recovered).
pub async fn serve_in_process(text: &str, backend: Arc<dyn KeyBackend>) -> Api {
    let api = serve_in_process_unready(text, backend).await;
    let started = Instant::now();
    loop {
        let answer = match api.http.get(format!("{}/readyz", api.url)).send().await {
            Ok(response) if response.status().is_success() => return api,
            Ok(response) => format!("{}: {}", response.status(), response.text().await.unwrap_or_default()),
            Err(error) => error.to_string(),
        };
        assert!(started.elapsed() < Duration::from_secs(30), "the service did not become ready: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves the configuration `text` in this process without waiting for it to be ready (its node may be
/// unreachable on purpose).
pub async fn serve_in_process_unready(text: &str, backend: Arc<dyn KeyBackend>) -> Api {
    // `ETHKMS_TEST_LOG=debug` (a filter) shows the service's log in the test's output.
    if let Ok(filter) = std::env::var("ETHKMS_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let config = Config::parse(text).unwrap();
    let service = Service::start(config, backend).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { ethkms_server::service::serve(service, listener, None, std::future::pending()).await });
    Api { url, http: reqwest::Client::new() }
}

/// The body of `POST /v1/withdrawals` for key `hot`.
#[must_use]
pub fn withdrawal(idempotency_key: &str, to: Address, asset: &str, amount: &str) -> Value {
    withdrawal_from("hot", idempotency_key, to, asset, amount)
}

/// The body of `POST /v1/withdrawals` for the key named `key`.
#[must_use]
pub fn withdrawal_from(key: &str, idempotency_key: &str, to: Address, asset: &str, amount: &str) -> Value {
    json!({ "idempotency_key": idempotency_key, "key": key, "to": to, "asset": asset, "amount": amount })
}
