//! The signing service over HTTP, in process, with a key in LocalStack's KMS and anvil upstream: every
//! JSON-RPC method, authentication and per-client permissions, policy denials naming their rule, bad
//! input answered with JSON-RPC errors while the service keeps serving, contiguous nonces under
//! concurrency, the audit log, and the health and metrics endpoints.

use std::sync::Arc;
use std::time::Duration;

use alloy_consensus::TxEnvelope;
use alloy_consensus::transaction::SignerRecoverable;
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, Signature, U256, hex};
use ethkms::backend::CreateKeyRequest;
use ethkms_server::config::{Config, token_hash};
use ethkms_server::service::Service;
use ethkms_test_support::chain::{ETHER, set_balance};
use ethkms_test_support::kms::localstack_backend;
use ethkms_test_support::{service_from_env, unique};
use serde_json::{Value, json};

const RECIPIENT: &str = "0x000000000000000000000000000000000000dEaD";

struct Running {
    url: String,
    http: reqwest::Client,
    address: Address,
    audit_log: std::path::PathBuf,
}

impl Running {
    async fn call_as(&self, token: &str, method: &str, params: Value) -> (u16, Value) {
        let body = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params });
        let response = self.http.post(&self.url).bearer_auth(token).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        let (status, answer) = self.call_as("withdrawals-token", method, params).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn result(&self, method: &str, params: Value) -> Value {
        let answer = self.call(method, params).await;
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The receipt of `hash`, once mined.
    async fn receipt(&self, hash: &Value) -> Value {
        for _ in 0..200 {
            let receipt = self.result("eth_getTransactionReceipt", json!([hash])).await;
            if !receipt.is_null() {
                return receipt;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{hash} not mined in 10 s");
    }

    async fn error_code(&self, method: &str, params: Value) -> (i64, Value) {
        let answer = self.call(method, params).await;
        (
            answer["error"]["code"].as_i64().unwrap_or_else(|| panic!("{method}: no error in {answer}")),
            answer["error"].clone(),
        )
    }
}

fn parse_signature(value: &Value) -> Signature {
    value.as_str().unwrap_or_else(|| panic!("not a signature: {value}")).parse().unwrap()
}

async fn start() -> Option<Running> {
    start_with(None).await
}

/// Starts the service, over HTTPS when given a certificate and key (PEM files).
async fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Option<Running> {
    let kms = service_from_env("ETHKMS_TEST_KMS_ENDPOINT", "LocalStack KMS")?;
    let rpc = service_from_env("ETHKMS_TEST_RPC_URL", "anvil")?;
    let backend = localstack_backend(&kms).await;
    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-server test")).await.unwrap();
    let address: Address = info.address.unwrap().to_string().parse().unwrap();
    let audit_log = std::env::temp_dir().join(format!("{}.jsonl", unique("server-audit")));
    let text = format!(
        r#"
listen = "127.0.0.1:0"
upstream = "{rpc}"
audit_log = "{audit}"
journal = "{journal}"
{tls}

[keys.hot]
key = "{key}"
chain_id = 31337
confirmations = 1
# At most 0.001 ether of fees per transaction: what counts with the value against the ether limits.
fees = {{ max_fee_per_tx = "0.001ether" }}
[keys.hot.policy]
allowed_chain_ids = [31337]
destination_allowlist = ["{RECIPIENT}"]
max_value = {{ ETH = "1ether" }}
daily_limit = {{ ETH = "3ether" }}
typed_data = {{ domains = [{{ primary_types = ["Note"] }}] }}

[clients.withdrawals]
token_sha256 = "{withdrawals}"
keys = ["hot"]
methods = ["personal_sign", "eth_sign", "eth_signTypedData_v4", "eth_signTransaction", "eth_sendTransaction"]

[clients.messages-only]
token_sha256 = "{messages}"
keys = ["hot"]
methods = ["personal_sign"]
"#,
        audit = audit_log.display(),
        journal = audit_log.with_extension("sqlite").display(),
        tls = tls.map_or_else(String::new, |(cert, key)| format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        )),
        key = info.key_id,
        withdrawals = token_hash("withdrawals-token"),
        messages = token_hash("messages-token"),
    );
    let config = Config::parse(&text).unwrap();
    let service = Service::start(config.clone(), backend).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = if tls.is_some() { format!("https://localhost:{port}/") } else { format!("http://127.0.0.1:{port}/") };
    tokio::spawn(async move {
        ethkms_server::service::serve(service, listener, config.tls.as_ref(), std::future::pending()).await
    });
    let http = match tls {
        Some((cert, _)) => {
            let certificate = reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap();
            reqwest::Client::builder().add_root_certificate(certificate).build().unwrap()
        }
        None => reqwest::Client::new(),
    };
    set_balance(&rpc, address, U256::from(10) * U256::from(ETHER)).await;
    Some(Running { url, http, address, audit_log })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signing_service_end_to_end() {
    let Some(service) = start().await else { return };
    let address = service.address;

    // Authentication and permissions.
    let (status, answer) = service.call_as("wrong-token", "eth_accounts", json!([])).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (401, Some(-32001)));
    let response = service
        .http
        .post(&service.url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_accounts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (_, answer) = service.call_as("messages-token", "eth_sign", json!([address, "0x00"])).await;
    assert_eq!(answer["error"]["code"], -32002, "{answer}");

    // Accounts, a proxied read, messages, typed data.
    assert_eq!(service.result("eth_accounts", json!([])).await, json!([address]));
    assert_eq!(service.result("eth_chainId", json!([])).await, "0x7a69");
    let signature = parse_signature(&service.result("personal_sign", json!(["hello service", address])).await);
    assert_eq!(signature.recover_address_from_msg("hello service").unwrap(), address);
    let signature = parse_signature(&service.result("eth_sign", json!([address, "0x68656c6c6f"])).await);
    assert_eq!(signature.recover_address_from_msg(b"hello").unwrap(), address);
    let typed = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"chainId","type":"uint256"}],"Note":[{"name":"text","type":"string"}]},"primaryType":"Note","domain":{"name":"ethkms","chainId":31337},"message":{"text":"hi"}}"#;
    let signature = parse_signature(&service.result("eth_signTypedData_v4", json!([address, typed])).await);
    let hash: B256 = ethkms::eth::typed_data_hash(typed).unwrap();
    assert_eq!(signature.recover_address_from_prehash(&hash).unwrap(), address);

    // eth_signTransaction: a raw transaction recovered to the key. Its nonce is taken, so the service
    // broadcasts it and follows it too: it is mined without the client sending it.
    let raw: String = serde_json::from_value(
        service.result("eth_signTransaction", json!([{ "from": address, "to": RECIPIENT, "value": "0x1" }])).await,
    )
    .unwrap();
    let envelope = TxEnvelope::decode_2718(&mut hex::decode(raw).unwrap().as_slice()).unwrap();
    assert_eq!(envelope.recover_signer().unwrap(), address);
    service.receipt(&json!(envelope.tx_hash())).await;
    // A client-chosen nonce is refused unless it is the allocator's next.
    let (code, error) = service
        .error_code(
            "eth_sendTransaction",
            json!([{ "from": address, "to": RECIPIENT, "value": "0x1", "nonce": "0x99" }]),
        )
        .await;
    assert_eq!(code, -32602, "{error}");
    assert!(error["message"].as_str().unwrap().contains("nonce 153"), "{error}");

    // eth_sendTransaction from five tasks at once: five mined transactions with contiguous nonces.
    let service = Arc::new(service);
    let sends: Vec<_> = (0..5)
        .map(|_| {
            let service = Arc::clone(&service);
            tokio::spawn(async move {
                service
                    .result("eth_sendTransaction", json!([{ "from": address, "to": RECIPIENT, "value": "0x3b9aca00" }]))
                    .await
            })
        })
        .collect();
    let mut nonces = Vec::new();
    for send in sends {
        let hash = send.await.unwrap();
        let receipt = service.receipt(&hash).await;
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        let transaction = service.result("eth_getTransactionByHash", json!([hash])).await;
        nonces.push(u64::from_str_radix(transaction["nonce"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap());
    }
    nonces.sort_unstable();
    assert_eq!(nonces, (nonces[0]..nonces[0] + 5).collect::<Vec<_>>(), "contiguous nonces");

    // A transaction from the same key sent outside the service (anvil impersonates the address): the
    // service's next nonce follows it and nothing of the service's fails.
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let anvil = |method: &'static str, params: Value| {
        let (http, url) = (&service.http, &rpc_url);
        async move {
            let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
            let answer: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
            assert!(answer.get("error").is_none(), "{method}: {answer}");
            answer["result"].clone()
        }
    };
    anvil("anvil_impersonateAccount", json!([address])).await;
    let outside = anvil("eth_sendTransaction", json!([{ "from": address, "to": RECIPIENT, "value": "0x2" }])).await;
    anvil("anvil_stopImpersonatingAccount", json!([address])).await;
    service.receipt(&outside).await;
    let after =
        service.result("eth_sendTransaction", json!([{ "from": address, "to": RECIPIENT, "value": "0x3" }])).await;
    assert_eq!(service.receipt(&after).await["status"], "0x1");

    // Policy: each rule names itself; nothing is signed.
    let (code, error) = service
        .error_code("eth_sendTransaction", json!([{ "from": address, "to": RECIPIENT, "value": "0x1bc16d674ec80000" }]))
        .await;
    assert_eq!((code, error["data"]["rule"].as_str()), (-32003, Some("max_value")), "{error}");
    let (code, error) = service
        .error_code(
            "eth_signTransaction",
            json!([{ "from": address, "to": "0x0000000000000000000000000000000000000001", "value": "0x1" }]),
        )
        .await;
    assert_eq!((code, error["data"]["rule"].as_str()), (-32003, Some("destination_allowlist")), "{error}");
    let (code, error) = service
        .error_code(
            "eth_signTransaction",
            json!([{ "from": address, "to": RECIPIENT, "value": "0x1", "chainId": "0x1" }]),
        )
        .await;
    assert_eq!((code, error["data"]["rule"].as_str()), (-32003, Some("allowed_chain_ids")), "{error}");
    // 0.999 ether and up to 0.001 in fees: one ether each against the limits.
    let one_ether = json!([{ "from": address, "to": RECIPIENT, "value": "0xddd2935029d8000" }]);
    service.result("eth_signTransaction", one_ether.clone()).await;
    service.result("eth_signTransaction", one_ether.clone()).await;
    let (code, error) = service.error_code("eth_signTransaction", one_ether).await;
    assert_eq!((code, error["data"]["rule"].as_str()), (-32003, Some("daily_limit")), "{error}");

    // Bad input: JSON-RPC errors, and the service keeps serving.
    let post = |body: String| {
        service
            .http
            .post(&service.url)
            .bearer_auth("withdrawals-token")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let answer: Value = post("{ not json".into()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32700);
    let answer: Value = post(r#"{"jsonrpc":"2.0","id":1,"method":"personal_sign","params":{"a":1}}"#.into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["error"]["code"], -32602);
    let answer: Value = post(r#"{"jsonrpc":"2.0","id":1,"method":"personal_sign","params":[7, 8]}"#.into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["error"]["code"], -32602);
    let answer: Value = post(r#"{"id":1,"method":"eth_accounts"}"#.into()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32600);
    let (code, _) = service.error_code("wallet_steal", json!([])).await;
    assert_eq!(code, -32601);
    let oversized = post(format!("[{}]", "1,".repeat(1 << 20))).await.unwrap();
    assert_eq!(oversized.status().as_u16(), 413);
    let answer: Value = oversized.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32600);
    let batch: Value =
        post(r#"[{"jsonrpc":"2.0","id":1,"method":"eth_accounts"},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#.into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        (batch[0]["result"][0].as_str().map(str::to_lowercase), batch[1]["error"]["code"].as_i64()),
        (Some(address.to_string().to_lowercase()), Some(-32601))
    );
    assert_eq!(service.result("eth_accounts", json!([])).await, json!([address]), "still serving");

    // The audit log: one record per signature (3 messages, 1 + 2 signed transactions, 5 sends, the send
    // after the outside transaction) and per denial (4), chained and verified.
    let verified = ethkms::audit::verify(&service.audit_log).unwrap();
    assert_eq!(verified.records, 3 + 3 + 5 + 1 + 4);
    let log = std::fs::read_to_string(&service.audit_log).unwrap();
    assert_eq!(log.matches("\"kind\":\"denial\"").count(), 4);
    // Each record names the JSON-RPC request it answered; a denial what was asked, field by field.
    let events: Vec<Value> =
        log.lines().map(|line| serde_json::from_str::<Value>(line).unwrap()["event"].clone()).collect();
    assert!(events.iter().all(|event| event["request_id"] == 7), "{events:?}");
    let chain_denial = events.iter().find(|event| event["rule"] == "allowed_chain_ids").unwrap();
    assert_eq!(chain_denial["chain_id"], 1, "{chain_denial}");
    assert_eq!(chain_denial["to"], RECIPIENT.to_lowercase(), "{chain_denial}");
    assert_eq!(chain_denial["value"], "1", "{chain_denial}");
    assert_eq!(chain_denial["client"], "withdrawals", "{chain_denial}");

    // Health, readiness, metrics.
    let base = service.url.trim_end_matches('/');
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.unwrap().text().await.unwrap(), "ok");
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status().as_u16(), 200);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    for expected in [
        "ethkms_signatures_total{method=\"eth_sendTransaction\"} 6",
        "ethkms_signatures_total{method=\"personal_sign\"} 1",
        "ethkms_policy_denials_total{rule=\"daily_limit\"} 1",
        "ethkms_signing_seconds_count 12",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }
    // The chain head as the service saw it: the hash is that of the block with that number on anvil.
    let head = metrics.lines().find(|line| line.starts_with("ethkms_chain_head{hash=")).expect("no chain head");
    let (labels, number) = head.rsplit_once(' ').unwrap();
    let hash = labels.trim_start_matches("ethkms_chain_head{hash=\"").trim_end_matches("\"}");
    let block =
        service.result("eth_getBlockByNumber", json!([format!("{:#x}", number.parse::<u64>().unwrap()), false])).await;
    assert_eq!(block["hash"], hash, "{head}");
    std::fs::remove_file(&service.audit_log).unwrap();
}

/// Real clients: alloy's provider (no wallet: the service signs) and ethers v6's `JsonRpcSigner`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alloy_and_ethers_clients_sign_and_send_through_the_service() {
    use alloy_network::TransactionBuilder;
    use alloy_provider::{Provider, ProviderBuilder};
    use alloy_rpc_types_eth::TransactionRequest;

    let Some(service) = start().await else { return };
    let address = service.address;
    let recipient: Address = RECIPIENT.parse().unwrap();

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, "Bearer withdrawals-token".parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let transport = alloy_transport_http::Http::with_client(http, service.url.parse().unwrap());
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_client(alloy_rpc_client::RpcClient::new(transport, true));
    assert_eq!(provider.get_accounts().await.unwrap(), vec![address]);
    assert_eq!(provider.get_chain_id().await.unwrap(), 31337);
    let request = TransactionRequest::default().with_from(address).with_to(recipient).with_value(U256::from(7));
    let raw = provider.sign_transaction(request.clone()).await.unwrap();
    let envelope = TxEnvelope::decode_2718(&mut raw.as_ref()).unwrap();
    assert_eq!(envelope.recover_signer().unwrap(), address);
    let hash = *provider.send_transaction(request).await.unwrap().tx_hash();
    let mut receipt = None;
    for _ in 0..100 {
        receipt = provider.get_transaction_receipt(hash).await.unwrap();
        if receipt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let receipt = receipt.expect("mined");
    assert_eq!((receipt.from, receipt.status()), (address, true));
    let signature: String = provider.raw_request("personal_sign".into(), ("0x68656c6c6f", address)).await.unwrap();
    assert_eq!(signature.parse::<Signature>().unwrap().recover_address_from_msg(b"hello").unwrap(), address);

    let node_modules = service_from_env("ETHKMS_TEST_NODE_MODULES", "the npm packages").unwrap_or_default();
    let script = format!("{}/tests/clients/ethers_client.cjs", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("node")
        .args([script.as_str(), service.url.as_str(), "withdrawals-token", RECIPIENT])
        .env("NODE_PATH", node_modules)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "ethers client: {}", String::from_utf8_lossy(&output.stderr));
    let ethers: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = address.to_checksum(None);
    assert_eq!(ethers["accounts"][0].as_str().map(str::to_lowercase), Some(expected.to_lowercase()));
    assert_eq!(ethers["messageSigner"], expected.as_str(), "{ethers}");
    assert_eq!(ethers["typedSigner"], expected.as_str(), "{ethers}");
    assert_eq!((ethers["status"].as_u64(), ethers["from"].as_str()), (Some(1), Some(expected.as_str())), "{ethers}");
    std::fs::remove_file(&service.audit_log).unwrap();
}

/// With `tls` configured the service speaks HTTPS (rustls) and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_configured_certificate() {
    let directory = std::env::temp_dir().join(unique("server-tls"));
    std::fs::create_dir_all(&directory).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (directory.join("cert.pem"), directory.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let Some(service) = start_with(Some((&cert, &key))).await else { return };
    assert!(service.url.starts_with("https://"));
    assert_eq!(service.result("eth_accounts", json!([])).await, json!([service.address]));
    let plain = service.url.replace("https://", "http://");
    let answer = reqwest::Client::new().post(&plain).bearer_auth("withdrawals-token").json(&json!({})).send().await;
    assert!(answer.is_err() || !answer.unwrap().status().is_success(), "plain HTTP must not be served");
    std::fs::remove_dir_all(&directory).unwrap();
    std::fs::remove_file(&service.audit_log).unwrap();
}
