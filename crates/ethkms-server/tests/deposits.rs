//! Deposit addresses through the service, against LocalStack and an anvil of the test's own (so that it
//! can drop blocks): `POST /v1/deposit-addresses` hands out each reference's address once (what
//! `ethkms-deposits` derives), bad references and clients without the `deposits` method are refused; the
//! watcher finds ether and token deposits, keeps them `pending` until `confirmations` deep, then
//! `confirmed`; a deposit whose block a reorg drops before that is `removed` and never confirmed; `GET
//! /v1/deposits?since=` lists what changed, in order. In CI a missing service fails it.

mod common;

use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall as _, SolValue as _};
use common::*;
use ethkms_deposits::{DepositAddresses, Reference, contracts};
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

/// `GET /v1/deposits?since=…` as `client`'s token: (status, body).
async fn deposits(api: &Api, token: &str, query: &str) -> (u16, Value) {
    let response = api.http.get(format!("{}/v1/deposits{query}", api.url)).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until the deposits listed from change 0 satisfy `done`; the list.
async fn wait_for(api: &Api, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, body) = deposits(api, "depositor-token", "?since=0").await;
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
    let factory_code = format!("0x{}", alloy_primitives::hex::encode(contracts::factory_creation_code(owner)));
    let created = send(&http, &anvil.url, json!({ "data": factory_code })).await;
    let factory: Address = created["contractAddress"].as_str().unwrap().parse().unwrap();
    let token_code = [
        contracts::test_token_artifact().bytecode.as_ref(),
        &("Test USD".to_owned(), "TUSD".to_owned(), true).abi_encode_params(),
    ]
    .concat();
    let created =
        send(&http, &anvil.url, json!({ "data": format!("0x{}", alloy_primitives::hex::encode(token_code)) })).await;
    let token: Address = created["contractAddress"].as_str().unwrap().parse().unwrap();
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
}
