//! Every transaction type, a personal message and typed data signed by a key in LocalStack's KMS
//! (ethkms-aws) through the alloy signer (ethkms-eth), mined on anvil (prague hardfork), an ERC-20
//! deployed from committed bytecode and transferred; then every signature checked by code nobody here
//! wrote: Python eth-account, ethers v6 and foundry's cast (which also signs with the same KMS key for
//! ethkms-core to verify). Services come from `cargo xtask services up`; in CI a missing service fails
//! this test.

use std::process::Command;
use std::time::Duration;

use alloy_eips::eip4844::builder::{SidecarBuilder, SimpleCoder};
use alloy_eips::eip7702::Authorization;
use alloy_network::{
    Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder, TransactionBuilder4844,
    TransactionBuilder7702,
};
use alloy_primitives::{Address, Bytes, U256, address, hex};
use alloy_provider::{Provider, ProviderBuilder};
use alloy_rpc_types_eth::{TransactionReceipt, TransactionRequest};
use alloy_signer::Signer;
use ethkms::backend::KeyRef;
use ethkms::eth::{KmsSigner, chain};
use ethkms_test_support::chain::TEST_TOKEN_BIN;
use ethkms_test_support::kms::localstack_backend;
use ethkms_test_support::verifiers::{self, cast_aws_env};
use ethkms_test_support::{funded_key, services};

const CHAIN_ID: u64 = 31337;
const TIMEOUT: Duration = Duration::from_secs(30);
const RECIPIENT: Address = address!("0x000000000000000000000000000000000000dEaD");

/// Completes `request` (nonce, gas, fees, chain id), signs it through `EthereumWallet`, sends the raw
/// bytes and waits for the receipt; returns the receipt and the transaction as the chain stored it.
async fn send<P: Provider>(
    provider: &P,
    wallet: &EthereumWallet,
    from: Address,
    request: TransactionRequest,
) -> (TransactionReceipt, Bytes) {
    let mut request = request.with_from(from).with_chain_id(CHAIN_ID);
    request.set_nonce(chain::nonce(provider, from).await.unwrap());
    if request.gas.is_none() {
        request.set_gas_limit(chain::estimate_gas(provider, &request).await.unwrap() * 2);
    }
    let has_fees = request.gas_price.is_some() || request.max_fee_per_gas.is_some();
    if !has_fees {
        request = chain::fees(provider).await.unwrap().apply(request);
    }
    let envelope = NetworkTransactionBuilder::<Ethereum>::build(request, wallet).await.unwrap();
    let raw = alloy_eips::eip2718::Encodable2718::encoded_2718(&envelope);
    let receipt = chain::send_raw_and_wait(provider, &raw, TIMEOUT).await.unwrap();
    assert_eq!(receipt.from, from);
    let stored = provider.get_raw_transaction_by_hash(receipt.transaction_hash).await.unwrap().unwrap();
    (receipt, stored)
}

const TYPED_DATA: &str = r#"{
  "types": {
    "EIP712Domain": [{"name":"name","type":"string"},{"name":"version","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
    "Withdrawal": [{"name":"to","type":"address"},{"name":"amount","type":"uint256"},{"name":"reference","type":"string"}]
  },
  "primaryType": "Withdrawal",
  "domain": {"name":"ethkms","version":"1","chainId":31337,"verifyingContract":"0x000000000000000000000000000000000000dEaD"},
  "message": {"to":"0x000000000000000000000000000000000000dEaD","amount":"1000000000000000000","reference":"withdrawal #42"}
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_type_is_mined_and_every_signature_verified_independently() {
    let Some(services) = services() else { return };
    // A fresh KMS key on LocalStack, funded with 100 ether on anvil.
    let backend = localstack_backend(&services.kms_endpoint).await;
    let (key_id, _) = funded_key(&backend, &services.rpc_url).await;
    let signer = KmsSigner::new(backend, KeyRef::new(key_id.clone()).unwrap(), Some(CHAIN_ID)).await.unwrap();
    let from = signer.address();
    let wallet = EthereumWallet::from(signer.clone());
    let provider = ProviderBuilder::new().wallet(wallet.clone()).connect_http(services.rpc_url.parse().unwrap());
    let mut cases = Vec::new();
    let gas_price = provider.get_gas_price().await.unwrap();

    // Legacy with EIP-155, EIP-2930, EIP-1559.
    let transfer = TransactionRequest::default().with_to(RECIPIENT).with_value(U256::from(1_000));
    let requests = [
        ("legacy", transfer.clone().with_gas_price(gas_price).transaction_type(0)),
        (
            "eip2930",
            transfer.clone().with_gas_price(gas_price).with_access_list(Default::default()).transaction_type(1),
        ),
        ("eip1559", transfer.clone()),
    ];
    for (name, request) in requests {
        let (receipt, raw) = send(&provider, &wallet, from, request).await;
        let expected_type = match name {
            "legacy" => 0,
            "eip2930" => 1,
            _ => 2,
        };
        assert_eq!(receipt.transaction_type() as u8, expected_type, "{name}");
        cases.push(serde_json::json!({"name": name, "kind": "tx", "raw": raw}));
    }

    // EIP-4844: a blob transaction with its sidecar.
    let sidecar = SidecarBuilder::<SimpleCoder>::from_slice(b"ethkms: a blob signed in KMS").build_4844().unwrap();
    let blob_request = TransactionRequest::default()
        .with_to(RECIPIENT)
        .with_blob_sidecar_4844(sidecar)
        .with_max_fee_per_blob_gas(10_000_000_000);
    let (receipt, raw) = send(&provider, &wallet, from, blob_request).await;
    assert_eq!(receipt.transaction_type() as u8, 3);
    assert!(receipt.blob_gas_used.unwrap_or_default() > 0);
    cases.push(serde_json::json!({"name": "eip4844", "kind": "tx", "raw": raw}));

    // ERC-20: deploy the committed bytecode, transfer, check balances.
    let bytecode = hex::decode(TEST_TOKEN_BIN.trim()).unwrap();
    let supply = U256::from(1_000_000u64) * U256::from(10u64).pow(U256::from(18));
    let mut deploy_code = bytecode;
    deploy_code.extend_from_slice(&supply.to_be_bytes::<32>());
    let deploy = TransactionRequest::default().with_deploy_code(deploy_code);
    let (receipt, raw) = send(&provider, &wallet, from, deploy).await;
    let token = receipt.contract_address.expect("a deployment has a contract address");
    cases.push(serde_json::json!({"name": "deploy", "kind": "tx", "raw": raw}));
    assert_eq!(chain::token_balance(&provider, token, from).await.unwrap(), supply);
    assert_eq!(chain::token_decimals(&provider, token).await.unwrap(), 18);
    let amount = U256::from(1234u64);
    let receipt = chain::transfer_token(&provider, token, RECIPIENT, amount, TIMEOUT).await.unwrap();
    assert_eq!(receipt.from, from);
    let raw = provider.get_raw_transaction_by_hash(receipt.transaction_hash).await.unwrap().unwrap();
    cases.push(serde_json::json!({"name": "erc20-transfer", "kind": "tx", "raw": raw}));
    assert_eq!(chain::token_balance(&provider, token, RECIPIENT).await.unwrap(), amount);
    assert_eq!(chain::token_balance(&provider, token, from).await.unwrap(), supply - amount);

    // EIP-7702: the KMS account delegates to the token contract, authorization and transaction both
    // signed by KMS. The transaction's own nonce comes first, so the authorization takes the next one.
    let nonce = chain::nonce(&provider, from).await.unwrap();
    let authorization = Authorization { chain_id: U256::from(CHAIN_ID), address: token, nonce: nonce + 1 };
    let signed_authorization = signer.sign_authorization(authorization).await.unwrap();
    // Sent elsewhere: a call to the account itself would run the token code, which has no fallback.
    let delegate = TransactionRequest::default().with_to(RECIPIENT).with_authorization_list(vec![signed_authorization]);
    let (receipt, raw) = send(&provider, &wallet, from, delegate.with_gas_limit(100_000)).await;
    assert_eq!(receipt.transaction_type() as u8, 4);
    let code = provider.get_code_at(from).await.unwrap();
    let mut expected_code = vec![0xef, 0x01, 0x00];
    expected_code.extend_from_slice(token.as_slice());
    assert_eq!(code.as_ref(), expected_code.as_slice(), "the account is delegated to the token");
    cases.push(serde_json::json!({"name": "eip7702", "kind": "tx", "raw": raw}));

    // A personal message and typed data.
    let message = "ethkms: withdrawal batch 42 approved";
    let message_signature = signer.sign_message(message.as_bytes()).await.unwrap();
    cases.push(serde_json::json!({"name": "message", "kind": "message", "message": message, "signature": message_signature.to_string()}));
    let typed_signature = signer.sign_typed_data_json(TYPED_DATA).await.unwrap();
    cases.push(serde_json::json!({"name": "typed", "kind": "typed", "json": TYPED_DATA, "signature": typed_signature.to_string()}));

    // Independent verifiers: ethers v6 and eth-account must each recover every case to our address.
    let cases = serde_json::Value::Array(cases);
    let expected = from.to_checksum(None);
    let (Some(node), Some(python)) = (verifiers::ethers(), verifiers::eth_account()) else { return };
    assert_eq!(cases.as_array().map(Vec::len), Some(9));
    for (verifier, command) in [("ethers", node), ("eth-account", python)] {
        verifiers::assert_every_case_recovers(verifier, command, &cases, &expected);
    }

    // foundry's cast: every transaction as the chain stored it recovers to our address; then cast reads
    // the same KMS key itself.
    let Some(cast) = verifiers::cast() else { return };
    for case in cases.as_array().into_iter().flatten().filter(|case| case["kind"] == "tx") {
        let decoded = verifiers::cast_decode_transaction(&cast, case["raw"].as_str().unwrap());
        let signer = decoded["signer"].as_str().map(str::to_lowercase);
        assert_eq!(signer, Some(expected.to_lowercase()), "cast on {}: {decoded}", case["name"]);
    }
    let cast_env = |command: &mut Command| cast_aws_env(command, &services.kms_endpoint, &key_id);
    let mut address = Command::new(&cast);
    address.args(["wallet", "address", "--aws"]);
    cast_env(&mut address);
    let output = address.output().unwrap();
    assert!(output.status.success(), "cast wallet address: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected);
    let verify = Command::new(&cast)
        .args(["wallet", "verify", "--address", &expected, message, &message_signature.to_string()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "cast wallet verify: {}", String::from_utf8_lossy(&verify.stderr));
    // And the other way round: cast signs with the KMS key, ethkms-core verifies.
    let mut sign = Command::new(&cast);
    sign.args(["wallet", "sign", "--aws", message]);
    cast_env(&mut sign);
    let output = sign.output().unwrap();
    assert!(output.status.success(), "cast wallet sign: {}", String::from_utf8_lossy(&output.stderr));
    let cast_signature = hex::decode(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    let parsed = ethkms::core::Signature::from_bytes(&cast_signature).unwrap();
    let digest = ethkms::core::eip191_hash_message(message.as_bytes());
    assert_eq!(parsed.recover_address(&digest).unwrap().0, from.0.0);
}
