//! The policy through the real service (anvil with a deployed ERC-20): each way of moving value around the
//! limits — fees, approvals, typed-data permits — is refused naming its rule, before any KMS request (the
//! in-memory key service counts them), while the allowed forms are signed and verify. With LocalStack's
//! KMS, the same refusals and the allowed transactions mined.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, Signature, U256, hex};
use alloy_sol_types::{SolCall, sol};
use common::typed::{self, PERMIT2};
use common::{TOKEN, deploy_token, funded_key, localstack, receipt, recipient, serve_in_process, token_balance};
use ethkms::backend::{KeyBackend, MemoryBackend};
use ethkms_test_support::{service_from_env, unique};
use serde_json::{Value, json};

sol! {
    function approve(address spender, uint256 amount) external returns (bool);
    function increaseAllowance(address spender, uint256 addedValue) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function transfer(address to, uint256 amount) external returns (bool);
}

/// The test's key, token and parties.
struct Setup {
    api: common::Api,
    address: Address,
    token: Address,
    friend: Address,
    attacker: Address,
    audit: std::path::PathBuf,
}

async fn setup(backend: Arc<dyn KeyBackend>, rpc_url: &str) -> Setup {
    let (key, address) = funded_key(&backend, rpc_url).await;
    let token = deploy_token(rpc_url, address, U256::from(100_000)).await;
    let run = unique("policy");
    let (friend, attacker) = (recipient(&run, 1), recipient(&run, 2));
    let paths = common::Paths::new();
    let head = common::config_head("127.0.0.1:0", rpc_url, &key, &paths);
    let text = format!(
        r#"{head}[keys.hot.policy]
destination_allowlist = ["{friend}"]
max_value = {{ ETH = "1ether", "{token}" = "1000" }}
daily_limit = {{ "{token}" = "5000" }}
[keys.hot.policy.typed_data]
max_deadline_seconds = 3600
domains = [
    {{ verifying_contract = "{token}", primary_types = ["Permit"] }},
    {{ verifying_contract = "{PERMIT2}", primary_types = ["PermitSingle", "PermitTransferFrom"] }},
]
{exchange}"#,
        exchange = common::config_client(
            "exchange",
            TOKEN,
            &["eth_sendTransaction", "eth_signTransaction", "eth_signTypedData_v4"]
        ),
    );
    let api = serve_in_process(&text, backend).await;
    Setup { api, address, token, friend, attacker, audit: paths.audit }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn erc2612(chain: u64, token: Address, owner: Address, spender: Address, value: u64, deadline: u64) -> Value {
    typed::erc2612(chain, token, owner, spender, U256::from(value), deadline)
}

fn permit_single(token: Address, spender: Address, amount: u64, deadline: u64) -> Value {
    typed::permit_single(31337, typed::permit2(), token, spender, U256::from(amount), deadline)
}

fn permit_transfer_from(token: Address, spender: Address, amount: u64, deadline: u64) -> Value {
    typed::permit_transfer_from(31337, typed::permit2(), token, spender, U256::from(amount), deadline)
}

fn calldata(data: &[u8]) -> String {
    format!("0x{}", hex::encode(data))
}

/// The rule a JSON-RPC answer was denied by.
fn denied_by(answer: &Value) -> Option<&str> {
    assert_eq!(answer["error"]["code"], -32003, "{answer}");
    answer["error"]["data"]["rule"].as_str()
}

/// Every bypass of the issue, each refused with its rule; returns how many there were.
async fn every_bypass_is_refused(setup: &Setup) -> usize {
    let Setup { api, address, token, friend, attacker, .. } = setup;
    let (address, token, friend, attacker) = (*address, *token, *friend, *attacker);
    let transaction = |data: Vec<u8>, extra: Value| {
        let mut request = json!({ "from": address, "to": token, "data": calldata(&data) });
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        request
    };
    let deadline = now() + 600;
    let cases: Vec<(&str, Value, &str)> = vec![
        // Fees: a 0-value transaction to an allowed address with 10M gas at 1e14 wei per gas (1,000 ether).
        (
            "eth_signTransaction",
            json!([{ "from": address, "to": friend, "value": "0x0", "gas": "0x989680", "maxFeePerGas": "0x5af3107a4000" }]),
            "fee_cap",
        ),
        // Within the per-gas cap, over the per-transaction one: 10M gas × 100 gwei is 1 ether.
        (
            "eth_sendTransaction",
            json!([{ "from": address, "to": friend, "gas": "0x989680", "maxFeePerGas": "0x174876e800" }]),
            "fee_cap",
        ),
        (
            "eth_signTransaction",
            json!([{ "from": address, "to": friend, "gas": "0x5208", "gasPrice": "0x5af3107a4000" }]),
            "fee_cap",
        ),
        // Approvals: the spender must be allowed, the amount within the token's limits.
        (
            "eth_sendTransaction",
            json!([transaction(approveCall { spender: attacker, amount: U256::MAX }.abi_encode(), json!({}))]),
            "destination_allowlist",
        ),
        (
            "eth_sendTransaction",
            json!([transaction(approveCall { spender: friend, amount: U256::MAX }.abi_encode(), json!({}))]),
            "max_value",
        ),
        (
            "eth_signTransaction",
            json!([transaction(
                increaseAllowanceCall { spender: attacker, addedValue: U256::from(1) }.abi_encode(),
                json!({})
            )]),
            "destination_allowlist",
        ),
        // Short calldata of a known selector, and a function that is not allowed.
        (
            "eth_signTransaction",
            json!([transaction(
                approveCall { spender: friend, amount: U256::from(1) }.abi_encode()[..36].to_vec(),
                json!({})
            )]),
            "calldata",
        ),
        (
            "eth_signTransaction",
            json!([transaction(
                transferFromCall { from: address, to: friend, amount: U256::from(1) }.abi_encode(),
                json!({})
            )]),
            "contract_calls",
        ),
        // Ether sent with a token transfer goes to the token contract, which is not an allowed destination.
        (
            "eth_signTransaction",
            json!([transaction(
                transferCall { to: friend, amount: U256::from(1) }.abi_encode(),
                json!({ "value": "0x1" })
            )]),
            "destination_allowlist",
        ),
        // Typed data: ERC-2612 and Permit2 permits for a stranger, too much, another chain, a late deadline,
        // a contract that is not listed.
        (
            "eth_signTypedData_v4",
            json!([address, erc2612(31337, token, address, attacker, 1, deadline)]),
            "destination_allowlist",
        ),
        ("eth_signTypedData_v4", json!([address, erc2612(31337, token, address, friend, 1001, deadline)]), "max_value"),
        (
            "eth_signTypedData_v4",
            json!([address, erc2612(1, token, address, friend, 1, deadline)]),
            "typed_data_domain",
        ),
        (
            "eth_signTypedData_v4",
            json!([address, erc2612(31337, token, address, friend, 1, now() + 2 * 3600)]),
            "permit_deadline",
        ),
        (
            "eth_signTypedData_v4",
            json!([address, erc2612(31337, friend, address, friend, 1, deadline)]),
            "typed_data_domain",
        ),
        (
            "eth_signTypedData_v4",
            json!([address, permit_single(token, attacker, 1, deadline)]),
            "destination_allowlist",
        ),
        ("eth_signTypedData_v4", json!([address, permit_single(token, friend, 1001, deadline)]), "max_value"),
        ("eth_signTypedData_v4", json!([address, permit_single(friend, friend, 1, deadline)]), "typed_data_type"),
        (
            "eth_signTypedData_v4",
            json!([address, permit_transfer_from(token, attacker, 1, deadline)]),
            "destination_allowlist",
        ),
        (
            "eth_signTypedData_v4",
            json!([address, permit_transfer_from(token, friend, 1, now() + 7200)]),
            "permit_deadline",
        ),
    ];
    for (method, params, rule) in &cases {
        let answer = api.call(method, params.clone()).await;
        assert_eq!(denied_by(&answer), Some(*rule), "{method} {params}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule) && !message.contains('\n'), "{message}");
    }
    cases.len()
}

fn recovered(signature: &Value, digest: B256) -> Address {
    let signature: Signature = signature.as_str().unwrap().parse().unwrap();
    signature.recover_address_from_prehash(&digest).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_any_kms_request_and_allowed_permits_verify() {
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let memory = Arc::new(MemoryBackend::new());
    let setup = setup(memory.clone(), &rpc_url).await;
    let signs = memory.request_counts().sign;
    let refused = every_bypass_is_refused(&setup).await;
    assert_eq!(memory.request_counts().sign, signs, "a refused request made a KMS signature request");

    // The allowed forms: an ERC-2612 permit and a Permit2 allowance for the allowlisted spender, within the
    // limits, are signed, and the signatures recover to the key.
    let deadline = now() + 600;
    for typed in [
        erc2612(31337, setup.token, setup.address, setup.friend, 1000, deadline),
        permit_single(setup.token, setup.friend, 500, deadline),
    ] {
        let answer = setup.api.call("eth_signTypedData_v4", json!([setup.address, typed])).await;
        let digest = ethkms::eth::typed_data_hash(&typed.to_string()).unwrap();
        assert_eq!(recovered(&answer["result"], digest), setup.address, "{answer}");
    }
    assert_eq!(memory.request_counts().sign, signs + 2);
    // The permits counted against the token's daily limit (5,000): 1,000 + 500 so far.
    let more = setup
        .api
        .call(
            "eth_signTypedData_v4",
            json!([setup.address, erc2612(31337, setup.token, setup.address, setup.friend, 1000, deadline)]),
        )
        .await;
    assert!(more.get("result").is_some(), "{more}");
    let over = permit_single(setup.token, setup.friend, 1000, deadline);
    for _ in 0..2 {
        setup.api.call("eth_signTypedData_v4", json!([setup.address, over])).await;
    }
    let answer = setup.api.call("eth_signTypedData_v4", json!([setup.address, over])).await;
    assert_eq!(denied_by(&answer), Some("daily_limit"), "{answer}");

    // Every refusal is counted by rule and in the audit log, with its rule.
    let metrics = setup.api.metrics().await;
    assert!(metrics.contains("ethkms_policy_denials_total{rule=\"fee_cap\"} 3"), "{metrics}");
    assert!(metrics.contains("ethkms_policy_denials_total{rule=\"typed_data_domain\"} 2"), "{metrics}");
    let audit = std::fs::read_to_string(&setup.audit).unwrap();
    assert_eq!(audit.matches("\"kind\":\"denial\"").count(), refused + 1);
    assert!(audit.contains("\"rule\":\"permit_deadline\""));
    assert_eq!(ethkms::audit::verify(&setup.audit).unwrap().records, u64::try_from(refused).unwrap() + 1 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kms_the_bypasses_are_refused_and_allowed_token_calls_are_mined() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let setup = setup(backend, &rpc_url).await;
    every_bypass_is_refused(&setup).await;

    // A transfer and an approval within the limits, to the allowlisted party, with the service's fees.
    let send = |data: Vec<u8>| {
        setup
            .api
            .call("eth_sendTransaction", json!([{ "from": setup.address, "to": setup.token, "data": calldata(&data) }]))
    };
    let transferred = send(transferCall { to: setup.friend, amount: U256::from(250) }.abi_encode()).await;
    assert_eq!(receipt(&rpc_url, &transferred["result"]).await["status"], "0x1", "{transferred}");
    assert_eq!(token_balance(&rpc_url, setup.token, setup.friend).await, U256::from(250));
    let approved = send(approveCall { spender: setup.friend, amount: U256::from(1000) }.abi_encode()).await;
    assert_eq!(receipt(&rpc_url, &approved["result"]).await["status"], "0x1", "{approved}");
    // Client fees within the caps are kept: 21,000 gas × 10 gwei.
    let plain = json!([{ "from": setup.address, "to": setup.friend, "value": "0x1", "gas": "0x5208", "maxFeePerGas": "0x2540be400", "maxPriorityFeePerGas": "0x1" }]);
    let raw = setup.api.call("eth_signTransaction", plain).await;
    assert!(raw["result"].as_str().is_some_and(|raw| raw.starts_with("0x02")), "{raw}");
    // Nothing moved to the attacker, and the developer account is untouched by any of it.
    assert_eq!(token_balance(&rpc_url, setup.token, setup.attacker).await, U256::ZERO);
    assert!(common::balance(&rpc_url, setup.attacker).await.is_zero());
}
