//! The whole way through the signing service: a key created in LocalStack's KMS under an alias by the
//! `ethkms` command line (`wallet create`, the binary of `ethkms-cli`), its address checked by the library; the
//! service configured with it and started in process (`ethkms_server::service`); a withdrawal through
//! the REST API and an `eth_sendTransaction` through JSON-RPC, sharing the key's nonces; both mined on
//! anvil; each raw transaction's signature recovered by foundry's cast (`cast decode-transaction`), by
//! Python eth-account and by ethers v6, a `personal_sign` checked by `cast wallet verify`; a withdrawal
//! the policy refuses; and the audit log, hash-chained, verified with one record for each.
//! Services come from `cargo xtask services up`; in CI a missing service fails this test.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use alloy_primitives::{Address, U256, hex};
use ethkms::backend::KeyHandle;
use ethkms_test_support::chain::{ETHER, balance, quantity, raw_transaction, receipt, recipient, set_balance};
use ethkms_test_support::kms::localstack_backend;
use ethkms_test_support::server::{Paths, TOKEN, config_client, config_head, serve_in_process, withdrawal};
use ethkms_test_support::verifiers::{self, cast_decode_transaction};
use ethkms_test_support::{services, unique};
use serde_json::{Value, json};

const CHAIN_ID: u64 = 31337;

/// Runs the `ethkms` binary (built beside this test by `cargo nextest run --workspace`, or
/// `cargo build -p ethkms-cli`) against LocalStack and anvil, and returns its one JSON line.
fn ethkms_cli(kms_endpoint: &str, rpc_url: &str, arguments: &[&str]) -> Value {
    // target/debug/deps/signing_service-… → target/debug/ethkms
    let binary = std::env::current_exe().unwrap().parent().and_then(std::path::Path::parent).unwrap().join("ethkms");
    assert!(binary.exists(), "{} is missing: build it with `cargo build -p ethkms-cli`", binary.display());
    let output = Command::new(&binary)
        .args(arguments)
        .env("AWS_ENDPOINT_URL", kms_endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("ETH_RPC_URL", rpc_url)
        .output()
        .unwrap();
    assert!(output.status.success(), "ethkms {arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "ethkms {arguments:?} did not print one JSON object ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn configuration(rpc_url: &str, alias: &str, allowed: &[Address], paths: &Paths) -> String {
    let allowlist = allowed.iter().map(|address| format!("\"{address}\"")).collect::<Vec<_>>().join(", ");
    let head = config_head("127.0.0.1:0", rpc_url, alias, paths);
    format!(
        r#"{head}[keys.hot.policy]
destination_allowlist = [{allowlist}]
max_value = {{ ETH = "1ether" }}
{exchange}"#,
        exchange = config_client("exchange", TOKEN, &["withdrawals", "eth_sendTransaction", "personal_sign"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_key_pays_through_rest_and_json_rpc_and_every_verifier_agrees() {
    let Some(services) = services() else { return };
    let rpc_url = services.rpc_url.as_str();

    // A key created in KMS by the command line, named by an alias, funded on the chain; the library reads
    // the same address from KMS.
    let backend = localstack_backend(&services.kms_endpoint).await;
    let alias = format!("alias/{}", unique("e2e-hot"));
    let created = ethkms_cli(&services.kms_endpoint, rpc_url, &["--json", "wallet", "create", "--alias", &alias]);
    assert_eq!(created["alias"], alias.as_str(), "{created}");
    let address: Address = created["address"].as_str().unwrap().parse().unwrap();
    let handle = KeyHandle::open(backend.clone(), alias.parse().unwrap()).await.unwrap();
    assert_eq!(Address::from(handle.address().0), address);
    set_balance(rpc_url, address, U256::from(100) * U256::from(ETHER)).await;

    // The service, configured with the alias and started in process.
    let run = unique("e2e");
    let (paid, sent, stranger) = (recipient(&run, 1), recipient(&run, 2), recipient(&run, 3));
    let paths = Paths::new();
    let api = serve_in_process(&configuration(rpc_url, &alias, &[paid, sent], &paths), backend).await;
    let accounts = api.call("eth_accounts", json!([])).await;
    assert_eq!(accounts["result"], json!([address]), "{accounts}");

    // A withdrawal through REST, and a transaction through JSON-RPC.
    let (status, accepted) = api.post(&withdrawal(&format!("{run}-paid"), paid, "ETH", "0.25ether")).await;
    assert_eq!((status, accepted["status"].as_str()), (202, Some("accepted")), "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let value = U256::from(ETHER / 1000);
    let answer = api.call("eth_sendTransaction", json!([{ "from": address, "to": sent, "value": value }])).await;
    let sent_hash = answer["result"].clone();
    assert!(sent_hash.as_str().is_some_and(|hash| hash.len() == 66), "{answer}");
    // The policy refuses a destination off the allowlist, before any KMS request.
    let (status, refused) = api.post(&withdrawal(&format!("{run}-stranger"), stranger, "ETH", "1")).await;
    assert_eq!((status, refused["error"]["kind"].as_str()), (403, Some("policy_denied")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("destination_allowlist"), "{refused}");

    // Both mined, with the key's first two nonces between them.
    let settled = api.settled(&id, Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    let paid_hash = settled["tx_hash"].clone();
    let mut nonces = BTreeSet::new();
    for (hash, to) in [(&paid_hash, paid), (&sent_hash, sent)] {
        let mined = receipt(rpc_url, hash).await;
        assert_eq!(mined["status"], "0x1", "{mined}");
        assert_eq!(mined["from"].as_str().unwrap().parse::<Address>().unwrap(), address, "{mined}");
        assert_eq!(mined["to"].as_str().unwrap().parse::<Address>().unwrap(), to, "{mined}");
        let transaction = api.call("eth_getTransactionByHash", json!([hash])).await;
        nonces.insert(quantity(&transaction["result"]["nonce"]));
    }
    assert_eq!(nonces, BTreeSet::from([0, 1]), "one nonce sequence for REST and JSON-RPC");
    assert_eq!(balance(rpc_url, paid).await, U256::from(ETHER / 4));
    assert_eq!(balance(rpc_url, sent).await, value);

    // Each raw transaction as the chain stores it: cast, eth-account and ethers recover our address.
    let (Some(cast), Some(eth_account), Some(ethers)) =
        (verifiers::cast(), verifiers::eth_account(), verifiers::ethers())
    else {
        return;
    };
    let expected = address.to_checksum(None);
    let mut cases = Vec::new();
    for (name, hash, to, value) in
        [("withdrawal", &paid_hash, paid, U256::from(ETHER / 4)), ("rpc", &sent_hash, sent, value)]
    {
        let raw = raw_transaction(rpc_url, hash).await;
        let decoded = cast_decode_transaction(&cast, &raw);
        assert_eq!(decoded["signer"].as_str().map(str::to_lowercase), Some(expected.to_lowercase()), "{decoded}");
        assert_eq!(decoded["to"].as_str().map(str::to_lowercase), Some(to.to_string().to_lowercase()), "{decoded}");
        assert_eq!(decoded["value"].as_str().map(|value| value.parse::<U256>().unwrap()), Some(value), "{decoded}");
        assert_eq!(decoded["chainId"].as_str().map(|id| quantity(&json!(id))), Some(u128::from(CHAIN_ID)));
        assert_eq!(decoded["hash"], *hash, "{decoded}");
        cases.push(json!({ "name": name, "kind": "tx", "raw": raw }));
    }
    let cases = Value::Array(cases);
    for (verifier, command) in [("eth-account", eth_account), ("ethers", ethers)] {
        verifiers::assert_every_case_recovers(verifier, command, &cases, &expected);
    }

    // A message signed through the service, checked by cast.
    let message = "ethkms end to end";
    let answer = api.call("personal_sign", json!([format!("0x{}", hex::encode(message)), address])).await;
    let signature = answer["result"].as_str().unwrap_or_else(|| panic!("personal_sign: {answer}"));
    let verify =
        Command::new(&cast).args(["wallet", "verify", "--address", &expected, message, signature]).output().unwrap();
    assert!(verify.status.success(), "cast wallet verify: {}", String::from_utf8_lossy(&verify.stderr));
    let forged = Command::new(&cast)
        .args(["wallet", "verify", "--address", &expected, "another message", signature])
        .output()
        .unwrap();
    assert!(!forged.status.success(), "cast accepted the signature for another message");

    // The audit log: a record per signature (withdrawal, transaction, message) and per denial, chained.
    let verified = ethkms::audit::verify(&paths.audit).unwrap();
    assert_eq!(verified.records, 4, "3 signatures and 1 denial");
    let log = std::fs::read_to_string(&paths.audit).unwrap();
    for hash in [&paid_hash, &sent_hash] {
        assert!(log.contains(hash.as_str().unwrap()), "the audit log does not name {hash}:\n{log}");
    }
    assert_eq!(log.matches("\"kind\":\"denial\"").count(), 1, "{log}");
}
