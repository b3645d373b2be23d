//! The exactly-once campaign: withdrawals through a fault-injecting JSON-RPC proxy between the server
//! binary and anvil — transactions forwarded and then answered with an unfamiliar error, 502/503 answers,
//! dropped connections — with `kill -9` restarts of the server, one of them during an outage of the node.
//! Every withdrawal must end confirmed, each recipient paid exactly its amount once (read from anvil
//! directly), the key's nonces contiguous, and any other transaction of the key a zero-value transfer to
//! itself.
//!
//! Seeds come from `ETHKMS_FAULT_SEEDS` (comma-separated; default `1,2,3`) and the number of withdrawals per
//! seed from `ETHKMS_FAULT_WITHDRAWALS` (default 150); `cargo xtask soak` runs many more. Each seed is
//! printed; a failing seed is re-run with `ETHKMS_FAULT_SEEDS=<seed>` (the proxy's decisions follow the
//! seed; the interleaving with the server's tasks varies).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use common::*;
use ethkms_server::journal::{JournalStore as _, SqliteJournal};
use ethkms_test_support::rpc_proxy::{Faults, RpcProxy};
use serde_json::Value;

fn seeds() -> Vec<u64> {
    std::env::var("ETHKMS_FAULT_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|seed| seed.trim().parse().expect("ETHKMS_FAULT_SEEDS: comma-separated integers"))
        .collect()
}

fn count() -> u64 {
    std::env::var("ETHKMS_FAULT_WITHDRAWALS").map_or(150, |count| count.parse().expect("ETHKMS_FAULT_WITHDRAWALS"))
}

fn amount(seed: u64, index: u64) -> U256 {
    U256::from(1_000_000 + seed * 10_000 + index)
}

fn body(seed: u64, index: u64) -> Value {
    let to = recipient(&format!("faults-{seed}"), index);
    withdrawal(&format!("faults-{seed}-{index}"), to, "ETH", &amount(seed, index).to_string())
}

/// The journal's unfinished rows by status, read while the server is down.
async fn unfinished(paths: &Paths) -> BTreeMap<&'static str, usize> {
    let journal = SqliteJournal::open(&paths.journal).unwrap();
    let mut statuses = BTreeMap::new();
    for row in journal.unfinished(None).await.unwrap() {
        *statuses.entry(row.status.as_str()).or_default() += 1;
    }
    journal.close();
    statuses
}

/// Posts withdrawal `index` until the (possibly restarting) server answers 202 or 200.
async fn post_until_answered(api: &Api, seed: u64, index: u64) -> String {
    let started = Instant::now();
    loop {
        let response = api
            .http
            .post(format!("{}/v1/withdrawals", api.url))
            .bearer_auth(TOKEN)
            .json(&body(seed, index))
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status().as_u16();
            if let Ok(answer) = response.json::<Value>().await
                && (status == 200 || status == 202)
            {
                return answer["id"].as_str().unwrap().to_owned();
            }
            assert!(status >= 500, "withdrawal {index}: status {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "withdrawal {index} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_withdrawal_is_paid_exactly_once_through_faults_crashes_and_an_outage() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    for seed in seeds() {
        eprintln!("fault campaign: seed {seed}, {} withdrawals (reproduce with ETHKMS_FAULT_SEEDS={seed})", count());
        campaign(seed, &kms_endpoint, &backend).await;
    }
}

async fn campaign(seed: u64, kms_endpoint: &str, backend: &Arc<dyn ethkms::backend::KeyBackend>) {
    let count = count();
    let Some(anvil) = Anvil::start(&["--block-time", "1"]).await else { return };
    let faults = Faults { forwarded_then_error: 0.15, bad_gateway: 0.05, drop_connection: 0.05 };
    let proxy = RpcProxy::start(&anvil.url, seed, faults).await.unwrap();
    let (key, address) = funded_key(backend, &anvil.url).await;
    let paths = Paths::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config_path = paths.journal.with_extension("toml");
    let text = configuration(&listen, proxy.url().trim_end_matches('/'), &key, &paths)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 3")
        .replace("confirmations = 1", "confirmations = 2");
    std::fs::write(&config_path, text).unwrap();
    let url = format!("http://{listen}");
    let log = paths.journal.with_extension("log");
    let mut server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;

    let ids: Arc<std::sync::Mutex<BTreeMap<u64, String>>> = Arc::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    let posting = {
        let (ids, accepted, url) = (Arc::clone(&ids), Arc::clone(&accepted), url.clone());
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let api = Api { url, http: reqwest::Client::new() };
            futures_util::stream::iter(0..count)
                .for_each_concurrent(4, |index| {
                    let (api, ids, accepted) = (&api, &ids, &accepted);
                    async move {
                        let id = post_until_answered(api, seed, index).await;
                        ids.lock().unwrap().insert(index, id);
                        accepted.fetch_add(1, Ordering::Relaxed);
                        // About 50 a second: the crashes and the outage land while withdrawals are being
                        // processed, not only posted.
                        tokio::time::sleep(Duration::from_millis(80)).await;
                    }
                })
                .await;
        })
    };
    let wait_for = |target: usize| {
        let accepted = Arc::clone(&accepted);
        async move {
            let started = Instant::now();
            while accepted.load(Ordering::Relaxed) < target {
                assert!(started.elapsed() < Duration::from_secs(120), "stuck before {target} accepted");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Crash 1: in the middle of the flow.
    wait_for(usize::try_from(count / 3).unwrap()).await;
    server.kill_9();
    let caught = unfinished(&paths).await;
    assert!(caught.values().sum::<usize>() > 0, "seed {seed}: the first crash caught nothing in flight");
    eprintln!("fault campaign: seed {seed}: killed with {caught:?} unfinished");
    server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;
    // Crash 2, during an outage of the node: the restarted server accepts withdrawals while it cannot
    // recover, and processes them once the node is back.
    wait_for(usize::try_from(2 * count / 3).unwrap()).await;
    proxy.set_outage(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill_9();
    eprintln!("fault campaign: seed {seed}: killed during the outage with {:?} unfinished", unfinished(&paths).await);
    server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_outage(false);
    posting.await.unwrap();

    let api = Api { url: url.clone(), http: reqwest::Client::new() };
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len() as u64, count);
    for (index, id) in &ids {
        let settled = api.settled(id, Duration::from_secs(180)).await;
        assert_eq!(
            settled["status"],
            "confirmed",
            "seed {seed}, withdrawal {index}: {settled}; server log: {}",
            log.display()
        );
    }

    // On anvil directly: nonces 0..N without gap or repeat, each recipient paid once and exactly, and
    // every other transaction a zero-value transfer to the key itself.
    let mined = transactions_from(&anvil.url, address, 0).await;
    assert_eq!(mined.keys().copied().collect::<Vec<_>>(), (0..mined.len() as u64).collect::<Vec<_>>(), "seed {seed}");
    let mut paid: BTreeMap<Address, u32> = BTreeMap::new();
    for (to, value, hash) in mined.values() {
        if *to == address {
            assert_eq!(*value, U256::ZERO, "seed {seed}: {hash} moved value to the key itself");
        } else {
            *paid.entry(*to).or_default() += 1;
        }
    }
    for index in 0..count {
        let to = recipient(&format!("faults-{seed}"), index);
        assert_eq!(paid.get(&to), Some(&1), "seed {seed}: withdrawal {index} paid {:?} times", paid.get(&to));
        assert_eq!(balance(&anvil.url, to).await, amount(seed, index), "seed {seed}: withdrawal {index}'s amount");
    }
    assert_eq!(paid.len() as u64, count, "seed {seed}: payments to strangers");
    let verified = ethkms::audit::verify(&paths.audit).unwrap();
    assert!(verified.records >= count, "{verified:?}");
    let stats = proxy.stats();
    eprintln!(
        "fault campaign: seed {seed} passed: {count} withdrawals confirmed, {} transactions mined ({} not payments); \
         proxy: {stats:?}",
        mined.len(),
        mined.len() as u64 - count
    );
    assert!(stats.forwarded_then_error > 0 && stats.outage_refused > 0, "the faults happened: {stats:?}");
    // The node's URL (which can carry an API key) appears nowhere in the server's log, errors included.
    let upstream = proxy.url().trim_start_matches("http://").trim_end_matches('/');
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("retrying"), "the log has the retries");
    assert!(!text.contains(upstream), "the upstream URL {upstream} is in the server log {}", log.display());
    let terminated = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    assert!(terminated.unwrap().success());
    assert!(server.child.wait().unwrap().success(), "the server exits 0 after SIGTERM");
}
