//! Deposit addresses (`ethkms-bench deposits`): how fast they are derived on one core, and what sweeping
//! them costs on anvil — gas per swept deposit, ether and ERC-20, the first sweep (the address deployed) and
//! later ones, in batches of 1, 10 and 50, next to the peers' published figures — and how many KMS `Sign`
//! requests 100 swept deposits take.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use alloy_network::TransactionBuilder as _;
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::{Provider, ProviderBuilder};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::SolCall as _;
use async_trait::async_trait;
use ethkms_backend::{
    BackendError, CreateKeyRequest, KeyBackend, KeyDescription, KeyFilter, KeyHandle, KeyInfo, KeyRef,
    PublicKeyResponse,
};
use ethkms_deposits::contracts::{self, Erc20};
use ethkms_deposits::{DepositAddresses, Reference, SweepBatch};
use ethkms_eth::KmsSigner;

use crate::{Options, rpc_url};

/// The derivation target, addresses per second on one core.
const DERIVATION_TARGET: f64 = 1_000_000.0;

/// The peers' published gas figures: Argent's forwarder (deploy, then each forward; and its
/// deploy-forward-destroy in one transaction), and bitbank's bound for an ether deposit's whole path.
const ARGENT_DEPLOY: u64 = 90_709;
const ARGENT_FORWARD: u64 = 30_814;
const ARGENT_ONE_TRANSACTION: u64 = 58_901;
const BITBANK_ETHER_PATH: u64 = 42_000;

/// A key backend that counts `Sign` requests.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn KeyBackend>,
    signs: AtomicU64,
}

#[async_trait]
impl KeyBackend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn create_key(&self, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
        self.inner.create_key(request).await
    }
    async fn public_key(&self, key: &KeyRef) -> Result<PublicKeyResponse, BackendError> {
        self.inner.public_key(key).await
    }
    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError> {
        self.signs.fetch_add(1, Ordering::Relaxed);
        self.inner.sign_digest(key, digest).await
    }
    async fn describe_key(&self, key: &KeyRef) -> Result<KeyDescription, BackendError> {
        self.inner.describe_key(key).await
    }
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyDescription>, BackendError> {
        self.inner.list_keys(filter).await
    }
    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError> {
        self.inner.set_alias(alias, key).await
    }
    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.inner.disable_key(key).await
    }
    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.inner.enable_key(key).await
    }
    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError> {
        self.inner.schedule_key_deletion(key, pending_days).await
    }
}

/// Derivation on one core for `seconds`, in rounds; then the gas on anvil.
pub(crate) async fn run(
    options: &Options,
    backend: &Arc<dyn KeyBackend>,
    key_id: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    derivation(options);
    gas(backend, key_id).await
}

fn derivation(options: &Options) {
    let addresses = DepositAddresses::new(Address::with_last_byte(0xfa), Address::with_last_byte(0x7e));
    println!("### Deriving deposit addresses (one core)");
    println!();
    println!("| round | indices/s (`address_of_index`) | references/s (`address(&Reference)`) | indices ÷ target |");
    println!("| ---: | ---: | ---: | ---: |");
    let references: Vec<Reference> =
        (0..100_000).map(|index| Reference::new(&format!("customer-{index:08}")).unwrap()).collect();
    let (mut indices, mut named) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(1 << 16);
    for round in 0..options.rounds {
        let (started, mut count, mut next) = (Instant::now(), 0_u64, 0_u64);
        while started.elapsed().as_secs_f64() < options.seconds {
            out.clear();
            addresses.extend_with_indices(next..next + (1 << 16), &mut out);
            next += 1 << 16;
            count += 1 << 16;
        }
        let index_rate = count as f64 / started.elapsed().as_secs_f64();
        std::hint::black_box(&out);
        let (started, mut count) = (Instant::now(), 0_u64);
        while started.elapsed().as_secs_f64() < options.seconds {
            for reference in &references {
                std::hint::black_box(addresses.address(reference));
            }
            count += references.len() as u64;
        }
        let reference_rate = count as f64 / started.elapsed().as_secs_f64();
        println!("| {} | {index_rate:.0} | {reference_rate:.0} | {:.2} |", round + 1, index_rate / DERIVATION_TARGET);
        indices.push(index_rate);
        named.push(reference_rate);
    }
    let (indices, named) = (crate::median(indices), crate::median(named));
    println!("| median | {indices:.0} | {named:.0} | {:.2} |", indices / DERIVATION_TARGET);
    println!();
}

async fn gas(backend: &Arc<dyn KeyBackend>, key_id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let counting = Arc::new(Counting { inner: Arc::clone(backend), signs: AtomicU64::new(0) });
    let handle = KeyHandle::open(counting.clone() as Arc<dyn KeyBackend>, KeyRef::new(key_id.to_owned())?).await?;
    let signer = KmsSigner::from_handle(handle, Some(31337));
    let owner = alloy_signer::Signer::address(&signer);
    let rpc_url = rpc_url()?;
    let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.parse()?);
    let () = provider.raw_request("anvil_setBalance".into(), (owner, U256::from(10_u128.pow(24)))).await?;
    // The treasury exists (a first payment to a new account costs 25,000 more, once).
    let parent = Address::from_word(alloy_primitives::keccak256(factory_nonce_seed()));
    let () = provider.raw_request("anvil_setBalance".into(), (parent, U256::from(1))).await?;

    let send = async |to: Option<Address>, input: Bytes| -> Result<u64, Box<dyn std::error::Error>> {
        let mut request = TransactionRequest::default().with_input(input);
        if let Some(to) = to {
            request = request.with_to(to);
        }
        let receipt = provider.send_transaction(request).await?.get_receipt().await?;
        if !receipt.status() {
            return Err(format!("transaction {} reverted", receipt.transaction_hash).into());
        }
        Ok(receipt.gas_used)
    };
    let factory_receipt = provider
        .send_transaction(TransactionRequest::default().with_deploy_code(contracts::factory_creation_code(owner)))
        .await?
        .get_receipt()
        .await?;
    let factory = factory_receipt.contract_address.ok_or("the factory was not created")?;
    let token_code = [
        contracts::test_token_artifact().bytecode.as_ref(),
        &alloy_sol_types::SolValue::abi_encode_params(&("Bench USD".to_owned(), "BUSD".to_owned(), true)),
    ]
    .concat();
    let token = provider
        .send_transaction(TransactionRequest::default().with_deploy_code(token_code))
        .await?
        .get_receipt()
        .await?
        .contract_address
        .ok_or("the token was not created")?;
    let addresses = DepositAddresses::new(factory, parent);
    println!("### Sweeping deposits (anvil; factory {factory}, treasury {parent})");
    println!();

    // The parent's forwarder is deployed by its first sweep, once: measured apart.
    let mut first = SweepBatch::new(parent);
    first.add(Reference::new("warm-up")?.salt(), true, &[])?;
    let forwarder_gas = send(Some(factory), first.calldata()).await?;

    let mint = async |to: Address| -> Result<(), Box<dyn std::error::Error>> {
        let call = mintCall { to, amount: U256::from(1_000_000) };
        send(Some(token), call.abi_encode().into()).await.map(|_| ())
    };
    let mut rows: Vec<(usize, u64, u64, u64)> = Vec::new();
    let mut signs_at_50 = 0;
    for batch in [1_usize, 10, 50] {
        // Ether that arrived before deployment (the state a deposit leaves, set directly).
        let ether: Vec<Reference> =
            (0..batch).map(|i| Reference::new(&format!("ether-{batch}-{i}")).unwrap()).collect();
        let mut sweep = SweepBatch::new(parent);
        for reference in &ether {
            let () = provider
                .raw_request("anvil_setBalance".into(), (addresses.address(reference), U256::from(10_u128.pow(18))))
                .await?;
            sweep.add(reference.salt(), true, &[])?;
        }
        let signs = counting.signs.load(Ordering::Relaxed);
        let ether_first = send(Some(factory), sweep.calldata()).await?;
        let ether_signs = counting.signs.load(Ordering::Relaxed) - signs;
        // Tokens, deployed in the same sweep; then tokens again, the addresses deployed.
        let tokens: Vec<Reference> =
            (0..batch).map(|i| Reference::new(&format!("token-{batch}-{i}")).unwrap()).collect();
        let (mut first, mut later) = (SweepBatch::new(parent), SweepBatch::new(parent));
        for reference in &tokens {
            mint(addresses.address(reference)).await?;
            first.add(reference.salt(), true, &[token])?;
            later.add(reference.salt(), false, &[token])?;
        }
        let signs = counting.signs.load(Ordering::Relaxed);
        let token_first = send(Some(factory), first.calldata()).await?;
        let token_signs = counting.signs.load(Ordering::Relaxed) - signs;
        for reference in &tokens {
            mint(addresses.address(reference)).await?;
        }
        let token_later = send(Some(factory), later.calldata()).await?;
        if batch == 50 {
            signs_at_50 = ether_signs + token_signs;
        }
        let per = |gas: u64| gas / batch as u64;
        rows.push((batch, per(ether_first), per(token_first), per(token_later)));
    }
    // Ether sent to a deployed address is passed on in the depositor's own transaction: what it adds.
    let deployed = addresses.address(&Reference::new("ether-1-0")?);
    let deposit = provider
        .send_transaction(TransactionRequest::default().with_to(deployed).with_value(U256::from(10_u128.pow(15))))
        .await?
        .get_receipt()
        .await?;
    let balance = provider.get_balance(deployed).await?;
    let treasury_tokens = Erc20::balanceOfCall::abi_decode_returns(
        &provider
            .call(
                TransactionRequest::default()
                    .with_to(token)
                    .with_input(Erc20::balanceOfCall { owner: parent }.abi_encode()),
            )
            .await?,
    )?;

    println!(
        "Gas per swept deposit (the transaction's gas over its deposits; the parent's forwarder deployed before, once: {forwarder_gas} gas):"
    );
    println!();
    println!(
        "| batch | ether, first sweep (deploy + sweep) | ERC-20, first sweep (deploy + sweep) | ERC-20, later sweep |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (batch, ether_first, token_first, token_later) in &rows {
        println!("| {batch} | {ether_first} | {token_first} | {token_later} |");
    }
    println!();
    let path = deposit.gas_used;
    println!(
        "Ether to a deployed address: the depositor's transaction uses {path} gas ({} more than a plain transfer), \
         passed on to the treasury in it; no sweep (the address's balance after: {balance} wei).",
        path - 21_000
    );
    // Everything reached the treasury, once: 61 addresses' ether (1 ether each) and the deposit just made,
    // and two rounds of 1,000,000 tokens at 61 addresses.
    let treasury_ether = provider.get_balance(parent).await?;
    let expected_ether = U256::from(1) + U256::from(61 * 10_u128.pow(18) + 10_u128.pow(15));
    assert_eq!(treasury_ether, expected_ether, "the treasury's ether");
    assert_eq!(treasury_tokens, U256::from(2 * 61 * 1_000_000), "the treasury's tokens");
    println!("The treasury holds exactly what was deposited: {treasury_ether} wei and {treasury_tokens} tokens.");
    println!();
    let (_, ether_50, token_50, later_50) = rows[2];
    let verdict = |ours: u64, theirs: u64| if ours < theirs { "lower" } else { "NOT lower" };
    println!("At batch 50, against the peers' published figures (target: lower than each, per deposit):");
    println!();
    println!("| ours | gas | peer | gas | |");
    println!("| --- | ---: | --- | ---: | --- |");
    println!(
        "| ether, first sweep | {ether_50} | Argent deploy + forward | {} | {} |",
        ARGENT_DEPLOY + ARGENT_FORWARD,
        verdict(ether_50, ARGENT_DEPLOY + ARGENT_FORWARD)
    );
    println!(
        "| ether, first sweep | {ether_50} | Argent deploy-forward-destroy | {ARGENT_ONE_TRANSACTION} | {} |",
        verdict(ether_50, ARGENT_ONE_TRANSACTION)
    );
    println!(
        "| ERC-20, first sweep | {token_50} | Argent deploy + forward | {} | {} |",
        ARGENT_DEPLOY + ARGENT_FORWARD,
        verdict(token_50, ARGENT_DEPLOY + ARGENT_FORWARD)
    );
    println!(
        "| ERC-20, first sweep | {token_50} | Argent deploy-forward-destroy | {ARGENT_ONE_TRANSACTION} | {} |",
        verdict(token_50, ARGENT_ONE_TRANSACTION)
    );
    println!(
        "| ERC-20, later sweep | {later_50} | Argent forward | {ARGENT_FORWARD} | {} |",
        verdict(later_50, ARGENT_FORWARD)
    );
    println!(
        "| ether deposit to a deployed address, whole transaction | {path} | bitbank's bound | {BITBANK_ETHER_PATH} | {} |",
        verdict(path, BITBANK_ETHER_PATH)
    );
    println!();
    println!("KMS Sign requests per 100 swept deposits at batch 50: {signs_at_50} (target ≤ 2)");
    Ok(())
}

/// A seed that differs between runs (the treasury is a fresh address each time).
fn factory_nonce_seed() -> [u8; 16] {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos().to_be_bytes()
}

alloy_sol_types::sol! {
    function mint(address to, uint256 amount) external;
}
