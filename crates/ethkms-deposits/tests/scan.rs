//! Finding deposits on a real chain — an anvil of this test's own, so that it can drop blocks — with
//! anvil's developer account as depositor and as the factory's owner: ether sent to an address not yet
//! deployed (found by its transaction), to a deployed one (by its `Deposited` log; one that reverted for
//! too little gas is no deposit), tokens on the list (by `Transfer` logs; a token not on it is ignored),
//! and a reorg that takes a block away: its deposits are reported removed and not found again.

use std::collections::HashSet;

use alloy_network::TransactionBuilder as _;
use alloy_primitives::{Address, U256, address};
use alloy_provider::{Provider, ProviderBuilder};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::{SolCall as _, SolValue as _};
use ethkms_deposits::contracts;
use ethkms_deposits::{Asset, DepositAddresses, Follower, Reference, Seen, SweepBatch};
use ethkms_test_support::anvil::Anvil;

/// anvil's first developer account (unlocked, funded).
const DEVELOPER: Address = address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

alloy_sol_types::sol! {
    function mint(address to, uint256 amount) external;
}

/// Sends `request` from the developer account: whether it succeeded, and the contract it created.
async fn send(provider: &impl Provider, request: TransactionRequest) -> (bool, Option<Address>) {
    let receipt = provider.send_transaction(request.with_from(DEVELOPER)).await.unwrap().get_receipt().await.unwrap();
    (receipt.status(), receipt.contract_address)
}

async fn deploy(provider: &impl Provider, code: Vec<u8>) -> Address {
    let (ok, address) = send(provider, TransactionRequest::default().with_deploy_code(code)).await;
    assert!(ok);
    address.unwrap()
}

async fn token(provider: &impl Provider, symbol: &str) -> Address {
    let arguments = (symbol.to_owned(), symbol.to_owned(), true).abi_encode_params();
    deploy(provider, [contracts::test_token_artifact().bytecode.as_ref(), &arguments].concat()).await
}

fn found(seen: &[Seen]) -> Vec<(Address, Asset, U256, bool)> {
    seen.iter()
        .filter_map(|seen| match seen {
            Seen::Found(deposit) => Some((deposit.to, deposit.asset, deposit.amount, deposit.id.log_index.is_some())),
            Seen::Removed(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_found_once_and_a_reorg_takes_them_back() {
    let Some(anvil) = Anvil::start(&[]).await else { return };
    let provider = ProviderBuilder::new().connect_http(anvil.url.parse().unwrap());
    let factory = deploy(&provider, contracts::factory_creation_code(DEVELOPER).to_vec()).await;
    let parent = address!("0x00000000000000000000000000000000000c0ffe");
    let (listed, spam) = (token(&provider, "USD").await, token(&provider, "SPAM").await);
    let addresses = DepositAddresses::new(factory, parent);
    let (alice, bob) = (Reference::new("alice").unwrap(), Reference::new("bob").unwrap());
    let (alice_address, bob_address) = (addresses.address(&alice), addresses.address(&bob));
    let watched: HashSet<Address> = [alice_address, bob_address].into();
    let mut follower = Follower::new(provider.get_block_number().await.unwrap() + 1, 16);

    // Ether to an address not deployed: its transaction. Tokens: the listed one found, the spam ignored.
    let ether = U256::from(10_u128.pow(18));
    send(&provider, TransactionRequest::default().with_to(alice_address).with_value(ether)).await;
    for token in [listed, spam] {
        let call = mintCall { to: bob_address, amount: U256::from(500) };
        send(&provider, TransactionRequest::default().with_to(token).with_input(call.abi_encode())).await;
    }
    let seen = follower.poll(&provider, &watched, &[listed], 100).await.unwrap();
    assert_eq!(
        found(&seen),
        [(alice_address, Asset::Ether, ether, false), (bob_address, Asset::Token(listed), U256::from(500), true)]
    );
    assert!(follower.poll(&provider, &watched, &[listed], 100).await.unwrap().is_empty(), "each found once");

    // Deployed (by a sweep), ether to alice is passed on and logged; too little gas moves and logs nothing.
    let mut sweep = SweepBatch::new(parent);
    sweep.add(alice.salt(), true, &[]).unwrap();
    send(&provider, TransactionRequest::default().with_to(factory).with_input(sweep.calldata())).await;
    let small = U256::from(12_345);
    send(&provider, TransactionRequest::default().with_to(alice_address).with_value(small)).await;
    let starved = TransactionRequest::default().with_to(alice_address).with_value(small).with_gas_limit(21_000);
    assert!(!send(&provider, starved).await.0, "21,000 gas cannot pass ether on");
    let seen = follower.poll(&provider, &watched, &[listed], 100).await.unwrap();
    assert_eq!(found(&seen), [(alice_address, Asset::Ether, small, true)]);
    assert_eq!(provider.get_balance(parent).await.unwrap(), ether + small, "swept, then passed on");

    // A reorg: the block holding a deposit replaced by two empty ones.
    let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await.unwrap();
    send(&provider, TransactionRequest::default().with_to(bob_address).with_value(U256::from(7))).await;
    let seen = follower.poll(&provider, &watched, &[listed], 100).await.unwrap();
    assert_eq!(found(&seen), [(bob_address, Asset::Ether, U256::from(7), false)]);
    let gone = match &seen[..] {
        [Seen::Found(deposit)] => deposit.clone(),
        other => panic!("{other:?}"),
    };
    let reverted: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await.unwrap();
    assert!(reverted);
    let () = provider.raw_request("anvil_mine".into(), (U256::from(2),)).await.unwrap();
    let seen = follower.poll(&provider, &watched, &[listed], 100).await.unwrap();
    assert_eq!(seen, [Seen::Removed(gone.clone())], "the dropped block's deposit is removed, nothing found");
    assert_ne!(
        provider.get_block_by_number(gone.block_number.into()).await.unwrap().unwrap().header.hash,
        gone.block_hash
    );
    assert_eq!(follower.next_block(), provider.get_block_number().await.unwrap() + 1);
}
