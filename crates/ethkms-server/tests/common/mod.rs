//! Helpers shared by the service's integration tests: LocalStack and anvil, funded keys, the service's
//! configuration and REST API, the server binary as a child process, and reading the chain directly.

#![allow(dead_code, unreachable_pub)]

pub mod typed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, sol};
use ethkms::aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms::backend::contract::{service_from_env, unique};
use ethkms::backend::{CreateKeyRequest, KeyBackend};
use ethkms_server::config::{Config, token_hash};
use ethkms_server::service::Service;
use serde_json::{Value, json};

pub use ethkms_test_support::free_port;

sol! {
    function transfer(address to, uint256 amount) external returns (bool);
    function balanceOf(address owner) external view returns (uint256);
}

pub const TOKEN: &str = "exchange-token";
pub const ETHER: u64 = 1_000_000_000_000_000_000;
/// anvil's first development account, unlocked: it deploys the test token.
pub const DEVELOPER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// A JSON-RPC call that must succeed.
pub async fn rpc(http: &reqwest::Client, url: &str, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let answer: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

pub fn quantity(value: &Value) -> u128 {
    u128::from_str_radix(value.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// An anvil of this test's own (mining settings the shared one must not have), stopped on drop.
pub struct Anvil {
    pub child: Child,
    pub url: String,
}

impl Anvil {
    pub async fn start(mining: &[&str]) -> Option<Self> {
        let binary = service_from_env("ETHKMS_TEST_ANVIL", "anvil (the binary)")?;
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent", "--hardfork", "prague"])
            .args(mining)
            .stdout(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let anvil = Self { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let started = Instant::now();
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] });
        while http.post(&anvil.url).json(&body).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "anvil did not answer on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(anvil)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn localstack() -> Option<(String, Arc<dyn KeyBackend>)> {
    let endpoint = service_from_env("ETHKMS_TEST_KMS_ENDPOINT", "LocalStack KMS")?;
    let config =
        AwsKmsConfig::with_endpoint(endpoint.clone(), "us-east-1", StaticCredentials::new("test", "test", None));
    Some((endpoint, Arc::new(AwsKmsBackend::new(config).await.unwrap())))
}

/// Creates a key and gives its address 100 ether on `rpc_url`.
pub async fn funded_key(backend: &Arc<dyn KeyBackend>, rpc_url: &str) -> (String, Address) {
    let info =
        backend.create_key(&CreateKeyRequest::new().description("ethkms-server withdrawals test")).await.unwrap();
    let address: Address = info.address.unwrap().to_string().parse().unwrap();
    let hundred = format!("{:#x}", U256::from(100) * U256::from(ETHER));
    rpc(&reqwest::Client::new(), rpc_url, "anvil_setBalance", json!([address, hundred])).await;
    (info.key_id, address)
}

pub struct Paths {
    pub journal: PathBuf,
    pub audit: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let base = std::env::temp_dir().join(unique("withdrawals"));
        Self { journal: base.with_extension("sqlite"), audit: base.with_extension("jsonl") }
    }
}

pub fn configuration(listen: &str, rpc_url: &str, key: &str, paths: &Paths) -> String {
    format!(
        r#"
listen = "{listen}"
upstream = "{rpc_url}"
audit_log = "{audit}"
journal = "{journal}"
withdrawals = {{ poll_interval_ms = 100, rebroadcast_after_seconds = 600 }}

[keys.hot]
key = "{key}"
chain_id = 31337
confirmations = 1
[keys.hot.policy]
destination_denylist = ["0x000000000000000000000000000000000000dEaD"]
max_value = {{ ETH = "1ether" }}

[clients.exchange]
token_sha256 = "{exchange}"
keys = ["hot"]
methods = ["withdrawals"]

[clients.reader]
token_sha256 = "{reader}"
keys = ["hot"]
methods = ["personal_sign"]
"#,
        audit = paths.audit.display(),
        journal = paths.journal.display(),
        exchange = token_hash(TOKEN),
        reader = token_hash("reader-token"),
    )
}

/// The REST API of a running service.
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn post_as(&self, token: &str, body: &Value) -> (u16, Value) {
        let response =
            self.http.post(format!("{}/v1/withdrawals", self.url)).bearer_auth(token).json(body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_as(TOKEN, body).await
    }

    pub async fn get_as(&self, token: &str, id: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}/v1/withdrawals/{id}", self.url)).bearer_auth(token).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

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

pub fn withdrawal(idempotency_key: &str, to: Address, asset: &str, amount: &str) -> Value {
    json!({ "idempotency_key": idempotency_key, "key": "hot", "to": to, "asset": asset, "amount": amount })
}

pub async fn block_number(rpc_url: &str) -> u128 {
    quantity(&rpc(&reqwest::Client::new(), rpc_url, "eth_blockNumber", json!([])).await)
}

/// Every transaction from `from` mined since block `first`, by nonce: (to, value, hash).
pub async fn transactions_from(rpc_url: &str, from: Address, first: u128) -> BTreeMap<u64, (Address, U256, String)> {
    let http = reqwest::Client::new();
    let latest = block_number(rpc_url).await;
    let mut found = BTreeMap::new();
    for number in first..=latest {
        let block = rpc(&http, rpc_url, "eth_getBlockByNumber", json!([format!("{number:#x}"), true])).await;
        for tx in block["transactions"].as_array().into_iter().flatten() {
            if tx["from"].as_str().unwrap().parse::<Address>().unwrap() == from {
                let nonce = u64::try_from(quantity(&tx["nonce"])).unwrap();
                let to = tx["to"].as_str().unwrap().parse().unwrap();
                let value = tx["value"].as_str().unwrap().parse().unwrap();
                let previous = found.insert(nonce, (to, value, tx["hash"].as_str().unwrap().to_owned()));
                assert!(previous.is_none(), "two mined transactions with nonce {nonce}");
            }
        }
    }
    found
}

/// Deploys the test ERC-20 from anvil's developer account and sends `amount` of it to `to`.
pub async fn deploy_token(rpc_url: &str, to: Address, amount: U256) -> Address {
    let http = reqwest::Client::new();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ethkms-eth/tests/contracts/TestToken.bin");
    let code = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let supply = format!("{:064x}", U256::from(1_000_000u64));
    let create = json!([{ "from": DEVELOPER, "data": format!("0x{}{supply}", code.trim().trim_start_matches("0x")) }]);
    let hash = rpc(&http, rpc_url, "eth_sendTransaction", create).await;
    let created = receipt(rpc_url, &hash).await;
    let token: Address = created["contractAddress"].as_str().unwrap().parse().unwrap();
    let data = format!("0x{}", alloy_primitives::hex::encode(transferCall { to, amount }.abi_encode()));
    let hash =
        rpc(&http, rpc_url, "eth_sendTransaction", json!([{ "from": DEVELOPER, "to": token, "data": data }])).await;
    assert_eq!(receipt(rpc_url, &hash).await["status"], "0x1", "the token transfer to the key failed");
    token
}

/// The receipt of `hash`, once mined (anvil mines a moment after answering).
pub async fn receipt(rpc_url: &str, hash: &Value) -> Value {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let receipt = rpc(&http, rpc_url, "eth_getTransactionReceipt", json!([hash])).await;
        if !receipt.is_null() {
            return receipt;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{hash} not mined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn token_balance(rpc_url: &str, token: Address, owner: Address) -> U256 {
    let data = format!("0x{}", alloy_primitives::hex::encode(balanceOfCall { owner }.abi_encode()));
    let result =
        rpc(&reqwest::Client::new(), rpc_url, "eth_call", json!([{ "to": token, "data": data }, "latest"])).await;
    result.as_str().unwrap().parse().unwrap()
}

pub async fn balance(rpc_url: &str, owner: Address) -> U256 {
    let result = rpc(&reqwest::Client::new(), rpc_url, "eth_getBalance", json!([owner, "latest"])).await;
    result.as_str().unwrap().parse().unwrap()
}

/// A recipient no other test (or earlier run on the same node) pays.
pub fn recipient(run: &str, index: u64) -> Address {
    Address::from_slice(&alloy_primitives::keccak256(format!("{run}-{index}"))[12..])
}

/// The server binary, as a child process.
pub struct Server {
    pub child: Child,
}

impl Server {
    /// Starts the server with its log discarded.
    pub async fn start(config: &Path, kms_endpoint: &str, url: &str) -> Self {
        Self::spawn(config, kms_endpoint, url, Stdio::null()).await
    }

    /// Starts the server with its log appended to `log` (kept for a failing test to point at).
    pub async fn start_logging(config: &Path, kms_endpoint: &str, url: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Self::spawn(config, kms_endpoint, url, Stdio::from(file)).await
    }

    async fn spawn(config: &Path, kms_endpoint: &str, url: &str, stderr: Stdio) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_ethkms-server"))
            .arg("--config")
            .arg(config)
            .env("AWS_ENDPOINT_URL", kms_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn,ethkms_server=debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the server starts");
        let server = Self { child };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http.get(format!("{url}/healthz")).send().await.is_ok_and(|response| response.status().is_success()) {
            assert!(started.elapsed() < Duration::from_secs(30), "the server did not come up at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
