//! The deposit contracts on a real chain (the shared anvil), with a KMS key in LocalStack as the factory's
//! owner (the sweeping key: every transaction it sends is signed by ethkms-eth's `KmsSigner`) and a fresh
//! address as the treasury (the parent):
//!
//! - the addresses derived off-chain are the factory's, for random Unicode references and the edge
//!   cases, and what its sweeps deploy there is the EIP-1167 clone of the parent's forwarder; ethers v6
//!   derives the same addresses (a script beside the other verifiers, `ethers_deposit_addresses.cjs`);
//! - deposits of ether and tokens (one answering `true`, one answering nothing as USDT does) before and
//!   after deployment reach the treasury and only it, in exact sums; tokens not swept stay;
//! - strangers, and the owner outside the factory, cannot move funds anywhere; ownership moves in two
//!   steps; a batch with a wrong deploy bit reverts whole or still works, as it should.
//!
//! The gas each sweep used is printed (`--nocapture`) for reference. Services come from
//! `cargo xtask services up`; in CI (or with `ETHKMS_REQUIRE_SERVICES`) a missing one fails these tests.

#[path = "contracts/fixture.rs"]
mod fixture;
#[path = "contracts/references.rs"]
mod references;

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use alloy_network::TransactionBuilder as _;
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::{SolCall, SolError};
use ethkms_deposits::contracts::{self, DepositFactory, DepositForwarder};
use ethkms_deposits::{DepositAddresses, Reference};
use ethkms_test_support::verifiers::verifier_script;
use ethkms_test_support::{service_from_env, services};
use fixture::{Chain, ether, mask, sweep_input};
use serde_json::json;

/// The salts of `references`.
fn salts(references: &[Reference]) -> Vec<B256> {
    references.iter().map(Reference::salt).collect()
}

/// `DepositFactory.NotAllowed()` (the forwarder's error of that name has the same selector).
fn not_allowed() -> Bytes {
    DepositFactory::NotAllowed::SELECTOR.to_vec().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_addresses_are_what_the_factory_deploys() {
    let Some(services) = services() else { return };
    let chain = Chain::new(services).await;
    let owner = chain.kms_account().await;
    let factory = chain.deploy_factory(&owner).await;
    let parent = Chain::fresh_address("treasury");
    let addresses = DepositAddresses::new(factory, parent);
    let forwarder = addresses.forwarder();
    assert_eq!(chain.view(factory, DepositFactory::forwarderOfCall { parent }).await, forwarder);

    let references = references::references(40);
    for reference in &references {
        let derived = chain.view(factory, DepositFactory::depositAddressCall { parent, salt: reference.salt() }).await;
        assert_eq!(derived, addresses.address(reference), "reference {reference:?}");
    }
    let distinct: HashSet<Address> = references.iter().map(|reference| addresses.address(reference)).collect();
    assert_eq!(distinct.len(), references.len());
    assert!(!distinct.contains(&forwarder));
    assert!(chain.code(forwarder).await.is_empty(), "nothing is deployed before the first sweep");

    // The first sweep deploys the forwarder and half the addresses; the second the other half.
    let (first, rest) = references.split_at(references.len() / 2);
    let receipt =
        owner.send(factory, sweep_input(parent, &salts(first), &vec![mask(true, &[]); first.len()], &[])).await;
    eprintln!(
        "gas: first sweep, the forwarder and {} deposit addresses deployed, nothing to move: {}",
        first.len(),
        receipt.gas_used
    );
    assert!(!chain.code(forwarder).await.is_empty());
    assert_eq!(chain.view(forwarder, DepositForwarder::parentCall {}).await, parent);
    assert_eq!(chain.view(forwarder, DepositForwarder::factoryCall {}).await, factory);
    let clone = contracts::clone_runtime_code(forwarder);
    for reference in first {
        let address = addresses.address(reference);
        assert_eq!(chain.code(address).await.as_ref(), clone.as_slice(), "reference {reference:?}");
        // The clone delegates to the forwarder: it answers as the forwarder does.
        assert_eq!(chain.view(address, DepositForwarder::parentCall {}).await, parent);
    }
    for reference in rest {
        assert!(chain.code(addresses.address(reference)).await.is_empty(), "reference {reference:?}");
    }
    let receipt = owner.send(factory, sweep_input(parent, &salts(rest), &vec![mask(true, &[]); rest.len()], &[])).await;
    eprintln!(
        "gas: a later sweep deploying {} deposit addresses, nothing to move: {} ({} each)",
        rest.len(),
        receipt.gas_used,
        receipt.gas_used / rest.len() as u64
    );
    for reference in rest {
        assert_eq!(chain.code(addresses.address(reference)).await.as_ref(), clone.as_slice(), "{reference:?}");
    }
}

#[test]
fn ethers_derives_the_same_addresses() {
    let Some(node_modules) = service_from_env("ETHKMS_TEST_NODE_MODULES", "ethers v6 (npm)") else { return };
    let artifact = format!("{}/contracts/artifacts/DepositForwarder.json", env!("CARGO_MANIFEST_DIR"));
    let references = references::references(40);
    let texts: Vec<&str> = references.iter().map(Reference::as_str).collect();
    let pairs = [
        // The factory and the parent of the documentation's example, then fresh ones.
        ("0x5FbDB2315678afecb367f032d93F642f64180aa3".parse().unwrap(), Chain::fresh_address("parent")),
        (Chain::fresh_address("factory"), Chain::fresh_address("parent")),
    ];
    for (factory, parent) in pairs {
        let addresses = DepositAddresses::new(factory, parent);
        let input = json!({ "factory": factory, "parent": parent, "artifact": artifact, "references": texts });
        let mut node = Command::new("node");
        node.arg(verifier_script("ethers_deposit_addresses.cjs")).env("NODE_PATH", &node_modules);
        let mut child = node.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "ethers: {}", String::from_utf8_lossy(&output.stderr));
        let derived: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        // EIP-55 strings: the checksums are compared too.
        assert_eq!(derived["forwarder"], addresses.forwarder().to_string());
        let derived = derived["addresses"].as_array().unwrap();
        assert_eq!(derived.len(), references.len());
        for (reference, address) in references.iter().zip(derived) {
            assert_eq!(address, &addresses.address(reference).to_string(), "reference {reference:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_before_and_after_deployment_reach_only_the_treasury() {
    let Some(services) = services() else { return };
    let chain = Chain::new(services).await;
    let owner = chain.kms_account().await;
    let factory = chain.deploy_factory(&owner).await;
    let parent = Chain::fresh_address("treasury");
    let addresses = DepositAddresses::new(factory, parent);
    let depositor = chain.impersonated("depositor", ether(1000)).await;
    let answering = chain.deploy_token(&owner, "Answering", true).await;
    let silent = chain.deploy_token(&owner, "Tether-like", false).await;
    let spam = chain.deploy_token(&owner, "Spam", true).await;
    let tokens = [answering, silent, spam];
    let references: Vec<Reference> = (0..5).map(|i| Reference::new(&format!("customer-{i}")).unwrap()).collect();
    let at: Vec<Address> = references.iter().map(|reference| addresses.address(reference)).collect();

    // Before anything is deployed: ether to four of them, tokens to some, spam to two.
    let paid = [ether(1), ether(2) + U256::from(1), U256::ZERO, U256::from(12_345), U256::from(1)];
    for (address, value) in at.iter().zip(paid) {
        if !value.is_zero() {
            chain.pay(depositor, *address, value).await;
        }
    }
    let minted =
        [(answering, 0, 100_u64), (answering, 1, 7), (silent, 1, 50), (silent, 2, 3), (spam, 0, 999), (spam, 3, 9)];
    for (token, index, amount) in minted {
        chain.mint(depositor, token, at[index], U256::from(amount)).await;
    }
    assert!(chain.code(at[0]).await.is_empty());
    assert_eq!(chain.balance(parent).await, U256::ZERO);

    // One sweep deploys all five and moves the ether and the two tokens of the mask (never the spam).
    let masks = [mask(true, &[0]), mask(true, &[0, 1]), mask(true, &[1]), mask(true, &[]), mask(true, &[])];
    let receipt = owner.send(factory, sweep_input(parent, &salts(&references), &masks, &tokens)).await;
    eprintln!(
        "gas: first sweep, the forwarder and 5 deposit addresses deployed, 4 with ether, 2 tokens from 3 of them: {}",
        receipt.gas_used
    );
    let total: U256 = paid.iter().sum();
    assert_eq!(chain.balance(parent).await, total);
    assert_eq!(chain.token_balance(answering, parent).await, U256::from(107));
    assert_eq!(chain.token_balance(silent, parent).await, U256::from(53));
    assert_eq!(chain.token_balance(spam, parent).await, U256::ZERO);
    let clone = contracts::clone_runtime_code(addresses.forwarder());
    for address in &at {
        assert_eq!(chain.code(*address).await.as_ref(), clone.as_slice());
        assert_eq!(chain.balance(*address).await, U256::ZERO);
        assert_eq!(chain.token_balance(answering, *address).await, U256::ZERO);
        assert_eq!(chain.token_balance(silent, *address).await, U256::ZERO);
    }
    assert_eq!(chain.balance(addresses.forwarder()).await, U256::ZERO);
    assert_eq!(chain.token_balance(spam, at[0]).await, U256::from(999), "spam is left where it is");
    assert_eq!(chain.token_balance(spam, at[3]).await, U256::from(9));

    // Ether sent to a deployed address reaches the treasury in the same transaction, with a log.
    let before = chain.balance(parent).await;
    let receipt = chain.pay(depositor, at[3], ether(3)).await;
    eprintln!("gas: an ether deposit to a deployed address (forwarded at once): {}", receipt.gas_used);
    let block = receipt.block_number.unwrap();
    assert_eq!(chain.balance_at(parent, Some(block - 1)).await, before);
    assert_eq!(chain.balance_at(parent, Some(block)).await, before + ether(3));
    assert_eq!(chain.balance(at[3]).await, U256::ZERO);
    let deposited: Vec<DepositForwarder::Deposited> = receipt
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<DepositForwarder::Deposited>().ok())
        .map(|log| {
            assert_eq!(log.address(), at[3], "the log is the deposit address's");
            log.inner.data
        })
        .collect();
    assert_eq!(deposited, [DepositForwarder::Deposited { from: depositor, value: ether(3) }]);

    // Later deposits of tokens are swept without the deploy bit; spam still stays.
    chain.mint(depositor, answering, at[1], U256::from(5)).await;
    chain.mint(depositor, silent, at[2], U256::from(6)).await;
    chain.mint(depositor, silent, at[4], U256::from(9)).await;
    chain.mint(depositor, spam, at[4], U256::from(1)).await;
    let later = [references[1].salt(), references[2].salt(), references[4].salt()];
    let masks = [mask(false, &[0]), mask(false, &[1]), mask(false, &[1])];
    let receipt = owner.send(factory, sweep_input(parent, &later, &masks, &tokens)).await;
    eprintln!("gas: a later sweep of 3 deployed addresses, 1 token each (2 tokens in all): {}", receipt.gas_used);
    assert_eq!(chain.token_balance(answering, parent).await, U256::from(112));
    assert_eq!(chain.token_balance(silent, parent).await, U256::from(68));
    for address in &at {
        assert_eq!(chain.token_balance(answering, *address).await, U256::ZERO);
        assert_eq!(chain.token_balance(silent, *address).await, U256::ZERO);
    }
    assert_eq!(chain.token_balance(spam, at[4]).await, U256::from(1));
    assert_eq!(chain.token_balance(spam, parent).await, U256::ZERO);
    assert_eq!(chain.balance(parent).await, total + ether(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_the_owner_cannot_move_funds_elsewhere() {
    let Some(services) = services() else { return };
    let chain = Chain::new(services).await;
    let owner = chain.kms_account().await;
    let stranger = chain.kms_account().await;
    let factory = chain.deploy_factory(&owner).await;
    let parent = chain.impersonated("treasury", ether(10)).await;
    let addresses = DepositAddresses::new(factory, parent);
    let forwarder = addresses.forwarder();
    let funder = chain.impersonated("depositor", ether(100)).await;
    let token = chain.deploy_token(&owner, "Answering", true).await;
    let references: Vec<Reference> = (0..5).map(|i| Reference::new(&format!("account-{i}")).unwrap()).collect();
    let s: Vec<B256> = salts(&references);
    let at: Vec<Address> = references.iter().map(|reference| addresses.address(reference)).collect();

    // at[1] deployed (holding tokens), at[0] not (holding ether and tokens).
    owner.send(factory, sweep_input(parent, &s[1..2], &[mask(true, &[])], &[])).await;
    chain.pay(funder, at[0], ether(1)).await;
    chain.mint(funder, token, at[0], U256::from(100)).await;
    chain.mint(funder, token, at[1], U256::from(200)).await;
    let snapshot = async || {
        (
            chain.balance(at[0]).await,
            chain.token_balance(token, at[0]).await,
            chain.token_balance(token, at[1]).await,
            chain.balance(parent).await,
            chain.token_balance(token, parent).await,
        )
    };
    let before = snapshot().await;
    assert_eq!(before, (ether(1), U256::from(100), U256::from(200), ether(10), U256::ZERO));

    // A stranger sweeping through the factory.
    let sweep = sweep_input(parent, &s[..2], &[mask(true, &[0]), mask(false, &[0])], &[token]);
    assert_eq!(chain.revert_data(stranger.address, factory, &sweep).await, not_allowed());
    stranger.send_reverting(&chain, factory, sweep.clone()).await;
    // A deposit address's sweep, and the forwarder's, called directly: by a stranger and by the owner.
    let direct: Bytes = DepositForwarder::sweepCall { tokens: vec![token], mask: U256::from(1) }.abi_encode().into();
    for target in [at[1], forwarder] {
        for caller in [stranger.address, owner.address] {
            assert_eq!(chain.revert_data(caller, target, &direct).await, not_allowed(), "{caller} → {target}");
        }
    }
    owner.send_reverting(&chain, at[1], direct.clone()).await;
    stranger.send_reverting(&chain, forwarder, direct.clone()).await;
    assert_eq!(snapshot().await, before, "nothing moved");

    // The parent itself may sweep, and its sweep pays it.
    let receipt = chain.send_from(parent, TransactionRequest::default().with_to(factory).with_input(sweep)).await;
    assert!(receipt.status(), "the parent's own sweep failed: {receipt:?}");
    let fee = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert_eq!(snapshot().await, (U256::ZERO, U256::ZERO, U256::ZERO, ether(11) - fee, U256::from(300)));
    let lengths = sweep_input(parent, &s[2..4], &[mask(true, &[])], &[]);
    assert_eq!(chain.revert_data(owner.address, factory, &lengths).await[..], DepositFactory::LengthMismatch::SELECTOR);

    // Ownership: only the owner names a successor, only the successor takes over.
    let new_owner = chain.kms_account().await;
    let transfer =
        |to: Address| -> Bytes { DepositFactory::transferOwnershipCall { newOwner: to }.abi_encode().into() };
    let accept: Bytes = DepositFactory::acceptOwnershipCall {}.abi_encode().into();
    assert_eq!(chain.revert_data(stranger.address, factory, &transfer(stranger.address)).await, not_allowed());
    stranger.send_reverting(&chain, factory, transfer(stranger.address)).await;
    owner.send(factory, transfer(new_owner.address)).await;
    assert_eq!(chain.view(factory, DepositFactory::pendingOwnerCall {}).await, new_owner.address);
    assert_eq!(chain.view(factory, DepositFactory::ownerCall {}).await, owner.address);
    assert_eq!(chain.revert_data(stranger.address, factory, &accept).await, not_allowed());
    let receipt = new_owner.send(factory, accept).await;
    let transferred: Vec<_> = receipt
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<DepositFactory::OwnershipTransferred>().ok())
        .map(|log| (log.inner.data.previousOwner, log.inner.data.newOwner))
        .collect();
    assert_eq!(transferred, [(owner.address, new_owner.address)]);
    assert_eq!(chain.view(factory, DepositFactory::ownerCall {}).await, new_owner.address);
    assert_eq!(chain.view(factory, DepositFactory::pendingOwnerCall {}).await, Address::ZERO);
    chain.pay(funder, at[2], ether(1)).await;
    let sweep = sweep_input(parent, &s[2..3], &[mask(true, &[])], &[]);
    assert_eq!(chain.revert_data(owner.address, factory, &sweep).await, not_allowed());
    owner.send_reverting(&chain, factory, sweep.clone()).await;
    let parent_before = chain.balance(parent).await;
    new_owner.send(factory, sweep).await;
    assert_eq!(chain.balance(parent).await, parent_before + ether(1));
    assert_eq!(chain.balance(at[2]).await, U256::ZERO);

    // A salt marked deployed that is not: the whole batch reverts, its creations with it.
    chain.pay(funder, at[3], ether(1)).await;
    chain.pay(funder, at[4], ether(2)).await;
    let wrong = sweep_input(parent, &s[3..5], &[mask(true, &[]), mask(false, &[])], &[]);
    let reverted = chain.revert_data(new_owner.address, factory, &wrong).await;
    let named: Bytes = DepositFactory::NotDeployed { salt: s[4] }.abi_encode().into();
    assert_eq!(reverted, named, "the sweep names the salt that is not deployed");
    let receipt = new_owner.send_reverting(&chain, factory, wrong).await;
    eprintln!("gas: that sweep, mined and reverted: {}", receipt.gas_used);
    assert_eq!(chain.balance(at[3]).await, ether(1));
    assert_eq!(chain.balance(at[4]).await, ether(2));
    assert!(chain.code(at[3]).await.is_empty(), "the creation in the reverted batch is undone");
    assert_eq!(chain.balance(parent).await, parent_before + ether(1));

    // The deploy bit for an address already deployed: creation is skipped, the sweep works.
    chain.mint(funder, token, at[1], U256::from(50)).await;
    let again = sweep_input(parent, &s[1..2], &[mask(true, &[0])], &[token]);
    let receipt = new_owner.send(factory, again).await;
    eprintln!("gas: the deploy bit for 1 address already deployed (its token swept): {}", receipt.gas_used);
    assert_eq!(chain.token_balance(token, parent).await, U256::from(350));
    assert_eq!(chain.token_balance(token, at[1]).await, U256::ZERO);
    let clone = contracts::clone_runtime_code(forwarder);
    assert_eq!(chain.code(at[1]).await.as_ref(), clone.as_slice());
    // The deploy bit costs a deployed address nothing: the code is read before any CREATE2 (which would
    // burn the gas it was given), and that read warms the address for the call.
    for count in [1, 2, 3] {
        let mut estimates = Vec::new();
        for deploy in [false, true] {
            let input = sweep_input(parent, &s[..count], &vec![mask(deploy, &[]); count], &[]);
            let request = TransactionRequest::default().with_from(new_owner.address).with_to(factory).with_input(input);
            estimates.push(ethkms_eth::chain::estimate_gas(&chain.node, &request).await.unwrap());
        }
        eprintln!(
            "gas estimate: a sweep of {count} deployed addresses, without and with the deploy bit: {estimates:?}"
        );
        assert!(estimates[1] <= estimates[0] + 100, "{count} deployed addresses: {estimates:?}");
    }
}
