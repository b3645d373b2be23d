//! The withdrawal engine against LocalStack and anvil, one behaviour per test: fee bumps of at least 12.5%
//! that stop exactly at the key's cap; a reorg that drops a mined withdrawal (re-broadcast as it is, paid
//! once); KMS throttling retried, never failed; cancellation before signing, after signing and too late;
//! an `eth_sendTransaction` stuck at the head bumped like a withdrawal; a transaction sent from the key
//! elsewhere at the next nonce, which no withdrawal collides with; a transaction the node dropped from its
//! pool, sent again and then replaced within seconds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use common::*;
use ethkms::backend::{Faults, KeyBackend, MemoryBackend};
use ethkms::eth::chain::{self, Fees};
use ethkms_test_support::rpc_proxy::{self, RpcProxy};
use ethkms_test_support::service_from_env;
use serde_json::{Value, json};

async fn anvil_call(url: &str, method: &str, params: Value) -> Value {
    rpc(&reqwest::Client::new(), url, method, params).await
}

/// (max fee per gas, priority fee per gas) of a transaction the node has (pending or mined).
async fn fees_of(url: &str, hash: &Value) -> Option<(u128, u128)> {
    let tx = anvil_call(url, "eth_getTransactionByHash", json!([hash])).await;
    (!tx.is_null()).then(|| (quantity(&tx["maxFeePerGas"]), quantity(&tx["maxPriorityFeePerGas"])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fee_bumps_rise_by_an_eighth_and_stop_exactly_at_the_cap() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    // The market's fees, as the engine will see them; the cap is 1.5 times the market's max fee, which leaves
    // room for three bumps of 12.5% (1.125, 1.266, 1.424) and not a fourth.
    let provider = ethkms::WalletManager::with_backend(
        Arc::new(MemoryBackend::new()),
        ethkms::ChainSettings::new(anvil.url.parse().unwrap()),
    )
    .unwrap();
    let Fees::Eip1559 { max_fee_per_gas: market, .. } = chain::fees(provider.provider()).await.unwrap() else {
        panic!("anvil has EIP-1559 fees")
    };
    let cap = market * 3 / 2;
    let paths = Paths::new();
    let text = configuration("127.0.0.1:0", &anvil.url, &key, &paths)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 1")
        .replace(
            "confirmations = 1",
            &format!(
                "confirmations = 1\nfees = {{ max_fee_per_gas = \"{cap}\", max_priority_fee_per_gas = \"{cap}\" }}"
            ),
        );
    let api = serve_in_process(&text, backend).await;
    let (status, accepted) = api.post(&withdrawal("capped-1", recipient("capped", 1), "ETH", "12345")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();

    // Each transaction's fees, read while it is the pending one.
    let mut seen: Vec<(Value, (u128, u128))> = Vec::new();
    let started = Instant::now();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(4) {
        assert!(started.elapsed() < Duration::from_secs(40), "bumps never stopped: {seen:?}");
        let withdrawal = api.get(&id).await;
        let hash = withdrawal["tx_hash"].clone();
        if !hash.is_null() && seen.last().is_none_or(|(last, _)| *last != hash) {
            let fees = fees_of(&anvil.url, &hash).await.unwrap_or_else(|| panic!("{hash} replaced before it was read"));
            seen.push((hash, fees));
            stable_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.len(), 4, "the first transaction and three bumps, then the cap: {seen:?}");
    for pair in seen.windows(2) {
        let ((_, (old_max, old_priority)), (_, (new_max, new_priority))) = (&pair[0], &pair[1]);
        assert!(new_max * 8 >= old_max * 9, "max fee {old_max} -> {new_max}: less than 12.5% more");
        assert!(new_priority * 8 >= old_priority * 9, "priority fee {old_priority} -> {new_priority}");
    }
    assert!(seen.iter().all(|(_, (max, priority))| *max <= cap && *priority <= cap), "above the cap {cap}: {seen:?}");
    assert_eq!(api.get(&id).await["transactions"], 4, "nothing signed after the cap");
    assert!(api.metric("ethkms_fee_cap_reached_total ").await >= 1.0);

    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let settled = api.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.len(), 1, "one transaction mined: {mined:?}");
    assert_eq!(Some(mined[&0].2.as_str()), settled["tx_hash"].as_str());
    assert_eq!(Some(mined[&0].2.as_str()), seen[3].0.as_str(), "the last bump is the one mined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_that_drops_a_mined_withdrawal_has_it_broadcast_again_and_paid_once() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&[]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let text = configuration("127.0.0.1:0", &anvil.url, &key, &paths).replace("confirmations = 1", "confirmations = 3");
    let api = serve_in_process(&text, backend).await;
    let snapshot = anvil_call(&anvil.url, "evm_snapshot", json!([])).await;
    let to = recipient("reorg", 1);
    let (status, accepted) = api.post(&withdrawal("reorg-1", to, "ETH", "777")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let mined = api.wait_until(&id, Duration::from_secs(20), |w| w["status"] == "mined").await;
    let first_block = mined["block_number"].as_u64().unwrap();

    // The block is dropped; anvil's head goes back below it.
    assert_eq!(anvil_call(&anvil.url, "evm_revert", json!([snapshot])).await, true);
    let started = Instant::now();
    while api.metric("ethkms_reorgs_total ").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the reorg was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Broadcast again as it is (no new signature) and mined again; then confirmed once deep enough.
    let again = api.wait_until(&id, Duration::from_secs(20), |w| w["status"] == "mined").await;
    assert_eq!(again["tx_hash"], mined["tx_hash"], "the same bytes, not a new transaction");
    assert_eq!(again["transactions"], 1);
    for _ in 0..3 {
        anvil_call(&anvil.url, "evm_mine", json!([])).await;
    }
    let settled = api.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert!(settled["block_number"].as_u64().unwrap() <= first_block, "{settled} vs block {first_block}");
    assert_eq!(balance(&anvil.url, to).await, U256::from(777), "paid exactly once");
    assert_eq!(transactions_from(&anvil.url, address, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_throttling_is_retried_and_never_fails_a_withdrawal() {
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn KeyBackend> = memory.clone();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), backend).await;
    memory.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let to = recipient(&ethkms_test_support::unique("throttled"), 1);
    let (status, accepted) = api.post(&withdrawal("throttled-1", to, "ETH", "4242")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while api.metric("ethkms_transient_retries_total{cause=\"kms_throttled\"} ").await < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", api.metrics().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = api.get(&id).await;
    assert_eq!(waiting["status"], "signing", "throttled: claimed with its nonce, not failed: {waiting}");
    memory.set_faults(Faults::default());
    let settled = api.settled(&id, Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(balance(&rpc_url, to).await, U256::from(4242));
}

/// A key-service error keeps its kind up to the JSON-RPC answer: throttling is -32005 (retry later),
/// a disabled key a server error that is not the client's mistake, and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_errors_keep_their_kind_up_to_the_json_rpc_code() {
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn KeyBackend> = memory.clone();
    let (key, address) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), backend).await;
    let sign = || async {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "personal_sign", "params": ["0x6869", address] });
        let response = api.http.post(format!("{}/", api.url)).bearer_auth("reader-token").json(&body).send().await;
        response.unwrap().json::<Value>().await.unwrap()
    };
    assert!(sign().await["result"].is_string());

    // A 5,000-call signing batch is refused whole, before any signature.
    let before = memory.request_counts().sign;
    let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "personal_sign", "params": ["0x6869", address] });
    let batch = Value::Array(vec![call; 5_000]);
    let response = api.http.post(format!("{}/", api.url)).bearer_auth("reader-token").json(&batch).send().await;
    let refused: Value = response.unwrap().json().await.unwrap();
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("5000 calls"), "{refused}");
    assert_eq!(memory.request_counts().sign, before, "nothing signed");

    memory.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let before = memory.request_counts().sign;
    let throttled = sign().await;
    assert_eq!(throttled["error"]["code"], -32005, "{throttled}");
    assert_eq!(throttled["error"]["data"]["kind"], "kms_throttled", "{throttled}");
    assert_eq!(throttled["error"]["data"]["retryable"], true, "{throttled}");
    // One retry layer: the key handle's five attempts, not five times the SDK's.
    assert_eq!(memory.request_counts().sign - before, 5);
    assert!(api.metric("ethkms_kms_errors_total{kind=\"throttled\"} ").await >= 1.0);

    memory.set_faults(Faults::default());
    memory.disable_key(&key.parse().unwrap()).await.unwrap();
    let disabled = sign().await;
    assert_eq!(disabled["error"]["code"], -32000, "{disabled}");
    assert_eq!(disabled["error"]["data"]["kind"], "kms", "{disabled}");
    assert_eq!(disabled["error"]["data"]["retryable"], false, "{disabled}");
    assert!(disabled["error"]["message"].as_str().unwrap().contains("disabled"), "{disabled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_before_signing_after_signing_and_too_late() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    // The node is unreachable at first: the engine cannot recover, so withdrawals stay `accepted`.
    let proxy = RpcProxy::start(&anvil.url, 1, rpc_proxy::Faults::none()).await.unwrap();
    proxy.set_outage(true);
    let paths = Paths::new();
    let api = serve_in_process_unready(
        &configuration("127.0.0.1:0", proxy.url().trim_end_matches('/'), &key, &paths),
        backend,
    )
    .await;
    let (early_to, late_to) = (recipient("cancel", 1), recipient("cancel", 2));
    let (_, early) = api.post(&withdrawal("cancel-early", early_to, "ETH", "1001")).await;
    let early = early["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = api.cancel(&early).await;
    assert_eq!(
        (status, cancelled["status"].as_str(), cancelled["final"].as_bool()),
        (200, Some("cancelled"), Some(true))
    );
    assert_eq!(api.cancel(&early).await.0, 200, "cancelling twice is the same answer");
    proxy.set_outage(false);

    // After signing: a zero-value transfer to the key itself with the same nonce, and it is the one mined.
    let (_, late) = api.post(&withdrawal("cancel-late", late_to, "ETH", "1002")).await;
    let late = late["id"].as_str().unwrap().to_owned();
    api.wait_until(&late, Duration::from_secs(30), |w| w["status"] == "submitted").await;
    let (status, requested) = api.cancel(&late).await;
    assert_eq!((status, requested["cancel_requested"].as_bool()), (202, Some(true)), "{requested}");
    api.wait_until(&late, Duration::from_secs(30), |w| w["transactions"] == 2).await;
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let settled = api.settled(&late, Duration::from_secs(30)).await;
    assert_eq!((settled["status"].as_str(), settled["nonce"].as_u64()), (Some("cancelled"), Some(0)), "{settled}");
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.len(), 1, "{mined:?}");
    assert_eq!((mined[&0].0, mined[&0].1), (address, U256::ZERO), "the cancellation took the nonce");
    assert_eq!(balance(&anvil.url, late_to).await, U256::ZERO);
    assert_eq!(balance(&anvil.url, early_to).await, U256::ZERO, "the early one was never signed");
    let audit = std::fs::read_to_string(&paths.audit).unwrap();
    let signatures = audit.lines().filter(|line| line.contains("\"kind\":\"signature\""));
    assert!(
        signatures.clone().all(|line| !line.contains(&early)),
        "a signature for the withdrawal cancelled before signing"
    );
    assert!(audit.contains("\"method\":\"cancel\""));

    // Too late once mined, and unknown ids are not found.
    let (_, paid) = api.post(&withdrawal("cancel-paid", late_to, "ETH", "1003")).await;
    let paid = paid["id"].as_str().unwrap().to_owned();
    api.wait_until(&paid, Duration::from_secs(30), |w| w["status"] == "submitted").await;
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    api.settled(&paid, Duration::from_secs(30)).await;
    let (status, refused) = api.cancel(&paid).await;
    assert_eq!((status, refused["error"]["kind"].as_str()), (409, Some("not_cancellable")), "{refused}");
    assert_eq!(api.cancel("no-such-withdrawal").await.0, 404);
    assert_eq!(balance(&anvil.url, late_to).await, U256::from(1003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eth_send_transaction_stuck_at_the_head_is_bumped_and_mined_once() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let text = configuration("127.0.0.1:0", &anvil.url, &key, &paths)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 1")
        .replace("methods = [\"withdrawals\"]", "methods = [\"withdrawals\", \"eth_sendTransaction\"]");
    let api = serve_in_process(&text, backend).await;
    let to = recipient("stuck-rpc", 1);
    let answer = api.call("eth_sendTransaction", json!([{ "from": address, "to": to, "value": "0x3039" }])).await;
    let first = answer["result"].clone();
    assert!(first.is_string(), "{answer}");
    let (first_max, _) = fees_of(&anvil.url, &first).await.unwrap();
    let started = Instant::now();
    let replacement = loop {
        let pool = anvil_call(&anvil.url, "txpool_content", json!([])).await;
        let pending =
            pool["pending"].as_object().unwrap().values().next().and_then(|by_nonce| by_nonce.get("0")).cloned();
        if let Some(pending) = pending
            && pending["hash"] != first
        {
            break pending;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never bumped: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(quantity(&replacement["maxFeePerGas"]) * 8 >= first_max * 9, "{replacement}");
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let started = Instant::now();
    while transactions_from(&anvil.url, address, 0).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.len(), 1);
    assert_eq!((mined[&0].0, mined[&0].1), (to, U256::from(0x3039)));
    assert_eq!(balance(&anvil.url, to).await, U256::from(0x3039), "paid once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_elsewhere_at_the_next_nonce_makes_no_withdrawal_fail_nor_wait_when_it_vanishes() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let text = configuration("127.0.0.1:0", &anvil.url, &key, &paths)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 1");
    let api = serve_in_process(&text, backend).await;
    // An operator's transaction from the same key, pending at nonce 0.
    let operator_to: Address = recipient("operator", 1);
    anvil_call(&anvil.url, "anvil_impersonateAccount", json!([address])).await;
    let operator =
        anvil_call(&anvil.url, "eth_sendTransaction", json!([{ "from": address, "to": operator_to, "value": "0x1" }]))
            .await;
    anvil_call(&anvil.url, "anvil_stopImpersonatingAccount", json!([address])).await;
    let to = recipient("after-operator", 1);
    let (_, accepted) = api.post(&withdrawal("after-operator-1", to, "ETH", "555")).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let submitted = api.wait_until(&id, Duration::from_secs(20), |w| w["status"] == "submitted").await;
    assert_eq!(submitted["nonce"], 1, "the pending transaction at nonce 0 was seen: {submitted}");

    // The operator's transaction vanishes from the pool: nonce 0 would hold the withdrawal back forever. It is
    // filled with a zero-value transfer to the key itself, and the withdrawal is mined after it.
    anvil_call(&anvil.url, "anvil_dropTransaction", json!([operator])).await;
    let started = Instant::now();
    while api.metric("ethkms_nonce_gaps_filled_total ").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the hole at nonce 0 was never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (The gap fill is counted when signed: blocks are mined until the withdrawal is in one.)
    let started = Instant::now();
    let settled = loop {
        anvil_call(&anvil.url, "evm_mine", json!([])).await;
        let withdrawal = api.get(&id).await;
        if withdrawal["final"] == true {
            break withdrawal;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{withdrawal}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((settled["status"].as_str(), settled["nonce"].as_u64()), (Some("confirmed"), Some(1)), "{settled}");
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!((mined[&0].0, mined[&0].1), (address, U256::ZERO), "nonce 0: the gap fill");
    assert_eq!(mined.len(), 2, "{mined:?}");
    assert_eq!(balance(&anvil.url, operator_to).await, U256::ZERO);
    assert_eq!(balance(&anvil.url, to).await, U256::from(555));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_for_one_key_and_a_key_for_another_chain_are_refused() {
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let (key, address) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let text = configuration("127.0.0.1:0", &rpc_url, &key, &paths);
    let twice = text.replace(
        "[clients.exchange]",
        &format!("[keys.again]\nkey = \"{key}\"\nchain_id = 31337\n\n[clients.exchange]"),
    );
    let config = ethkms_server::config::Config::parse(&twice).unwrap();
    let error = ethkms_server::service::Service::start(config, Arc::clone(&backend)).await.unwrap_err().to_string();
    assert!(error.contains("`again` and `hot`") || error.contains("`hot` and `again`"), "{error}");
    assert!(error.contains(&address.to_string()), "{error}");

    // A key configured for chain 1 on a node that is chain 31337: nothing is signed, and readiness says why.
    let other = Paths::new();
    let text = configuration("127.0.0.1:0", &rpc_url, &key, &other).replace("chain_id = 31337", "chain_id = 1");
    let api = serve_in_process_unready(&text, backend).await;
    let started = Instant::now();
    loop {
        let response = api.http.get(format!("{}/readyz", api.url)).send().await.unwrap();
        let (status, body) = (response.status().as_u16(), response.text().await.unwrap());
        if body.contains("halted") {
            assert_eq!(status, 503);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, refused) = api.post(&withdrawal("wrong-chain-1", recipient("wrong-chain", 1), "ETH", "1")).await;
    assert_eq!((status, refused["error"]["kind"].as_str()), (503, Some("halted")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("chain 31337"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_asked_while_signing_wins_or_loses_the_race_honestly() {
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn KeyBackend> = memory.clone();
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &anvil.url, &key, &paths), backend).await;

    // Asked while KMS is still signing: the cancellation is signed once the payment is stored, and is the one
    // mined.
    memory.set_faults(Faults { latency: Duration::from_millis(1500), ..Faults::default() });
    let to = recipient("cancel-signing", 1);
    let (_, accepted) = api.post(&withdrawal("cancel-signing-1", to, "ETH", "31")).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    api.wait_until(&id, Duration::from_secs(10), |w| w["status"] == "signing").await;
    let (status, requested) = api.cancel(&id).await;
    assert_eq!((status, requested["cancel_requested"].as_bool()), (202, Some(true)), "{requested}");
    memory.set_faults(Faults::default());
    api.wait_until(&id, Duration::from_secs(30), |w| w["transactions"] == 2).await;
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let settled = api.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "cancelled", "{settled}");
    assert_eq!(balance(&anvil.url, to).await, U256::ZERO);

    // Asked too late to win: the payment is mined first, and the withdrawal says so (confirmed, paid once).
    let to = recipient("cancel-signing", 2);
    let (_, accepted) = api.post(&withdrawal("cancel-signing-2", to, "ETH", "32")).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    api.wait_until(&id, Duration::from_secs(10), |w| w["status"] == "submitted").await;
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let (status, _) = api.cancel(&id).await;
    assert!(status == 202 || status == 409, "{status}");
    let settled = api.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(balance(&anvil.url, to).await, U256::from(32));
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.len(), 2, "the cancellation of the first, the payment of the second: {mined:?}");
}

/// With `limits.max_pending_withdrawals` reached, a POST is answered 503 with `Retry-After` and nothing is
/// stored; once the backlog is signed, the same request is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_answers_503_and_stores_nothing() {
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn KeyBackend> = memory.clone();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let text =
        format!("limits = {{ max_pending_withdrawals = 1 }}\n{}", configuration("127.0.0.1:0", &rpc_url, &key, &paths));
    let api = serve_in_process(&text, backend).await;
    memory.set_faults(Faults { latency: Duration::from_millis(1500), ..Faults::default() });
    let run = ethkms_test_support::unique("backlog");
    let (status, first) = api.post(&withdrawal(&format!("{run}-1"), recipient(&run, 1), "ETH", "1")).await;
    assert_eq!(status, 202, "{first}");
    let second = withdrawal(&format!("{run}-2"), recipient(&run, 2), "ETH", "2");
    let response = api.http.post(format!("{}/v1/withdrawals", api.url)).bearer_auth(TOKEN).json(&second).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "overloaded", "{body}");
    assert!(api.metric("ethkms_overload_refusals_total{limit=\"pending_withdrawals\"} ").await >= 1.0);
    memory.set_faults(Faults::default());
    // Settled: its task ended long before.
    api.settled(first["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    let (status, accepted) = api.post(&second).await;
    assert_eq!(status, 202, "stored nothing the first time, so this is new: {accepted}");
}

/// A node that drops the key's next transaction from its pool (evicted, restarted — or anvil parking it):
/// the watcher notices that nothing is pending at the nonce and sends the same bytes again within seconds,
/// not after `rebroadcast_after` (600 s here); dropped once more, it is replaced with bumped fees. Paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_node_dropped_is_sent_again_then_replaced_long_before_rebroadcast_after() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--no-mining"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &anvil.url, &key, &paths), backend).await;
    let to = recipient("dropped", 1);
    let (status, accepted) = api.post(&withdrawal("dropped-1", to, "ETH", "4242")).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let submitted = api.wait_until(&id, Duration::from_secs(20), |w| w["status"] == "submitted").await;
    let first = submitted["tx_hash"].clone();
    let pooled = |hash: Value| {
        let url = anvil.url.clone();
        async move { !anvil_call(&url, "eth_getTransactionByHash", json!([hash])).await.is_null() }
    };
    let first_fees = fees_of(&anvil.url, &first).await.expect("pooled");

    // Dropped: the same transaction is back in the pool within seconds.
    anvil_call(&anvil.url, "anvil_dropTransaction", json!([first])).await;
    assert!(!pooled(first.clone()).await, "anvil dropped it");
    let dropped = Instant::now();
    while !pooled(first.clone()).await {
        assert!(dropped.elapsed() < Duration::from_secs(20), "the dropped transaction was not sent again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.get(&id).await["transactions"], 1, "sent again as it was, not re-signed");
    assert_eq!(api.metric("ethkms_lost_transactions_total ").await, 1.0);

    // Dropped again: now replaced, with fees at least 12.5% higher.
    anvil_call(&anvil.url, "anvil_dropTransaction", json!([first])).await;
    let replaced = api.wait_until(&id, Duration::from_secs(30), |w| w["transactions"] == 2).await;
    let second = replaced["tx_hash"].clone();
    assert_ne!(second, first);
    let again = Instant::now();
    while !pooled(second.clone()).await {
        assert!(again.elapsed() < Duration::from_secs(10), "the replacement is not in the pool");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second_fees = fees_of(&anvil.url, &second).await.unwrap();
    assert!(second_fees.0 * 8 >= first_fees.0 * 9, "bumped by an eighth at least: {first_fees:?} -> {second_fees:?}");
    assert!(second_fees.1 * 8 >= first_fees.1 * 9, "{first_fees:?} -> {second_fees:?}");
    anvil_call(&anvil.url, "evm_mine", json!([])).await;
    let settled = api.settled(&id, Duration::from_secs(30)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(settled["tx_hash"], second);
    assert_eq!(balance(&anvil.url, to).await, U256::from(4242));
    assert_eq!(transactions_from(&anvil.url, address, 0).await.len(), 1, "one transaction mined");
}
