//! Deposit addresses through the service, against LocalStack and an anvil of the test's own (so that it
//! can drop blocks): `POST /v1/deposit-addresses` hands out each reference's address once (what
//! `ethkms-deposits` derives), bad references and clients without the `deposits` method are refused; the
//! watcher finds ether and token deposits, keeps them `pending` until `confirmations` deep, then
//! `confirmed`; a deposit whose block a reorg drops before that is `removed` and never confirmed; `GET
//! /v1/deposits?since=` lists what changed, in order; ether sent from inside a contract is found by the
//! address's balance, once — and, through a node that answers reads of its newest block with the next
//! block's state, never a deposit of the next block counted again. And 200 customers with seeded random
//! deposits over two rounds — ether and a listed token before and after their addresses are deployed, ether too little to be
//! worth its sweep, a spam token — swept by the service's sweeper through the withdrawal engine: the
//! treasury holds exactly what left the addresses, the listed token is all swept, the spam untouched, each
//! address's unswept deposits add up to exactly what it still holds, every sweep succeeded once, and the
//! journal lists every deposit once, confirmed. In CI a missing service fails them.

mod common;

use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall as _, SolValue as _};
use common::*;
use ethkms_deposits::{DepositAddresses, Reference, contracts};
use ethkms_test_support::chain::set_balance;
use serde_json::{Value, json};

alloy_sol_types::sol! {
    function mint(address to, uint256 amount) external;
}

/// Sends a transaction from anvil's developer account; its receipt.
async fn send(http: &reqwest::Client, url: &str, transaction: Value) -> Value {
    let mut transaction = transaction;
    transaction["from"] = json!(DEVELOPER);
    let hash = rpc(http, url, "eth_sendTransaction", json!([transaction])).await;
    receipt(url, &hash).await
}

/// Deploys `code` from anvil's developer account; the contract's address.
async fn deploy(http: &reqwest::Client, url: &str, code: &[u8]) -> Address {
    let created = send(http, url, json!({ "data": format!("0x{}", alloy_primitives::hex::encode(code)) })).await;
    created["contractAddress"].as_str().unwrap().parse().unwrap()
}

/// `POST /v1/deposit-addresses` for `reference` as the depositing client: the address handed out.
async fn hand_out(api: &Api, reference: &str) -> Address {
    let response = api
        .http
        .post(format!("{}/v1/deposit-addresses", api.url))
        .bearer_auth("depositor-token")
        .json(&json!({ "reference": reference }))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["address"].as_str().unwrap().parse().unwrap()
}

/// `GET /v1/deposits?since=…` as `client`'s token: (status, body).
async fn deposits(api: &Api, token: &str, query: &str) -> (u16, Value) {
    let response = api.http.get(format!("{}/v1/deposits{query}", api.url)).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until the deposits listed from change 0 satisfy `done`; the list.
async fn wait_for(api: &Api, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, body) = deposits(api, "depositor-token", "?since=0&limit=1000").await;
        assert_eq!(status, 200, "{body}");
        let list = body["deposits"].as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: not within 30 s: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The latest status of each deposit (by transaction and log index) in `list`.
fn statuses(list: &[Value]) -> Vec<(String, Value, String)> {
    list.iter()
        .map(|deposit| {
            let reference = deposit["reference"].as_str().unwrap_or_default().to_owned();
            (reference, deposit["asset"].clone(), deposit["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_handed_out_found_confirmed_and_taken_back_by_a_reorg() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&[]).await else { return };
    let http = reqwest::Client::new();
    let (key, owner) = funded_key(&backend, &anvil.url).await;
    let factory = deploy(&http, &anvil.url, &contracts::factory_creation_code(owner)).await;
    let token_code = [
        contracts::test_token_artifact().bytecode.as_ref(),
        &("Test USD".to_owned(), "TUSD".to_owned(), true).abi_encode_params(),
    ]
    .concat();
    let token = deploy(&http, &anvil.url, &token_code).await;
    let parent = Address::with_last_byte(0x7e);

    let paths = Paths::new();
    let start = block_number(&anvil.url).await;
    let text = format!(
        "{head}{depositor}{reader}\n[deposits]\nkey = \"hot\"\nfactory = \"{factory}\"\nparent = \"{parent}\"\n\
         tokens = [\"{token}\"]\nconfirmations = 10\nstart_block = {start}\npoll_interval_ms = 100\n",
        head = config_head("127.0.0.1:0", &anvil.url, &key, &paths),
        depositor = config_client("depositor", "depositor-token", &["deposits"]),
        reader = config_client("reader", "reader-token", &["personal_sign"]),
    );
    let api = serve_in_process(&text, backend).await;
    let post = |token: &'static str, body: Value| {
        let (http, url) = (api.http.clone(), api.url.clone());
        async move {
            let response =
                http.post(format!("{url}/v1/deposit-addresses")).bearer_auth(token).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };

    // Addresses: derived as the library derives them, the same every time; bad input refused by name.
    let derived = DepositAddresses::new(factory, parent);
    let (status, alice) = post("depositor-token", json!({ "reference": "alice" })).await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(alice["address"], derived.address(&Reference::new("alice").unwrap()).to_string());
    assert_eq!(post("depositor-token", json!({ "reference": "alice" })).await, (200, alice.clone()));
    let (_, bob) = post("depositor-token", json!({ "reference": "bob" })).await;
    let (status, body) = post("depositor-token", json!({ "reference": "a\u{0}b" })).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("control character"), "{body}");
    let (status, body) = post("depositor-token", json!({ "reference": "x", "memo": 1 })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post("reader-token", json!({ "reference": "carol" })).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (403, Some("forbidden")), "{body}");
    assert_eq!(deposits(&api, "reader-token", "").await.0, 403);
    assert_eq!(deposits(&api, "depositor-token", "?limit=0").await.0, 400);
    assert_eq!(deposits(&api, "depositor-token", "?since=x").await.0, 400);

    // Ether to alice, tokens to bob (and to an address nobody was given: not a deposit).
    let (alice_address, bob_address) = (alice["address"].as_str().unwrap(), bob["address"].as_str().unwrap());
    send(&http, &anvil.url, json!({ "to": alice_address, "value": "0xde0b6b3a7640000" })).await;
    for to in [bob_address.parse().unwrap(), Address::with_last_byte(0x99)] {
        let call = mintCall { to, amount: U256::from(500) }.abi_encode();
        send(&http, &anvil.url, json!({ "to": token, "data": format!("0x{}", alloy_primitives::hex::encode(call)) }))
            .await;
    }
    let found = wait_for(&api, "two pending deposits", |list| list.len() == 2).await;
    assert_eq!(
        statuses(&found),
        [("alice".into(), json!("ETH"), "pending".into()), ("bob".into(), json!(token.to_string()), "pending".into())]
    );
    assert_eq!(found[0]["amount"], "1000000000000000000");
    // Ten blocks deep: confirmed.
    rpc(&http, &anvil.url, "anvil_mine", json!(["0xa"])).await;
    let confirmed = wait_for(&api, "both confirmed", |list| {
        list.len() == 2 && list.iter().all(|deposit| deposit["status"] == "confirmed")
    })
    .await;
    let (_, since) = deposits(&api, "depositor-token", &format!("?since={}", found[1]["change"])).await;
    assert_eq!(since["deposits"].as_array().unwrap().len(), 2, "the confirmations changed both: {since}");
    let next = confirmed.iter().map(|deposit| deposit["change"].as_u64().unwrap()).max().unwrap();

    // A deposit in a block that a reorg drops before it is confirmed: removed, never confirmed.
    let snapshot = rpc(&http, &anvil.url, "evm_snapshot", json!([])).await;
    send(&http, &anvil.url, json!({ "to": alice_address, "value": "0x7" })).await;
    wait_for(&api, "the third deposit pending", |list| list.len() == 3).await;
    assert_eq!(rpc(&http, &anvil.url, "evm_revert", json!([snapshot])).await, json!(true));
    rpc(&http, &anvil.url, "anvil_mine", json!(["0x5"])).await;
    let after = wait_for(&api, "the third deposit removed", |list| {
        list.iter().any(|deposit| deposit["amount"] == "7" && deposit["status"] == "removed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, changed) = deposits(&api, "depositor-token", &format!("?since={next}")).await;
    let changed = changed["deposits"].as_array().unwrap().clone();
    assert_eq!(changed.len(), 1, "only the third deposit changed: {changed:#?}");
    assert_eq!((changed[0]["amount"].as_str(), changed[0]["status"].as_str()), (Some("7"), Some("removed")));
    assert!(after.iter().filter(|deposit| deposit["status"] == "confirmed").count() == 2);

    // Ether sent to bob from inside a contract (one that self-destructs to him as it is created): no
    // transaction to bob, no log — found by bob's balance once a block follows (balances are never read at
    // the node's newest block), once, however many blocks follow.
    let bob_address: Address = bob_address.parse().unwrap();
    let internal = |list: &[Value]| -> Vec<Value> {
        // (A token's mint comes from the zero address too.)
        list.iter()
            .filter(|deposit| deposit["from"] == Address::ZERO.to_string() && deposit["asset"] == "ETH")
            .cloned()
            .collect()
    };
    let init_code = [&[0x73], bob_address.as_slice(), &[0xff]].concat();
    let init_code = format!("0x{}", alloy_primitives::hex::encode(init_code));
    send(&http, &anvil.url, json!({ "data": init_code, "value": "0x6f05b59d3b20000" })).await;
    rpc(&http, &anvil.url, "anvil_mine", json!(["0x1"])).await;
    let list = wait_for(&api, "the balance deposit", |list| !internal(list).is_empty()).await;
    let found = internal(&list);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0]["address"].as_str(), found[0]["asset"].as_str(), found[0]["amount"].as_str()),
        (Some(bob_address.to_string().as_str()), Some("ETH"), Some("500000000000000000"))
    );
    assert_eq!((&found[0]["reference"], &found[0]["log_index"]), (&json!("bob"), &Value::Null));
    rpc(&http, &anvil.url, "anvil_mine", json!(["0x3"])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = deposits(&api, "depositor-token", "?since=0&limit=1000").await;
    assert_eq!(internal(body["deposits"].as_array().unwrap()).len(), 1, "counted once: {body}");
}

/// Ether sent to deposit addresses while blocks are mined every second, through a node that answers every
/// balance read of its newest block with the next block's balance (as anvil does now and then, which once
/// listed a deposit twice in the fault campaign): every deposit is listed once, by its transaction, and no
/// balance check counts any of it again — the watcher never reads a balance at the newest block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_checks_never_count_a_deposit_of_the_next_block() {
    use ethkms_test_support::rpc_proxy::{Faults, RpcProxy};
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--block-time", "1"]).await else { return };
    let http = reqwest::Client::new();
    let (key, owner) = funded_key(&backend, &anvil.url).await;
    let factory = deploy(&http, &anvil.url, &contracts::factory_creation_code(owner)).await;
    let proxy = RpcProxy::start(&anvil.url, 0, Faults::none()).await.unwrap();
    proxy.set_newest_state_ahead(true);
    let paths = Paths::new();
    let start = block_number(&anvil.url).await;
    let text = format!(
        "{head}{depositor}\n[deposits]\nkey = \"hot\"\nfactory = \"{factory}\"\nparent = \"{parent}\"\n\
         confirmations = 1\nstart_block = {start}\npoll_interval_ms = 50\nsweep_interval_ms = 0\n",
        head = config_head("127.0.0.1:0", proxy.url().trim_end_matches('/'), &key, &paths),
        depositor = config_client("depositor", "depositor-token", &["deposits"]),
        parent = Address::with_last_byte(0x7d),
    );
    let api = serve_in_process(&text, backend).await;
    let mut addresses = Vec::new();
    for index in 0..5 {
        addresses.push(hand_out(&api, &format!("next-block-{index}")).await);
    }
    // Six seconds of deposits, one every 150 ms (several in each block), sent to anvil directly.
    let mut sent = std::collections::BTreeMap::<Address, U256>::new();
    let mut count = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let to = addresses[count % addresses.len()];
        let wei = U256::from(1_000 + count);
        let transaction = json!([{ "from": DEVELOPER, "to": to, "value": format!("{wei:#x}") }]);
        rpc(&http, &anvil.url, "eth_sendTransaction", transaction).await;
        *sent.entry(to).or_default() += wei;
        count += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let list = wait_for(&api, "every deposit confirmed", |list| {
        list.len() >= count && list.iter().all(|deposit| deposit["status"] == "confirmed")
    })
    .await;
    // A few blocks more: time for any late balance check.
    let mined = block_number(&anvil.url).await;
    while block_number(&anvil.url).await < mined + 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = deposits(&api, "depositor-token", "?since=0&limit=1000").await;
    let list = body["deposits"].as_array().map_or(list, Clone::clone);
    let by_balance: Vec<&Value> = list.iter().filter(|deposit| deposit["from"] == Address::ZERO.to_string()).collect();
    assert!(
        by_balance.is_empty(),
        "{} of {count} deposits counted again by a balance check: {by_balance:#?}",
        by_balance.len()
    );
    assert_eq!(list.len(), count, "each deposit listed once");
    let mut listed = std::collections::BTreeMap::<Address, U256>::new();
    for deposit in &list {
        let address = deposit["address"].as_str().unwrap().parse().unwrap();
        *listed.entry(address).or_default() += deposit["amount"].as_str().unwrap().parse::<U256>().unwrap();
    }
    assert_eq!(listed, sent, "the deposits listed, per address");
    for (address, wei) in &sent {
        assert_eq!(balance(&anvil.url, *address).await, *wei, "{address} holds what was sent");
    }
    assert_eq!(proxy.stats().newest_state_ahead, 0, "no balance was read at the newest block");
}

/// A seeded stream of numbers (splitmix64): the same deposits for a seed, every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Waits (mining a block every 100 ms) until the service has found and confirmed all `made` deposits and
/// swept what is worth sweeping: no sweep under way, every deposit of the listed token `usd` swept, and the
/// ether deposits still unswept at each address adding up to exactly its balance. The deposits listed.
async fn wait_for_sweeps<P: alloy_provider::Provider>(
    api: &Api,
    url: &str,
    provider: &P,
    usd: Address,
    made: usize,
) -> Vec<Value> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        rpc(&http, url, "anvil_mine", json!(["0x1"])).await;
        let (status, body) = deposits(api, "depositor-token", "?since=0&limit=1000").await;
        assert_eq!(status, 200, "{body}");
        let list = body["deposits"].as_array().unwrap().clone();
        let settled = list.len() == made
            && list.iter().all(|deposit| deposit["status"] == "confirmed" && deposit["sweep_status"] != "sweeping")
            && list
                .iter()
                .filter(|deposit| deposit["asset"] == usd.to_string())
                .all(|deposit| deposit["sweep_status"] == "swept");
        if settled {
            let mut unswept: std::collections::BTreeMap<Address, U256> = std::collections::BTreeMap::new();
            for deposit in list.iter().filter(|deposit| deposit["asset"] == "ETH") {
                let entry = unswept.entry(deposit["address"].as_str().unwrap().parse().unwrap()).or_default();
                if deposit["sweep_status"] == "unswept" {
                    *entry += deposit["amount"].as_str().unwrap().parse::<U256>().unwrap();
                }
            }
            let mut exact = true;
            for (address, amount) in &unswept {
                exact &= provider.get_balance(*address).await.unwrap() == *amount;
            }
            if exact {
                return list;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "deposits not swept within 90 s: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one customer was sent.
#[derive(Default, Clone)]
struct Sent {
    ether: Vec<U256>,
    usd: Vec<U256>,
    spam: U256,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_customers_deposits_are_listed_once_and_swept_exactly_to_the_treasury() {
    use alloy_provider::Provider as _;
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&[]).await else { return };
    let http = reqwest::Client::new();
    let (key, owner) = funded_key(&backend, &anvil.url).await;
    let factory = deploy(&http, &anvil.url, &contracts::factory_creation_code(owner)).await;
    let mut tokens = Vec::new();
    for symbol in ["USD", "SPAM"] {
        let code = [
            contracts::test_token_artifact().bytecode.as_ref(),
            &(symbol.to_owned(), symbol.to_owned(), symbol == "USD").abi_encode_params(),
        ]
        .concat();
        tokens.push(deploy(&http, &anvil.url, &code).await);
    }
    let (usd, spam) = (tokens[0], tokens[1]);
    let parent = Address::with_last_byte(0x7f);
    let paths = Paths::new();
    let start = block_number(&anvil.url).await;
    let text = format!(
        "{head}{depositor}\n[deposits]\nkey = \"hot\"\nfactory = \"{factory}\"\nparent = \"{parent}\"\n\
         tokens = [\"{usd}\"]\nconfirmations = 2\nstart_block = {start}\npoll_interval_ms = 100\n\
         sweep_interval_ms = 200\nsweep_batch = 50\n",
        head = config_head("127.0.0.1:0", &anvil.url, &key, &paths),
        depositor = config_client("depositor", "depositor-token", &["deposits"]),
    );
    let api = serve_in_process(&text, std::sync::Arc::clone(&backend)).await;
    let mut customers = Vec::new();
    for index in 0..200 {
        let reference = Reference::new(&format!("customer-{index:03}")).unwrap();
        let address = hand_out(&api, reference.as_str()).await;
        customers.push((reference, address));
    }
    let manager =
        ethkms::WalletManager::with_backend(backend, ethkms::ChainSettings::new(anvil.url.parse().unwrap())).unwrap();
    let provider = manager.provider();

    // Two rounds of deposits, each swept by the service: before any address is deployed, then after some are
    // (ether to those is passed on as it arrives). Some ether is too little to be worth its sweep; the spam
    // token is never swept.
    let mut random = Seeded(0x5eed);
    let mut sent = vec![Sent::default(); customers.len()];
    let mut deposits_made = 0;
    let mint = |token: Address, to: Address, amount: U256| {
        let call = mintCall { to, amount }.abi_encode();
        json!({ "to": token, "data": format!("0x{}", alloy_primitives::hex::encode(call)) })
    };
    let mut listed = Vec::new();
    for _round in 0..2 {
        for (index, (_, address)) in customers.iter().enumerate() {
            match random.next() % 6 {
                0 | 1 => {
                    let wei = U256::from(10_u64.pow(15) + random.next() % 10_u64.pow(17));
                    send(&http, &anvil.url, json!({ "to": address, "value": format!("{wei:#x}") })).await;
                    sent[index].ether.push(wei);
                    deposits_made += 1;
                }
                2 => {
                    // Too little to be worth a sweep (unless the address is swept for a token anyway).
                    let wei = U256::from(1_000 + random.next() % 1_000);
                    send(&http, &anvil.url, json!({ "to": address, "value": format!("{wei:#x}") })).await;
                    sent[index].ether.push(wei);
                    deposits_made += 1;
                }
                3 => {
                    let amount = U256::from(1 + random.next() % 1_000_000);
                    send(&http, &anvil.url, mint(usd, *address, amount)).await;
                    sent[index].usd.push(amount);
                    deposits_made += 1;
                }
                4 => {
                    let amount = U256::from(1 + random.next() % 1_000);
                    send(&http, &anvil.url, mint(spam, *address, amount)).await;
                    sent[index].spam += amount;
                }
                _ => {}
            }
        }
        listed = wait_for_sweeps(&api, &anvil.url, provider, usd, deposits_made).await;
    }

    // The treasury holds exactly what left the addresses: every address's ether and listed tokens, less what
    // is still there (too little to sweep); the spam stays where it was sent.
    let (mut ether_left, mut ether_sent, mut usd_sent) = (U256::ZERO, U256::ZERO, U256::ZERO);
    for ((reference, address), sent) in customers.iter().zip(&sent) {
        ether_sent += sent.ether.iter().copied().sum::<U256>();
        usd_sent += sent.usd.iter().copied().sum::<U256>();
        let left = provider.get_balance(*address).await.unwrap();
        assert!(left < U256::from(10_u64.pow(14)), "{reference}: {left} wei left, worth sweeping");
        ether_left += left;
        let balance = |token: Address, owner: Address| {
            let call = contracts::Erc20::balanceOfCall { owner }.abi_encode();
            async move {
                use alloy_network::TransactionBuilder as _;
                let request = alloy_rpc_types_eth::TransactionRequest::default().with_to(token).with_input(call);
                U256::from_be_slice(&provider.call(request).await.unwrap())
            }
        };
        assert_eq!(balance(usd, *address).await, U256::ZERO, "{reference}: listed tokens all swept");
        assert_eq!(balance(spam, *address).await, sent.spam, "{reference}: the spam token untouched");
    }
    assert_eq!(provider.get_balance(parent).await.unwrap(), ether_sent - ether_left, "the treasury's ether");
    let call = contracts::Erc20::balanceOfCall { owner: parent }.abi_encode();
    let request = {
        use alloy_network::TransactionBuilder as _;
        alloy_rpc_types_eth::TransactionRequest::default().with_to(usd).with_input(call)
    };
    assert_eq!(U256::from_be_slice(&provider.call(request).await.unwrap()), usd_sent, "the treasury's tokens");

    // Every sweep was signed by the key, called the factory and succeeded — once: no sweep failed, and as many
    // were confirmed as were started.
    let sweeps: std::collections::BTreeSet<String> =
        listed.iter().filter_map(|deposit| deposit["sweep_tx_hash"].as_str().map(str::to_owned)).collect();
    assert!(!sweeps.is_empty());
    for hash in &sweeps {
        let receipt = provider.get_transaction_receipt(hash.parse().unwrap()).await.unwrap().expect("mined");
        assert!(receipt.status(), "sweep {hash} succeeded");
        assert_eq!((receipt.from, receipt.to), (owner, Some(factory)), "sweep {hash}: the key called the factory");
    }
    let counted = (
        sweeps_counted(&api, "started").await,
        sweeps_counted(&api, "confirmed").await,
        sweeps_counted(&api, "failed").await,
    );
    assert_eq!(counted, (sweeps.len() as u64, sweeps.len() as u64, 0));
    eprintln!(
        "deposits: {deposits_made} made to 200 customers; {} sweep transactions; {ether_left} wei left unswept",
        sweeps.len()
    );

    // The journal lists every deposit (ether and the listed token, not the spam) once, confirmed.
    assert_eq!(listed.len(), deposits_made, "each deposit listed once");
    let ids: std::collections::HashSet<(String, String)> =
        listed.iter().map(|deposit| (deposit["tx_hash"].to_string(), deposit["log_index"].to_string())).collect();
    assert_eq!(ids.len(), deposits_made);
    assert!(listed.iter().all(|deposit| deposit["asset"] != spam.to_string()), "the spam token is not a deposit");
    let listed_ether: U256 = listed
        .iter()
        .filter(|deposit| deposit["asset"] == "ETH")
        .map(|deposit| deposit["amount"].as_str().unwrap().parse::<U256>().unwrap())
        .sum();
    assert_eq!(listed_ether, ether_sent, "every ether deposit listed, with its amount");
}

/// The value of `ethkms_sweeps_total{outcome}` in the service's metrics.
async fn sweeps_counted(api: &Api, outcome: &str) -> u64 {
    let line = format!("ethkms_sweeps_total{{outcome=\"{outcome}\"}} ");
    api.metrics().await.lines().find_map(|text| text.strip_prefix(&line)).map_or(0, |value| value.parse().unwrap())
}

/// Whether the service's metrics have the line `line`.
async fn has_metric_line(api: &Api, line: &str) -> bool {
    api.metrics().await.lines().any(|text| text == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_the_key_cannot_pay_for_fails_unpaid_and_its_deposit_is_swept_once_it_can() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&[]).await else { return };
    let http = reqwest::Client::new();
    let (key, owner) = funded_key(&backend, &anvil.url).await;
    let factory = deploy(&http, &anvil.url, &contracts::factory_creation_code(owner)).await;
    let parent = Address::with_last_byte(0x7d);
    // The sweeping key has no ether for gas.
    set_balance(&anvil.url, owner, U256::ZERO).await;
    let paths = Paths::new();
    let start = block_number(&anvil.url).await;
    let text = format!(
        "{head}{depositor}\n[deposits]\nkey = \"hot\"\nfactory = \"{factory}\"\nparent = \"{parent}\"\n\
         confirmations = 1\nstart_block = {start}\npoll_interval_ms = 100\nsweep_interval_ms = 100\n",
        head = config_head("127.0.0.1:0", &anvil.url, &key, &paths),
        depositor = config_client("depositor", "depositor-token", &["deposits"]),
    );
    let api = serve_in_process(&text, backend).await;
    let alice = hand_out(&api, "alice").await;
    send(&http, &anvil.url, json!({ "to": alice, "value": "0xde0b6b3a7640000" })).await;

    // The sweep fails before anything is sent: the deposit is unswept again, in no sweep, the ether where it was.
    let started = Instant::now();
    while sweeps_counted(&api, "failed").await == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no sweep failed within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = wait_for(&api, "the deposit unswept again", |list| {
        list.len() == 1 && list[0]["status"] == "confirmed" && list[0]["sweep_status"] == "unswept"
    })
    .await;
    assert_eq!(list[0]["sweep_id"], Value::Null, "{list:#?}");
    assert_eq!(balance(&anvil.url, alice).await, U256::from(10).pow(U256::from(18)));
    assert_eq!(balance(&anvil.url, parent).await, U256::ZERO);
    assert_eq!(sweeps_counted(&api, "confirmed").await, 0);

    // Once the key can pay, the next sweep (after a back-off) moves it, once.
    set_balance(&anvil.url, owner, U256::from(10).pow(U256::from(18))).await;
    let swept = wait_for(&api, "the deposit swept", |list| list[0]["sweep_status"] == "swept").await;
    assert!(swept[0]["sweep_tx_hash"].is_string(), "{swept:#?}");
    assert_eq!(balance(&anvil.url, parent).await, U256::from(10).pow(U256::from(18)), "the treasury has it");
    assert_eq!(balance(&anvil.url, alice).await, U256::ZERO);
    assert_eq!(sweeps_counted(&api, "confirmed").await, 1);
    // Nothing left open: the gauges an operator watches for a sweep that never ends say so.
    let started = Instant::now();
    while !has_metric_line(&api, "ethkms_sweeps_open 0").await {
        assert!(started.elapsed() < Duration::from_secs(10), "a sweep still counted open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(has_metric_line(&api, "ethkms_oldest_open_sweep_seconds 0").await);
}
