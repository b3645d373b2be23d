//! REST withdrawals against LocalStack's KMS and anvil: idempotency, bad input and policy denials,
//! ether and ERC-20 withdrawals mined with contiguous nonces, a nonce gap filled after a failed signature, and the crash test: `kill -9` the server binary while withdrawals
//! are in flight, restart it, and every accepted withdrawal is mined exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use common::*;
use ethkms::backend::{Faults, KeyBackend, MemoryBackend};
use ethkms_server::journal::{JournalStore as _, SqliteJournal};
use ethkms_test_support::{service_from_env, unique};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_are_idempotent_checked_and_mined_with_contiguous_nonces() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let first_block = block_number(&rpc_url).await;
    let (key, address) = funded_key(&backend, &rpc_url).await;
    let token = deploy_token(&rpc_url, address, U256::from(1000)).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), backend).await;
    let run = unique("run");
    let r1 = recipient(&run, 1);

    // Accepted, then the same request again: the same withdrawal, not a second one.
    let first = withdrawal(&format!("{run}-1"), r1, "ETH", "0.01ether");
    let (status, accepted) = api.post(&first).await;
    assert_eq!((status, accepted["status"].as_str()), (202, Some("accepted")), "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (status, again) = api.post(&first).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())), "{again}");
    let (status, conflict) = api.post(&withdrawal(&format!("{run}-1"), r1, "ETH", "0.02ether")).await;
    assert_eq!((status, conflict["error"]["kind"].as_str()), (409, Some("idempotency_key_reused")), "{conflict}");
    assert_eq!(conflict["error"]["id"].as_str(), Some(id.as_str()));

    // An ERC-20 withdrawal and eight more in ether, concurrently.
    let r2 = recipient(&run, 2);
    let (status, token_withdrawal) =
        api.post(&withdrawal(&format!("{run}-token"), r2, &token.to_string(), "250")).await;
    assert_eq!(status, 202, "{token_withdrawal}");
    let posts = (0..8u64).map(|index| {
        let body =
            withdrawal(&format!("{run}-eth-{index}"), recipient(&run, index + 100), "ETH", &(1000 + index).to_string());
        let api = &api;
        async move { api.post(&body).await }
    });
    let mut ids = vec![id.clone(), token_withdrawal["id"].as_str().unwrap().to_owned()];
    for (status, body) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }

    // Refusals, each naming what was wrong; none is stored or signed.
    let cases = [
        (None, json!({ "idempotency_key": "x" }), 400, "invalid_request", "missing field"),
        (None, json!("not an object"), 400, "invalid_request", "not a withdrawal"),
        (None, withdrawal("x", r1, "ETH", "12abc"), 400, "invalid_request", "`amount`"),
        (None, withdrawal("x", r1, "ETH", "0"), 400, "invalid_request", "more than zero"),
        (None, withdrawal("x", r1, "DOGE", "1"), 400, "invalid_request", "`asset`"),
        (
            None,
            json!({ "idempotency_key": "x", "key": "hot", "to": "0x12", "asset": "ETH", "amount": "1" }),
            400,
            "invalid_request",
            "`to`",
        ),
        (
            None,
            json!({ "idempotency_key": "x", "key": "cold", "to": r1, "asset": "ETH", "amount": "1" }),
            403,
            "forbidden",
            "`cold`",
        ),
        (
            None,
            withdrawal(
                &format!("{run}-dead"),
                "0x000000000000000000000000000000000000dEaD".parse().unwrap(),
                "ETH",
                "1",
            ),
            403,
            "policy_denied",
            "destination_denylist",
        ),
        (None, withdrawal(&format!("{run}-big"), r1, "ETH", "2ether"), 403, "policy_denied", "max_value"),
        (Some("reader-token"), withdrawal("x", r1, "ETH", "1"), 403, "forbidden", "may not make withdrawals"),
        (Some("wrong-token"), withdrawal("x", r1, "ETH", "1"), 401, "unauthorized", "unknown bearer token"),
    ];
    for (token_used, body, expected_status, kind, needle) in cases {
        let (status, answer) = api.post_as(token_used.unwrap_or(TOKEN), &body).await;
        assert_eq!((status, answer["error"]["kind"].as_str()), (expected_status, Some(kind)), "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    let (status, _) = api.get_as("reader-token", &id).await;
    assert_eq!(status, 404, "another client does not see the withdrawal");
    let (status, missing) = api.get_as(TOKEN, "no-such-withdrawal").await;
    assert_eq!((status, missing["error"]["kind"].as_str()), (404, Some("not_found")));
    // A request names itself with X-Request-Id (the client's, or a new UUID), answered back.
    let named = api.http.get(format!("{}/v1/withdrawals/{id}", api.url)).bearer_auth(TOKEN);
    let named = named.header("x-request-id", "ticket-42").send().await.unwrap();
    assert_eq!(named.headers()["x-request-id"], "ticket-42");
    let unnamed = api.http.get(format!("{}/v1/withdrawals/{id}", api.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(unnamed.headers()["x-request-id"].len(), 36, "a UUID");

    // All mined, with nonces 0..10 (a fresh key), and the money where it should be.
    let mut nonces = BTreeSet::new();
    for id in &ids {
        let settled = api.settled(id, Duration::from_secs(60)).await;
        assert_eq!(settled["status"], "confirmed", "{settled}");
        assert_eq!(settled["from"].as_str().unwrap().parse::<Address>().unwrap(), address);
        nonces.insert(settled["nonce"].as_u64().unwrap());
    }
    assert_eq!(nonces, (0..10).collect::<BTreeSet<u64>>());
    assert_eq!(balance(&rpc_url, r1).await, U256::from(ETHER / 100));
    assert_eq!(token_balance(&rpc_url, token, r2).await, U256::from(250));
    assert_eq!(token_balance(&rpc_url, token, address).await, U256::from(750));
    let mined = transactions_from(&rpc_url, address, first_block).await;
    assert_eq!(mined.keys().copied().collect::<Vec<_>>(), (0..10).collect::<Vec<u64>>(), "exactly 10 transactions");

    let metrics = api.metrics().await;
    for line in [
        "ethkms_withdrawals_total{status=\"accepted\"} 10",
        "ethkms_withdrawals_total{status=\"mined\"} 10",
        "ethkms_withdrawals_total{status=\"confirmed\"} 10",
        "ethkms_policy_denials_total{rule=\"max_value\"} 1",
        "ethkms_signatures_total{method=\"withdrawals\"} 10",
    ] {
        assert!(metrics.contains(line), "`{line}` not in:\n{metrics}");
    }
    let verified = ethkms::audit::verify(&paths.audit).unwrap();
    assert_eq!(verified.records, 12, "10 signatures and 2 denials");
    // The token withdrawal's record holds what forensics needs: who asked, under which idempotency key,
    // the transaction's chain, nonce, contract, calldata selector and hash, gas and fees, and its hash.
    let records: Vec<Value> = std::fs::read_to_string(&paths.audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["event"].clone())
        .collect();
    let token_record = records
        .iter()
        .find(|event| event["idempotency_key"] == format!("{run}-token"))
        .unwrap_or_else(|| panic!("no record of the token withdrawal in {records:?}"));
    assert_eq!(token_record["client"], "exchange", "{token_record}");
    assert_eq!(token_record["chain_id"], 31337, "{token_record}");
    assert_eq!(token_record["to"], json!(token), "{token_record}");
    assert_eq!(token_record["recipient"], json!(r2), "{token_record}");
    assert_eq!(token_record["selector"], "0xa9059cbb", "{token_record}");
    assert_eq!(token_record["value"], "0", "{token_record}");
    assert!(token_record["calldata_keccak256"].as_str().is_some_and(|hash| hash.len() == 66), "{token_record}");
    assert!(token_record["gas"].as_u64().is_some_and(|gas| gas > 21_000), "{token_record}");
    assert!(token_record["max_fee_per_gas"].as_str().is_some(), "{token_record}");
    assert!(token_record["nonce"].is_u64() && token_record["tx_hash"].is_string(), "{token_record}");
    let denial = records.iter().find(|event| event["kind"] == "denial").unwrap();
    assert!(denial["rule"].is_string() && denial["client"] == "exchange", "{denial}");
    assert!(denial["request_id"].as_str().is_some_and(|id| id.len() == 36), "{denial}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_left_by_a_failed_signature_is_filled_and_later_withdrawals_are_mined() {
    // The memory backend injects the failure; the chain is the shared anvil.
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn KeyBackend> = memory.clone();
    let first_block = block_number(&rpc_url).await;
    let (key, address) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), backend).await;

    // The first withdrawal takes nonce 0 and waits in KMS; the second takes nonce 1; then the first
    // signature fails, leaving 0 free below 1.
    let latency = Duration::from_millis(700);
    memory.set_faults(Faults { latency, ..Faults::default() });
    let run = unique("gap");
    let (_, first) = api.post(&withdrawal("gap-1", recipient(&run, 1), "ETH", "1000")).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    memory.set_faults(Faults { latency, failing_signatures: 1, ..Faults::default() });
    let (_, second) = api.post(&withdrawal("gap-2", recipient(&run, 2), "ETH", "2000")).await;

    let failed = api.settled(first["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("InjectedFault"), "{failed}");
    let mined = api.settled(second["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!((mined["status"].as_str(), mined["nonce"].as_u64()), (Some("confirmed"), Some(1)), "{mined}");

    let on_chain = transactions_from(&rpc_url, address, first_block).await;
    assert_eq!(on_chain.keys().copied().collect::<Vec<_>>(), [0, 1]);
    assert_eq!((on_chain[&0].0, on_chain[&0].1), (address, U256::ZERO), "nonce 0 is a zero-value self-transfer");
    assert_eq!((on_chain[&1].0, on_chain[&1].1), (recipient(&run, 2), U256::from(2000)));
    assert!(api.metrics().await.contains("ethkms_nonce_gaps_filled_total 1"));
    let audit = std::fs::read_to_string(&paths.audit).unwrap();
    assert!(audit.contains("\"method\":\"gap_fill\""), "the gap fill's signature is audited");
}

const COUNT: u64 = 60;

fn crash_amount(index: u64) -> String {
    (1_000_000 + index).to_string()
}

fn crash_body(index: u64) -> Value {
    withdrawal(&format!("crash-{index}"), recipient("crash", index), "ETH", &crash_amount(index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_accepted_withdrawal_is_mined_exactly_once() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    // One-second blocks: withdrawals are still in flight when the server is killed.
    let Some(anvil) = Anvil::start(&["--block-time", "1"]).await else { return };
    let (key, address) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config_path = paths.journal.with_extension("toml");
    std::fs::write(&config_path, configuration(&listen, &anvil.url, &key, &paths)).unwrap();
    let url = format!("http://{listen}");
    let api = Api { url: url.clone(), http: reqwest::Client::new() };

    let mut server = Server::start(&config_path, &kms_endpoint, &url).await;
    let (accepted_sender, mut accepted_receiver) = tokio::sync::mpsc::unbounded_channel();
    let posting = {
        let api = Api { url: url.clone(), http: reqwest::Client::new() };
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            futures_util::stream::iter(0..COUNT)
                .for_each_concurrent(2, |index| {
                    let (api, accepted_sender) = (&api, accepted_sender.clone());
                    async move {
                        let response = api
                            .http
                            .post(format!("{}/v1/withdrawals", api.url))
                            .bearer_auth(TOKEN)
                            .json(&crash_body(index))
                            .send()
                            .await;
                        if let Ok(response) = response
                            && response.status().as_u16() == 202
                            && let Ok(answer) = response.json::<Value>().await
                        {
                            let _ = accepted_sender.send((index, answer["id"].as_str().unwrap().to_owned()));
                        }
                    }
                })
                .await;
        })
    };
    // Killed once some withdrawals have reached the node (and wait for a block) while others are
    // still being posted.
    let mut accepted = BTreeMap::new();
    let started = Instant::now();
    loop {
        while let Ok((index, id)) = accepted_receiver.try_recv() {
            accepted.insert(index, id);
        }
        let mut submitted = false;
        for id in accepted.values().take(4) {
            submitted |= api.get(id).await["status"] == "submitted";
        }
        if submitted {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no withdrawal reached the node");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_9();
    posting.await.unwrap();
    while let Ok((index, id)) = accepted_receiver.try_recv() {
        accepted.insert(index, id);
    }

    // The crash caught withdrawals in flight.
    let journal = SqliteJournal::open(&paths.journal).unwrap();
    let unfinished = journal.unfinished(None).await.unwrap();
    journal.close();
    assert!(!unfinished.is_empty(), "the server was killed with no withdrawal in flight");
    let mut statuses = BTreeMap::new();
    for withdrawal in &unfinished {
        *statuses.entry(withdrawal.status.as_str()).or_insert(0) += 1;
    }
    eprintln!("killed with {} accepted answers received; unfinished in the journal: {statuses:?}", accepted.len());

    // Restarted, the client sends every request again with its idempotency key.
    let mut server = Server::start(&config_path, &kms_endpoint, &url).await;
    let mut ids = BTreeMap::new();
    for index in 0..COUNT {
        let (status, answer) = api.post(&crash_body(index)).await;
        let id = answer["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
        if let Some(before) = accepted.get(&index) {
            assert_eq!((status, &id), (200, before), "accepted before the crash: the same withdrawal");
        } else {
            assert!(status == 200 || status == 202, "{answer}");
        }
        ids.insert(index, id);
    }
    for id in ids.values() {
        let settled = api.settled(id, Duration::from_secs(90)).await;
        assert_eq!(settled["status"], "confirmed", "{settled}");
    }

    // On chain: nonces 0..N without a gap or a repeat; each withdrawal paid once; the rest gap fills.
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.keys().copied().collect::<Vec<_>>(), (0..mined.len() as u64).collect::<Vec<_>>());
    let mut paid = BTreeMap::new();
    for (to, value, _) in mined.values() {
        if *to == address {
            assert_eq!(*value, U256::ZERO, "a transfer to the key itself is a zero-value gap fill");
        } else {
            *paid.entry(*to).or_insert(0u32) += 1;
        }
    }
    for index in 0..COUNT {
        assert_eq!(paid.get(&recipient("crash", index)), Some(&1), "withdrawal {index} paid once");
        assert_eq!(balance(&anvil.url, recipient("crash", index)).await, crash_amount(index).parse::<U256>().unwrap());
    }
    assert_eq!(paid.len() as u64, COUNT);
    let verified = ethkms::audit::verify(&paths.audit).unwrap();
    assert!(verified.records >= COUNT, "{verified:?}");
    let audit = std::fs::read_to_string(&paths.audit).unwrap();
    for (_, _, hash) in mined.values() {
        assert!(audit.contains(hash.as_str()), "mined transaction {hash} has no signature record");
    }

    // SIGTERM: a graceful stop, which closes the journal (a new server can open it at once).
    let terminated = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(terminated.success());
    assert!(server.child.wait().unwrap().success(), "the server exits 0 after SIGTERM");
    SqliteJournal::open(&paths.journal).unwrap().close();
}
