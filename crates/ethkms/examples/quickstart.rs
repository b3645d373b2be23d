//! What a KMS-wallet tutorial shows, with ethkms: create a wallet, read its balance, sign an
//! EIP-1559 transfer, sign a message.
//!
//! ```sh
//! # Against LocalStack and anvil (cargo xtask services up && source target/services/env.sh):
//! AWS_ENDPOINT_URL=$ETHKMS_TEST_KMS_ENDPOINT ETH_RPC_URL=$ETHKMS_TEST_RPC_URL cargo run --example quickstart
//! # Against AWS KMS and any node: set AWS_REGION / AWS_PROFILE and ETH_RPC_URL.
//! # With no AWS configuration at all, keys are kept in memory for the run (ETHKMS_BACKEND=memory).
//! ```

use alloy_network::TransactionBuilder;
use alloy_primitives::{Address, U256};
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::backend::CreateKeyRequest;
use ethkms::{BackendSettings, ChainSettings, WalletManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = match std::env::var("ETHKMS_BACKEND").as_deref() {
        Ok("memory") => BackendSettings::Memory { seed: None },
        _ => BackendSettings::aws_from_env(),
    };
    let rpc_url = std::env::var("ETH_RPC_URL").unwrap_or_else(|_| "http://localhost:8545".into());
    let chain = ChainSettings { chain_id: Some(31337), ..ChainSettings::new(rpc_url.parse()?) };
    let manager = WalletManager::new(backend, chain).await?;

    // 1. A wallet: a new ECC_SECG_P256K1 key in KMS; its address comes from its public key.
    let wallet = manager.create_wallet(CreateKeyRequest::new().description("ethkms quickstart")).await?;
    println!("created {} (key {})", wallet.address, wallet.key_id);
    let key = wallet.key_id.parse()?;

    // 2. Its balance (needs a node; a fresh wallet has none).
    match manager.balance(&key).await {
        Ok(balance) => println!("balance {} ETH", balance.ether()),
        Err(error) => println!("balance unavailable: {error}"),
    }

    // 3. An EIP-1559 transfer, signed in KMS; every field given, so no node is needed.
    let transfer = TransactionRequest::default()
        .with_to(Address::with_last_byte(0x42))
        .with_value(U256::from(1_000_000_000_000_000u64))
        .with_nonce(0)
        .with_gas_limit(21_000)
        .with_max_fee_per_gas(30_000_000_000)
        .with_max_priority_fee_per_gas(1_000_000_000);
    let raw = manager.sign_transaction(&key, transfer).await?;
    println!("signed EIP-1559 transfer: {raw}");

    // 4. A personal message, recovered to the wallet's address.
    let signature = manager.sign_message(&key, b"hello from KMS").await?;
    assert_eq!(signature.recover_address_from_msg(b"hello from KMS")?, wallet.address);
    println!("signed message: {signature}");
    Ok(())
}
