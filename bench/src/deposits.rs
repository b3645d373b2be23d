//! Deposit addresses (`ethkms-bench deposits`): how fast they are derived on one core, and what sweeping
//! them costs on anvil — gas per swept deposit, ether and ERC-20, the first sweep (the address deployed) and
//! later ones, in batches of 1, 10 and 50, next to the peers' published figures — and how many KMS `Sign`
//! requests 100 swept deposits take. The same sweeps of the same deposits are measured on the
//! clone-with-immutable-args alternative ([`cwia`]), side by side with ours (EIP-1167 clones of a forwarder
//! per treasury).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use alloy_network::TransactionBuilder as _;
use alloy_primitives::{Address, Bytes, U256, keccak256};
use alloy_provider::{Provider, ProviderBuilder};
use alloy_rpc_types_eth::{TransactionReceipt, TransactionRequest};
use alloy_sol_types::SolCall;
use async_trait::async_trait;
use ethkms_backend::{
    BackendError, CreateKeyRequest, KeyBackend, KeyDescription, KeyFilter, KeyHandle, KeyInfo, KeyRef,
    PublicKeyResponse,
};
use ethkms_deposits::contracts::{self, Erc20};
use ethkms_deposits::{DepositAddresses, Reference, SweepBatch};
use ethkms_eth::KmsSigner;

use crate::{Options, rpc_url};

mod cwia;

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

/// The two designs measured on the same workload: ours, and the alternative of [`cwia`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Design {
    /// `DepositFactory`: EIP-1167 clones (45 bytes) of a forwarder per treasury, which holds it as immutable.
    Eip1167,
    /// `CwiaDepositFactory`: one forwarder for all, each clone holding its treasury in its own code.
    Cwia,
}

/// A design's deposit addresses of one treasury.
enum Derivation {
    Eip1167(DepositAddresses),
    Cwia(cwia::Addresses),
}

impl Derivation {
    fn address(&self, reference: &Reference) -> Address {
        match self {
            Self::Eip1167(addresses) => addresses.address(reference),
            Self::Cwia(addresses) => addresses.address_of_salt(reference.salt()),
        }
    }
}

/// Gas per swept deposit at one batch size: ether's first sweep, ERC-20's first sweep, ERC-20's later one.
#[derive(Clone, Copy, Debug)]
struct Row {
    batch: usize,
    ether_first: u64,
    token_first: u64,
    token_later: u64,
}

/// What one design's run measured.
struct Measured {
    factory: Address,
    parent: Address,
    /// The factory's deployment (the alternative's deploys its one forwarder too).
    factory_gas: u64,
    /// A treasury's first sweep, of one address holding nothing (ours deploys the treasury's forwarder in it).
    first_sweep_gas: u64,
    rows: Vec<Row>,
    /// The depositor's whole transaction sending ether to a deployed address.
    deposit_gas: u64,
    /// KMS `Sign` requests of the two first sweeps at batch 50 (100 deposits).
    signs_at_50: u64,
    treasury_ether: U256,
    treasury_tokens: U256,
}

type BoxError = Box<dyn std::error::Error>;

async fn gas(backend: &Arc<dyn KeyBackend>, key_id: &str) -> Result<(), BoxError> {
    let counting = Arc::new(Counting { inner: Arc::clone(backend), signs: AtomicU64::new(0) });
    let handle = KeyHandle::open(counting.clone() as Arc<dyn KeyBackend>, KeyRef::new(key_id.to_owned())?).await?;
    let signer = KmsSigner::from_handle(handle, Some(31337));
    let owner = alloy_signer::Signer::address(&signer);
    let rpc_url = rpc_url()?;
    let provider = ProviderBuilder::new().wallet(signer).connect_http(rpc_url.parse()?);
    let () = provider.raw_request("anvil_setBalance".into(), (owner, U256::from(10_u128.pow(24)))).await?;
    let token_code = [
        contracts::test_token_artifact().bytecode.as_ref(),
        &alloy_sol_types::SolValue::abi_encode_params(&("Bench USD".to_owned(), "BUSD".to_owned(), true)),
    ]
    .concat();
    let token = deploy(&provider, token_code.into()).await?.contract_address.ok_or("the token was not created")?;
    let ours = measure(&provider, &counting, Design::Eip1167, owner, token).await?;
    let theirs = measure(&provider, &counting, Design::Cwia, owner, token).await?;
    report(&ours, &theirs);
    Ok(())
}

/// Deploys `design`'s factory (owned by `owner`) and sweeps, for a treasury of its own: a first sweep of one
/// empty address, then at batches of 1, 10 and 50 ether and ERC-20 deposits to undeployed addresses
/// (deployed by the sweep), the ERC-20 again (deployed), and an ether deposit to a deployed address.
async fn measure<P: Provider>(
    provider: &P,
    counting: &Counting,
    design: Design,
    owner: Address,
    token: Address,
) -> Result<Measured, BoxError> {
    // A treasury of its own that exists (a first payment to a new account costs 25,000 more, once).
    let parent = Address::from_word(keccak256([factory_nonce_seed().as_slice(), &[design as u8]].concat()));
    let () = provider.raw_request("anvil_setBalance".into(), (parent, U256::from(1))).await?;
    let code = match design {
        Design::Eip1167 => contracts::factory_creation_code(owner),
        Design::Cwia => cwia::factory_creation_code(owner)?,
    };
    let receipt = deploy(provider, code).await?;
    let factory = receipt.contract_address.ok_or("the factory was not created")?;
    let addresses = match design {
        Design::Eip1167 => Derivation::Eip1167(DepositAddresses::new(factory, parent)),
        Design::Cwia => {
            let implementation = call(provider, factory, cwia::CwiaDepositFactory::implementationCall {}).await?;
            let addresses = cwia::Addresses::new(factory, implementation, parent);
            let salt = Reference::new("warm-up")?.salt();
            let derived =
                call(provider, factory, cwia::CwiaDepositFactory::depositAddressCall { parent, salt }).await?;
            assert_eq!(addresses.address_of_salt(salt), derived, "the CWIA factory's deposit address");
            Derivation::Cwia(addresses)
        }
    };

    // The treasury's first sweep (ours deploys the treasury's forwarder in it, once): measured apart.
    let mut first = SweepBatch::new(parent);
    first.add(Reference::new("warm-up")?.salt(), true, &[])?;
    let first_sweep_gas = send(provider, factory, first.calldata()).await?;

    let mint = async |to: Address| -> Result<(), BoxError> {
        send(provider, token, mintCall { to, amount: U256::from(1_000_000) }.abi_encode().into()).await.map(|_| ())
    };
    let (mut rows, mut signs_at_50) = (Vec::new(), 0);
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
        let ether_first = send(provider, factory, sweep.calldata()).await?;
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
        let token_first = send(provider, factory, first.calldata()).await?;
        let token_signs = counting.signs.load(Ordering::Relaxed) - signs;
        for reference in &tokens {
            mint(addresses.address(reference)).await?;
        }
        let token_later = send(provider, factory, later.calldata()).await?;
        if batch == 50 {
            signs_at_50 = ether_signs + token_signs;
        }
        let per = |gas: u64| gas / batch as u64;
        rows.push(Row {
            batch,
            ether_first: per(ether_first),
            token_first: per(token_first),
            token_later: per(token_later),
        });
    }
    // Ether sent to a deployed address is passed on in the depositor's own transaction: what it adds.
    let deployed = addresses.address(&Reference::new("ether-1-0")?);
    if design == Design::Cwia {
        let held = call(provider, deployed, cwia::CwiaDepositForwarder::parentCall {}).await?;
        assert_eq!(held, parent, "the treasury a CWIA deposit address reads from its code");
    }
    let deposit = provider
        .send_transaction(TransactionRequest::default().with_to(deployed).with_value(U256::from(10_u128.pow(15))))
        .await?
        .get_receipt()
        .await?;
    if !deposit.status() {
        return Err(format!("the deposit {} to a deployed address reverted", deposit.transaction_hash).into());
    }
    assert_eq!(provider.get_balance(deployed).await?, U256::ZERO, "the deployed address's ether after a deposit");
    // Everything reached the treasury, once: 61 addresses' ether (1 ether each) and the deposit just made,
    // and two rounds of 1,000,000 tokens at 61 addresses.
    let treasury_ether = provider.get_balance(parent).await?;
    let treasury_tokens = call(provider, token, Erc20::balanceOfCall { owner: parent }).await?;
    assert_eq!(treasury_ether, U256::from(1 + 61 * 10_u128.pow(18) + 10_u128.pow(15)), "{design:?}: treasury's ether");
    assert_eq!(treasury_tokens, U256::from(2 * 61 * 1_000_000), "{design:?}: the treasury's tokens");
    Ok(Measured {
        factory,
        parent,
        factory_gas: receipt.gas_used,
        first_sweep_gas,
        rows,
        deposit_gas: deposit.gas_used,
        signs_at_50,
        treasury_ether,
        treasury_tokens,
    })
}

/// Prints ours, the alternative beside it, and ours against the peers' published figures.
fn report(ours: &Measured, theirs: &Measured) {
    println!("### Sweeping deposits (anvil)");
    println!();
    println!("- EIP-1167 (ours, `DepositFactory`): factory {}, treasury {}", ours.factory, ours.parent);
    println!(
        "- CWIA (`contracts/alternatives`, measured only): factory {}, treasury {}",
        theirs.factory, theirs.parent
    );
    println!();
    println!("Gas per swept deposit (the transaction's gas over its deposits), EIP-1167 clones against clones with");
    println!("immutable arguments, the same sweeps of the same deposits:");
    println!();
    println!("| case | batch | EIP-1167 (ours) | CWIA | CWIA − EIP-1167 | lower |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let line = |case: &str, batch: &str, ours: u64, theirs: u64| {
        let lower = match ours.cmp(&theirs) {
            std::cmp::Ordering::Less => "EIP-1167",
            std::cmp::Ordering::Greater => "CWIA",
            std::cmp::Ordering::Equal => "equal",
        };
        println!("| {case} | {batch} | {ours} | {theirs} | {:+} | {lower} |", theirs as i64 - ours as i64);
    };
    type Case = fn(&Row) -> u64;
    let cases: [(&str, Case); 3] = [
        ("ether, first sweep (deploy + sweep)", |row| row.ether_first),
        ("ERC-20, first sweep (deploy + sweep)", |row| row.token_first),
        ("ERC-20, later sweep", |row| row.token_later),
    ];
    for (case, gas) in cases {
        for (mine, other) in ours.rows.iter().zip(&theirs.rows) {
            line(case, &mine.batch.to_string(), gas(mine), gas(other));
        }
    }
    line("ether to a deployed address (the depositor's whole transaction)", "—", ours.deposit_gas, theirs.deposit_gas);
    line("once per treasury: its first sweep, one empty address", "1", ours.first_sweep_gas, theirs.first_sweep_gas);
    line("once per factory: its deployment", "—", ours.factory_gas, theirs.factory_gas);
    println!();
    let saved = ours.first_sweep_gas.saturating_sub(theirs.first_sweep_gas);
    let extra = theirs.rows[2].ether_first.saturating_sub(ours.rows[2].ether_first);
    if extra > 0 {
        println!(
            "Per treasury, EIP-1167 costs {saved} gas more once (its forwarder) and CWIA {extra} more per address \
             it deploys (batch 50): even at {} addresses a treasury, EIP-1167 cheaper beyond (later sweeps not \
             counted).",
            saved.div_ceil(extra)
        );
        println!();
    }
    println!(
        "The treasuries hold exactly what was deposited: {} wei and {} tokens (ours), {} wei and {} tokens (CWIA).",
        ours.treasury_ether, ours.treasury_tokens, theirs.treasury_ether, theirs.treasury_tokens
    );
    println!();
    let path = ours.deposit_gas;
    println!(
        "Ether to a deployed address (ours): the depositor's transaction uses {path} gas ({} more than a plain \
         transfer), passed on to the treasury in it; no sweep.",
        path - 21_000
    );
    println!();
    let Row { ether_first: ether_50, token_first: token_50, token_later: later_50, .. } = ours.rows[2];
    let verdict = |ours: u64, theirs: u64| if ours < theirs { "lower" } else { "NOT lower" };
    println!("Ours at batch 50, against the peers' published figures (target: lower than each, per deposit):");
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
    println!(
        "KMS Sign requests per 100 swept deposits at batch 50: {} (target ≤ 2; CWIA: {})",
        ours.signs_at_50, theirs.signs_at_50
    );
}

/// Sends `input` to `to` from the key and waits for the receipt: the gas it used; an error if it reverted.
async fn send<P: Provider>(provider: &P, to: Address, input: Bytes) -> Result<u64, BoxError> {
    let receipt = provider.send_transaction(TransactionRequest::default().with_to(to).with_input(input)).await?;
    let receipt = receipt.get_receipt().await?;
    if !receipt.status() {
        return Err(format!("transaction {} reverted", receipt.transaction_hash).into());
    }
    Ok(receipt.gas_used)
}

/// Deploys `code` from the key.
async fn deploy<P: Provider>(provider: &P, code: Bytes) -> Result<TransactionReceipt, BoxError> {
    let receipt = provider.send_transaction(TransactionRequest::default().with_deploy_code(code)).await?;
    Ok(receipt.get_receipt().await?)
}

/// `eth_call`s `call` on `to`, decoded.
async fn call<P: Provider, C: SolCall>(provider: &P, to: Address, request: C) -> Result<C::Return, BoxError> {
    let answer = provider.call(TransactionRequest::default().with_to(to).with_input(request.abi_encode())).await?;
    Ok(C::abi_decode_returns(&answer)?)
}

/// A seed that differs between runs (the treasury is a fresh address each time).
fn factory_nonce_seed() -> [u8; 16] {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos().to_be_bytes()
}

alloy_sol_types::sol! {
    function mint(address to, uint256 amount) external;
}
