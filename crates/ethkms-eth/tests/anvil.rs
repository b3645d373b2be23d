//! The chain helpers against a real KMS API and a real chain: a key in LocalStack's KMS funded on anvil;
//! balances, fees, a transfer mined, and the failures (too little balance, another chain, no node)
//! reported as errors. Services come from `cargo xtask services up`; in CI a missing service fails
//! these tests. (Every transaction type signed here and checked by independent verifiers is an
//! end-to-end test: `tests/e2e/verifiers.rs` at the workspace root.)

use std::time::Duration;

use alloy_network::TransactionBuilder;
use alloy_primitives::{Address, U256, address};
use alloy_provider::ProviderBuilder;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::Signer;
use ethkms_backend::KeyRef;
use ethkms_eth::{KmsSigner, chain};
use ethkms_test_support::kms::localstack_backend;
use ethkms_test_support::{Services, funded_key, services};

const CHAIN_ID: u64 = 31337;
const TIMEOUT: Duration = Duration::from_secs(30);
const RECIPIENT: Address = address!("0x000000000000000000000000000000000000dEaD");

/// A fresh KMS key on LocalStack, funded with 100 ether on anvil.
async fn funded_signer(services: &Services) -> KmsSigner {
    let backend = localstack_backend(&services.kms_endpoint).await;
    let (key_id, _) = funded_key(&backend, &services.rpc_url).await;
    KmsSigner::new(backend, KeyRef::new(key_id).unwrap(), Some(CHAIN_ID)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_helpers_report_balances_fees_and_failures() {
    let Some(services) = services() else { return };
    let signer = funded_signer(&services).await;
    let from = signer.address();
    let provider = ProviderBuilder::new().wallet(signer).connect_http(services.rpc_url.parse().unwrap());
    let balance = chain::balance(&provider, from).await.unwrap();
    assert_eq!(balance.ether(), "100.000000000000000000");
    assert!(matches!(chain::fees(&provider).await.unwrap(), chain::Fees::Eip1559 { .. }), "anvil has a base fee");
    let request = TransactionRequest::default().with_to(RECIPIENT).with_value(U256::from(5));
    let receipt = chain::send_and_wait(&provider, request, TIMEOUT).await.unwrap();
    assert_eq!(receipt.from, from);
    assert_eq!(chain::nonce(&provider, from).await.unwrap(), 1);
    // More than the balance: the node refuses it and the error says so.
    let too_much = TransactionRequest::default().with_to(RECIPIENT).with_value(U256::from(10u128.pow(21)));
    let error = chain::send_and_wait(&provider, too_much, TIMEOUT).await.unwrap_err();
    assert!(matches!(error, ethkms_eth::SignerError::Rpc(_)), "{error:?}");
    // A transaction for another chain is refused by the signer, before any KMS request.
    let wrong_chain = TransactionRequest::default().with_to(RECIPIENT).with_chain_id(1);
    let error = chain::send_and_wait(&provider, wrong_chain, TIMEOUT).await.unwrap_err();
    assert!(error.to_string().contains("chain"), "{error}");
    // An unreachable node is an RPC error naming the problem.
    let nowhere = ProviderBuilder::new().connect_http("http://127.0.0.1:9".parse().unwrap());
    let error = chain::balance(&nowhere, from).await.unwrap_err();
    assert!(matches!(error, ethkms_eth::SignerError::Rpc(_)), "{error:?}");
}
