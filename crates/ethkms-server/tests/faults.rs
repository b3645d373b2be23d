//! The exactly-once campaign: withdrawals through a fault-injecting JSON-RPC proxy between the server
//! binary and anvil — transactions forwarded and then answered with an unfamiliar error, 502/503 answers,
//! dropped connections — with `kill -9` restarts of the server, one of them during an outage of the node.
//! Every withdrawal must end confirmed, each recipient paid exactly its amount once (read from anvil
//! directly), the key's nonces contiguous, and any other transaction of the key a zero-value transfer to
//! itself or a sweep. Meanwhile customers deposit ether to addresses the service handed out, and the
//! service's sweeper sweeps them through the same engine (every second, a few addresses per sweep): every
//! deposit must end listed once and swept, the treasury holding exactly their sum, and every sweep the key
//! sent named by the deposits it swept — none sent twice.
//!
//! The campaign runs on each journal: SQLite (the embedded default) and PostgreSQL (one replica, with a
//! short lease, on a database of its own; skipped without `ETHKMS_TEST_POSTGRES_URL`, failing in CI).
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

use alloy_primitives::U256;
use common::deposit_campaign::DepositCampaign;
use common::exactly_once::assert_paid_exactly_once_besides;
use common::replicas::replica_section;
use common::*;
use ethkms_server::journal::{JournalStore as _, SqliteJournal};
use ethkms_test_support::postgres::TestDatabase;
use ethkms_test_support::rpc_proxy::{Faults, RpcProxy};
use serde_json::Value;

/// The journal a campaign's server keeps.
enum Journal {
    /// The SQLite file of the campaign's [`Paths`].
    Sqlite,
    /// PostgreSQL: a database of the campaign's own, one replica.
    Postgres(TestDatabase),
}

impl Journal {
    /// Which journal a run of [`campaign`] uses, by name (the tests' names say it too).
    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The server's configuration: [`configuration`] with this journal (and, for PostgreSQL, the one
    /// replica's section: a short lease, so that a restarted server takes its key back soon whether or not
    /// it counts as the same holder).
    fn configuration(&self, listen: &str, rpc_url: &str, key: &str, paths: &Paths) -> String {
        match self {
            Self::Sqlite => configuration(listen, rpc_url, key, paths),
            Self::Postgres(database) => {
                configuration_with_journal(listen, rpc_url, key, paths, &database.url) + &replica_section("solo", 2)
            }
        }
    }

    /// The journal's unfinished rows by kind and status, read while the server is down.
    async fn unfinished(&self, paths: &Paths) -> BTreeMap<String, usize> {
        let mut statuses = BTreeMap::new();
        match self {
            Self::Sqlite => {
                let journal = SqliteJournal::open(&paths.journal).unwrap();
                for row in journal.unfinished(None).await.unwrap() {
                    *statuses.entry(format!("{} {}", row.kind.as_str(), row.status.as_str())).or_default() += 1;
                }
                journal.close();
            }
            Self::Postgres(database) => {
                // What `JournalStore::unfinished` returns: not final, or a mined cancellation not yet confirmed.
                let query = "SELECT kind || ' ' || status, count(*) FROM withdrawals WHERE NOT confirmed \
                    AND status NOT IN ('confirmed', 'failed') AND NOT (status = 'cancelled' AND block_number IS NULL) \
                    GROUP BY kind, status";
                for row in database.connect().await.query(query, &[]).await.unwrap() {
                    statuses.insert(row.get(0), usize::try_from(row.get::<_, i64>(1)).unwrap());
                }
            }
        }
        statuses
    }
}

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

/// Deposits per seed: one for every five withdrawals, to a tenth as many customers.
fn deposit_count() -> u64 {
    count() / 5
}

fn body(seed: u64, index: u64) -> Value {
    let to = recipient(&format!("faults-{seed}"), index);
    withdrawal(&format!("faults-{seed}-{index}"), to, "ETH", &amount(seed, index).to_string())
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
async fn every_withdrawal_is_paid_exactly_once_through_faults_crashes_and_an_outage_on_sqlite() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    for seed in seeds() {
        eprintln!(
            "fault campaign (sqlite): seed {seed}, {} withdrawals (reproduce with ETHKMS_FAULT_SEEDS={seed})",
            count()
        );
        campaign(seed, &kms_endpoint, &backend, &Journal::Sqlite).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_withdrawal_is_paid_exactly_once_through_faults_crashes_and_an_outage_on_postgres() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    for seed in seeds() {
        let Some(database) = TestDatabase::create().await else { return };
        eprintln!(
            "fault campaign (postgres): seed {seed}, {} withdrawals (reproduce with ETHKMS_FAULT_SEEDS={seed})",
            count()
        );
        campaign(seed, &kms_endpoint, &backend, &Journal::Postgres(database)).await;
    }
}

async fn campaign(seed: u64, kms_endpoint: &str, backend: &Arc<dyn ethkms::backend::KeyBackend>, journal: &Journal) {
    let count = count();
    let journal_name = journal.name();
    let Some(anvil) = Anvil::start(&["--block-time", "1"]).await else { return };
    let faults = Faults { forwarded_then_error: 0.15, bad_gateway: 0.05, drop_connection: 0.05 };
    let proxy = RpcProxy::start(&anvil.url, seed, faults).await.unwrap();
    let (key, address) = funded_key(backend, &anvil.url).await;
    let run = format!("faults-{journal_name}-{seed}");
    let mut deposits = DepositCampaign::deploy(&anvil.url, address, &run).await;
    let paths = Paths::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config_path = paths.journal.with_extension("toml");
    let text = journal
        .configuration(&listen, proxy.url().trim_end_matches('/'), &key, &paths)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 3")
        .replace("confirmations = 1", "confirmations = 2")
        + &deposits.configuration(4);
    std::fs::write(&config_path, text).unwrap();
    let url = format!("http://{listen}");
    let log = paths.journal.with_extension("log");
    let mut server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;
    deposits
        .hand_out(&Api { url: url.clone(), http: reqwest::Client::new() }, &run, (count / 10).max(1) as usize)
        .await;

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
    // Deposits, sent to anvil directly (never through the proxy) while the withdrawals and faults go on.
    let depositing = {
        let (accepted, rpc_url) = (Arc::clone(&accepted), anvil.url.clone());
        tokio::spawn(async move {
            for index in 0..deposit_count() {
                deposits.deposit(&rpc_url, seed, index).await;
                // Spread over the withdrawals' posting, crashes and outage included.
                let due = usize::try_from((index + 1) * count / (deposit_count() + 1)).unwrap();
                while accepted.load(Ordering::Relaxed) < due {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            deposits
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
    let caught = journal.unfinished(&paths).await;
    assert!(caught.values().sum::<usize>() > 0, "{journal_name} seed {seed}: the first crash caught nothing in flight");
    eprintln!("fault campaign ({journal_name}): seed {seed}: killed with {caught:?} unfinished");
    server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;
    // Crash 2, during an outage of the node: the restarted server accepts withdrawals while it cannot
    // recover, and processes them once the node is back.
    wait_for(usize::try_from(2 * count / 3).unwrap()).await;
    proxy.set_outage(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill_9();
    let caught = journal.unfinished(&paths).await;
    eprintln!("fault campaign ({journal_name}): seed {seed}: killed during the outage with {caught:?} unfinished");
    server = Server::start_logging(&config_path, kms_endpoint, &url, &log).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_outage(false);
    posting.await.unwrap();
    let deposits = depositing.await.unwrap();

    let api = Api { url: url.clone(), http: reqwest::Client::new() };
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len() as u64, count);
    for (index, id) in &ids {
        let settled = api.settled(id, Duration::from_secs(180)).await;
        assert_eq!(
            settled["status"],
            "confirmed",
            "{journal_name} seed {seed}, withdrawal {index}: {settled}; server log: {}",
            log.display()
        );
    }

    // On anvil directly: nonces 0..N without gap or repeat, each recipient paid once and exactly, and
    // every other transaction a zero-value transfer to the key itself.
    let payments: Vec<_> =
        (0..count).map(|index| (recipient(&format!("faults-{seed}"), index), amount(seed, index))).collect();
    let context = format!("{journal_name} seed {seed}");
    let sweeps =
        deposits.assert_swept_exactly(&api, &anvil.url, address, Duration::from_secs(120), &context, &log).await;
    let mined = assert_paid_exactly_once_besides(&anvil.url, address, &payments, &[deposits.factory], &context).await;
    let verified = ethkms::audit::verify(&paths.audit).unwrap();
    assert!(verified.records >= count, "{verified:?}");
    let stats = proxy.stats();
    eprintln!(
        "fault campaign ({journal_name}): seed {seed} passed: {count} withdrawals confirmed, {} transactions mined ({} not payments, \
         {sweeps} of them sweeps); {} deposits swept exactly; proxy: {stats:?}",
        mined.len(),
        mined.len() as u64 - count,
        deposit_count()
    );
    assert!(stats.forwarded_then_error > 0 && stats.outage_refused > 0, "the faults happened: {stats:?}");
    // The node's URL (which can carry an API key) appears nowhere in the server's log, errors included.
    let upstream = proxy.url().trim_start_matches("http://").trim_end_matches('/');
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("retrying"), "the log has the retries");
    let leaked: Vec<&str> = text.lines().filter(|line| line.contains(upstream)).take(3).collect();
    assert!(leaked.is_empty(), "the upstream URL {upstream} is in the server log {}: {leaked:#?}", log.display());
    assert!(server.terminate().success(), "the server exits 0 after SIGTERM");
}
