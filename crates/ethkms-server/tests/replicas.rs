//! Several `ethkms-server` replicas on one PostgreSQL journal (issue 13), as processes, against LocalStack
//! KMS and an anvil of each test's own; clients post to every replica at random. Each key is processed by
//! the one replica holding its lease; whatever happens to a replica — `kill -9`, `SIGSTOP` for longer than
//! its lease, PostgreSQL going down under it — every withdrawal ends confirmed, paid once and exactly
//! (read on the node), with the key's nonces contiguous, every nonce's attempts in the journal belonging to
//! one withdrawal, and nothing broadcast that the journal does not hold. The keys are shared out among the
//! replicas (handed over under load, too) and again when one leaves or joins.
//!
//! Seeds come from `ETHKMS_REPLICA_SEEDS` (comma-separated; default `1`) and the number of withdrawals per
//! seed from `ETHKMS_REPLICA_WITHDRAWALS` (default: 300 for the three-replica run, 120 for the others).
//! Each seed is printed; a failing one is re-run with `ETHKMS_REPLICA_SEEDS=<seed>` (the seed picks the
//! replica each withdrawal goes to; the interleaving with the replicas' tasks varies).
//!
//! They need PostgreSQL (`ETHKMS_TEST_POSTGRES_URL`; the restart also `ETHKMS_TEST_POSTGRES_DATA`, from
//! `cargo xtask services up`): skipped without it, failing in CI. They run one at a time ([`SERIAL`];
//! nextest's `shared-postgres` group): one restarts the shared server, and each asserts takeover times that
//! a machine busy with another test's replicas would stretch.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::replicas::{Attempt, Cluster, LEASE_SECONDS, http_client, metric_sum, now_ms, raw_transaction_hash};
use common::workload::{Posting, Workload, pick};
use common::*;
use ethkms_test_support::postgres::ServerControl;

/// One test at a time, also within this binary (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How much later than the lease a takeover may come: the lease runs out at most `LEASE_SECONDS` after
/// the last renewal, then another replica must notice (its own polling) and win the row; the rest is
/// slack for a loaded two-core machine and for our own scraping of the metrics.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(3);

/// How long all withdrawals may take to be confirmed once posted.
const SETTLE: Duration = Duration::from_secs(180);

fn seeds() -> Vec<u64> {
    std::env::var("ETHKMS_REPLICA_SEEDS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|seed| seed.trim().parse().expect("ETHKMS_REPLICA_SEEDS: comma-separated integers"))
        .collect()
}

fn count(default: u64) -> u64 {
    std::env::var("ETHKMS_REPLICA_WITHDRAWALS")
        .map_or(default, |count| count.parse().expect("ETHKMS_REPLICA_WITHDRAWALS"))
}

fn lease() -> Duration {
    Duration::from_secs(LEASE_SECONDS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_pay_every_withdrawal_of_two_keys_exactly_once() {
    let _serial = SERIAL.lock().await;
    for seed in seeds() {
        let count = count(300);
        eprintln!(
            "replicas: seed {seed}, {count} withdrawals of two keys over three replicas (ETHKMS_REPLICA_SEEDS={seed})"
        );
        let Some(mut cluster) = Cluster::start(3, &["hot", "cold"], LEASE_SECONDS).await else { return };
        let workload = Workload::new("three-replicas", seed, count, &["hot", "cold"]);
        let posting = Posting::start(&workload, cluster.urls(), 6, Duration::from_millis(20));
        posting.wait_accepted(count, Duration::from_secs(300)).await;
        let accepted_by = posting.accepted_by();
        let ids = posting.finish().await;
        // Any replica accepts withdrawals of any key.
        assert!(accepted_by.iter().all(|accepted| *accepted > 0), "seed {seed}: accepted per replica {accepted_by:?}");

        cluster.assert_all_confirmed(&workload, &ids, SETTLE).await;
        let mined = cluster.assert_exactly_once(&workload).await;
        let mut acquisitions = 0.0;
        for index in 0..cluster.replicas.len() {
            acquisitions += cluster.metric(index, "ethkms_lease_acquisitions_total", &[]).await.unwrap();
        }
        assert!(acquisitions >= 2.0, "seed {seed}: {acquisitions} lease acquisitions for two keys");
        let mut holders = HashSet::new();
        for key in ["hot", "cold"] {
            let (holder, _) = cluster.wait_for_holder(key, Duration::from_secs(10), None).await;
            eprintln!("replicas: seed {seed}: {key} held by {}", cluster.replicas[holder].name);
            holders.insert(holder);
        }
        assert_eq!(holders.len(), 2, "seed {seed}: the two keys are shared out to two replicas");
        eprintln!(
            "replicas: seed {seed} passed: accepted per replica {accepted_by:?}, mined per key {:?}",
            mined.iter().map(|(key, mined)| (key, mined.len())).collect::<Vec<_>>()
        );
        cluster.terminate_all().await;
    }
}

/// How many keys each replica holds (by index; 0 for one not serving).
async fn shares(cluster: &Cluster, keys: &[&str]) -> Vec<usize> {
    let mut counts = vec![0; cluster.replicas.len()];
    for key in keys {
        for holder in cluster.holders(key).await {
            counts[holder] += 1;
        }
    }
    counts
}

/// Waits until the replicas' counts of held keys, smallest first, are `expected`; how long it took.
async fn wait_for_shares(cluster: &Cluster, keys: &[&str], expected: &[usize], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut counts = shares(cluster, keys).await;
        counts.sort_unstable();
        if counts == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "keys held {counts:?}, not {expected:?}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shared_out_among_replicas_and_again_when_one_leaves_or_joins() {
    let _serial = SERIAL.lock().await;
    let keys = ["hot", "cold", "warm", "cool"];
    // Started one after another: the first takes every key, then hands them over one at a time.
    let Some(mut cluster) = Cluster::start(3, &keys, LEASE_SECONDS).await else { return };
    let passes = |count: u32| lease() * count;
    let took = wait_for_shares(&cluster, &keys, &[1, 1, 2], passes(6)).await;
    eprintln!("replicas: four keys shared out 2/1/1 among three replicas after {took:?}");
    let mut handovers = 0.0;
    for index in 0..3 {
        handovers += cluster.metric(index, "ethkms_lease_handovers_total", &[]).await.unwrap();
    }
    assert!(handovers >= 2.0, "{handovers} hand-overs: the first replica held all four keys");

    // A replica that stops hands its keys over; the two left hold two each.
    let most = shares(&cluster, &keys).await.iter().enumerate().max_by_key(|(_, count)| **count).unwrap().0;
    assert!(cluster.replicas[most].terminate().success(), "exit 0 after SIGTERM");
    let took = wait_for_shares(&cluster, &keys, &[0, 2, 2], lease() + TAKEOVER_MARGIN).await;
    eprintln!("replicas: {} stopped; its keys taken over after {took:?}", cluster.replicas[most].name);

    // It comes back and gets its share again.
    cluster.replicas[most].start().await;
    cluster.wait_ready(most, Duration::from_secs(30)).await;
    let took = wait_for_shares(&cluster, &keys, &[1, 1, 2], passes(6)).await;
    eprintln!("replicas: {} back; keys shared out 2/1/1 again after {took:?}", cluster.replicas[most].name);
    for key in keys {
        let (holder, _) = cluster.wait_for_holder(key, Duration::from_secs(5), None).await;
        let lease = cluster.lease(key).await.unwrap();
        assert_eq!(lease.holder.as_deref(), Some(cluster.replicas[holder].name.as_str()), "{key}: {lease:?}");
    }
    cluster.terminate_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_s_key_moves_to_another_replica_within_the_lease() {
    let _serial = SERIAL.lock().await;
    for seed in seeds() {
        let count = count(120);
        eprintln!("replicas: kill -9 of the owner, seed {seed}, {count} withdrawals (ETHKMS_REPLICA_SEEDS={seed})");
        let Some(mut cluster) = Cluster::start(3, &["hot"], LEASE_SECONDS).await else { return };
        let workload = Workload::new("kill-owner", seed, count, &["hot"]);
        let posting = Posting::start(&workload, cluster.urls(), 4, Duration::from_millis(50));
        posting.wait_accepted(count / 3, Duration::from_secs(120)).await;

        let (owner, _) = cluster.wait_for_holder("hot", Duration::from_secs(30), None).await;
        let before = cluster.lease("hot").await.expect("the owner's lease row");
        cluster.replicas[owner].kill_9();
        let killed_at = Instant::now();
        let limit = lease() + TAKEOVER_MARGIN;
        let (successor, _) = cluster.wait_for_holder("hot", limit + Duration::from_secs(10), Some(owner)).await;
        let took = killed_at.elapsed();
        let (old, new) = (cluster.replicas[owner].name.clone(), cluster.replicas[successor].name.clone());
        eprintln!("replicas: seed {seed}: {old} killed, {new} took hot over after {took:?}");
        assert!(took <= limit, "seed {seed}: hot moved after {took:?}, more than the lease and {TAKEOVER_MARGIN:?}");
        let after = cluster.lease("hot").await.unwrap();
        assert!(after.epoch > before.epoch, "seed {seed}: the takeover bumps the epoch: {before:?} then {after:?}");
        assert_eq!(after.holder.as_deref(), Some(new.as_str()), "seed {seed}: {after:?}");

        // The killed replica comes back as a follower while the clients go on.
        cluster.replicas[owner].start().await;
        cluster.wait_ready(owner, Duration::from_secs(30)).await;
        let ids = posting.finish().await;
        cluster.assert_all_confirmed(&workload, &ids, SETTLE).await;
        let mined = cluster.assert_exactly_once(&workload).await;
        eprintln!("replicas: seed {seed} passed: {count} confirmed, {} transactions mined", mined["hot"].len());
        cluster.terminate_all().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_rejoins_as_a_follower() {
    let _serial = SERIAL.lock().await;
    for seed in seeds() {
        let count = count(120);
        eprintln!("replicas: SIGSTOP of the owner, seed {seed}, {count} withdrawals (ETHKMS_REPLICA_SEEDS={seed})");
        let Some(mut cluster) = Cluster::start(3, &["hot"], LEASE_SECONDS).await else { return };
        let workload = Workload::new("pause-owner", seed, count, &["hot"]);
        let posting = Posting::start(&workload, cluster.urls(), 4, Duration::from_millis(50));
        posting.wait_accepted(count / 3, Duration::from_secs(120)).await;

        let (owner, _) = cluster.wait_for_holder("hot", Duration::from_secs(30), None).await;
        let old_lease = cluster.lease("hot").await.expect("the owner's lease row");
        cluster.replicas[owner].sigstop();
        let paused_at = Instant::now();
        let limit = lease() + TAKEOVER_MARGIN;
        let (successor, _) = cluster.wait_for_holder("hot", limit + Duration::from_secs(10), Some(owner)).await;
        let took = paused_at.elapsed();
        // Stamped after the takeover was seen: any attempt of the old epoch signed later is a fencing failure.
        let takeover_ms = now_ms();
        let (old, new) = (cluster.replicas[owner].name.clone(), cluster.replicas[successor].name.clone());
        eprintln!("replicas: seed {seed}: {old} paused, {new} took hot over after {took:?}");
        assert!(took <= limit, "seed {seed}: hot moved after {took:?}, more than the lease and {TAKEOVER_MARGIN:?}");
        let new_lease = cluster.lease("hot").await.unwrap();
        assert!(new_lease.epoch > old_lease.epoch, "seed {seed}: {old_lease:?} then {new_lease:?}");

        // What was stored under the old owner's epoch, and what it had sent, when it lost the lease: the
        // paused process cannot add to either until it runs again, and then it must not.
        let fenced_epochs = |attempt: &Attempt| attempt.key == "hot" && attempt.epoch <= old_lease.epoch;
        let stored_before: HashSet<_> = cluster.attempts().await.into_iter().filter(fenced_epochs).collect();
        let sent_before = cluster.replicas[owner].proxy.raw_transactions().len();

        // The successor makes progress while the old owner is still paused.
        let confirmed_at_takeover = cluster.confirmed("hot").await;
        let remaining = i64::try_from(count).unwrap() - confirmed_at_takeover;
        assert!(remaining > 0, "seed {seed}: everything was confirmed before the pause; nothing to take over");
        let progress = remaining.min(5);
        let started = Instant::now();
        while cluster.confirmed("hot").await < confirmed_at_takeover + progress {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "seed {seed}: {new} confirmed nothing while {old} was paused"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let confirmed_meanwhile = cluster.confirmed("hot").await - confirmed_at_takeover;
        while paused_at.elapsed() <= lease() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.replicas[owner].sigcont();
        eprintln!(
            "replicas: seed {seed}: {old} resumed after {:?}; {confirmed_meanwhile} confirmed by {new} meanwhile",
            paused_at.elapsed()
        );

        // The old owner finds out it lost the lease: its writes are fenced, or its renewal fails.
        let started = Instant::now();
        loop {
            let losses = cluster.metric(owner, "ethkms_lease_losses_total", &[]).await.unwrap_or_default();
            let fenced = cluster.metric(owner, "ethkms_fenced_writes_total", &[]).await.unwrap_or_default();
            if losses + fenced >= 1.0 {
                eprintln!("replicas: seed {seed}: {old} counts {losses} lease losses and {fenced} fenced writes");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "seed {seed}: {old} shows no sign of being fenced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // It rejoins as a follower: it answers, and does not claim the key another replica holds.
        let started = Instant::now();
        loop {
            let held = cluster.metric(owner, "ethkms_lease_held", &[("key", "hot")]).await;
            let holders = cluster.holders("hot").await;
            if held == Some(0.0) && holders.len() == 1 && holders[0] != owner {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "seed {seed}: {old} holds {held:?}, holders {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let ids = posting.finish().await;
        cluster.assert_all_confirmed(&workload, &ids, SETTLE).await;
        // The old owner answers for withdrawals its successor paid.
        let last = &ids[&(count - 1)];
        let answer = cluster.replicas[owner].get(&cluster.http, &format!("/v1/withdrawals/{last}")).await;
        assert!(
            answer.as_ref().is_some_and(|(status, body)| *status == 200 && body.contains("confirmed")),
            "{answer:?}"
        );
        let mined = cluster.assert_exactly_once(&workload).await;

        // Fenced in the journal: nothing was added under the old epoch after the takeover, and no attempt
        // of the old epoch was signed after it.
        for attempt in cluster.attempts().await.iter().filter(|attempt| fenced_epochs(attempt)) {
            assert!(
                stored_before.contains(attempt),
                "seed {seed}: stored under the old epoch after the takeover: {attempt:?}"
            );
            assert!(
                attempt.signed_ms <= takeover_ms,
                "seed {seed}: signed after the takeover ({takeover_ms}): {attempt:?}"
            );
        }
        // Fenced on the wire: whatever the old owner sent after waking up it had stored before the takeover
        // (a rebroadcast of its own transaction at most), never a new transaction for a nonce — unless it
        // won the lease back later, fairly (a newer epoch than its successor's, in its own name).
        let stored_hashes: HashSet<&str> = stored_before.iter().map(|attempt| attempt.tx_hash.as_str()).collect();
        let attempts = cluster.attempts().await;
        for sent in &cluster.replicas[owner].proxy.raw_transactions()[sent_before..] {
            let hash = raw_transaction_hash(&sent.raw);
            let won_back = attempts.iter().any(|attempt| {
                attempt.tx_hash == hash
                    && attempt.epoch > new_lease.epoch
                    && attempt.replica.as_deref() == Some(old.as_str())
            });
            assert!(
                stored_hashes.contains(hash.as_str()) || won_back,
                "seed {seed}: {old} sent {hash} after losing the lease"
            );
        }
        eprintln!("replicas: seed {seed} passed: {count} confirmed, {} transactions mined", mined["hot"].len());
        cluster.terminate_all().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_postgres_going_down_and_restarting() {
    let _serial = SERIAL.lock().await;
    let Some(control) = ServerControl::from_env() else { return };
    for seed in seeds() {
        let count = count(120);
        eprintln!(
            "replicas: PostgreSQL down and restarted, seed {seed}, {count} withdrawals (ETHKMS_REPLICA_SEEDS={seed})"
        );
        let Some(mut cluster) = Cluster::start(3, &["hot", "cold"], LEASE_SECONDS).await else { return };
        let workload = Workload::new("postgres-restart", seed, count, &["hot", "cold"]);
        let posting = Posting::start(&workload, cluster.urls(), 4, Duration::from_millis(50));
        posting.wait_accepted(count / 3, Duration::from_secs(120)).await;

        // Down for a while: every replica says it has no journal. (`pg_ctl` blocks: off the runtime's
        // workers. The guard starts the server again if anything here fails.)
        let stopped = tokio::task::block_in_place(|| control.stop());
        let down_at = Instant::now();
        for index in 0..cluster.replicas.len() {
            let started = Instant::now();
            loop {
                let answer = cluster.readyz(index).await;
                if answer
                    .as_ref()
                    .is_some_and(|(status, body)| *status == 503 && body.contains("the journal does not answer"))
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "seed {seed}: r{} /readyz {answer:?} with PostgreSQL down",
                    index + 1
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(down_at.elapsed())).await;
        tokio::task::block_in_place(|| stopped.start());
        eprintln!("replicas: seed {seed}: PostgreSQL was down for {:?}", down_at.elapsed());
        for index in 0..cluster.replicas.len() {
            cluster.wait_ready(index, Duration::from_secs(60)).await;
        }

        // And a fast restart later on, under the clients.
        posting.wait_accepted(2 * count / 3, Duration::from_secs(120)).await;
        tokio::task::block_in_place(|| control.restart());
        for index in 0..cluster.replicas.len() {
            cluster.wait_ready(index, Duration::from_secs(60)).await;
        }

        let ids = posting.finish().await;
        cluster.assert_all_confirmed(&workload, &ids, SETTLE).await;
        let mined = cluster.assert_exactly_once(&workload).await;
        eprintln!(
            "replicas: seed {seed} passed: mined per key {:?}",
            mined.iter().map(|(key, mined)| (key, mined.len())).collect::<Vec<_>>()
        );
        cluster.terminate_all().await;
    }
}

/// The harness itself, on one server with a SQLite journal (what runs before the replicated journal
/// exists): a paused process answers nothing — the kernel still takes the connection — and answers what
/// was sent meanwhile once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_answers_nothing_until_it_is_resumed() {
    let _serial = SERIAL.lock().await;
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    let Some(anvil) = Anvil::start(&["--block-time", "1"]).await else { return };
    let (key, _) = funded_key(&backend, &anvil.url).await;
    let paths = Paths::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = paths.journal.with_extension("toml");
    std::fs::write(&config, configuration(&listen, &anvil.url, &key, &paths)).unwrap();
    let url = format!("http://{listen}");
    let mut server = Server::start_logging(&config, &kms_endpoint, &url, &paths.journal.with_extension("log")).await;
    let impatient = http_client();

    server.sigstop();
    let paused = impatient.get(format!("{url}/healthz")).send().await;
    assert!(paused.as_ref().is_err_and(reqwest::Error::is_timeout), "a paused server answered: {paused:?}");
    // A withdrawal sent while it is paused waits in the kernel's queue.
    let to = recipient("paused-server", 0);
    let api = Api { url: url.clone(), http: reqwest::Client::new() };
    let posting = tokio::spawn(async move { api.post(&withdrawal("paused-0", to, "ETH", "12345")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!posting.is_finished(), "answered while paused");

    server.sigcont();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), posting).await.unwrap().unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(impatient.get(format!("{url}/healthz")).send().await.is_ok_and(|response| response.status().is_success()));
    let api = Api { url, http: reqwest::Client::new() };
    let settled = api.settled(body["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(balance(&anvil.url, to).await, alloy_primitives::U256::from(12345));
    assert!(server.terminate().success(), "exit 0 after SIGTERM");
}

#[test]
fn metrics_are_summed_by_name_and_labels() {
    let text = "# TYPE ethkms_lease_held gauge\nethkms_lease_held{key=\"hot\"} 1\nethkms_lease_held{key=\"cold\"} 0\n\
                ethkms_lease_losses_total 2\nethkms_lease_losses_created 1.7e9\n\
                ethkms_fenced_writes_total{key=\"hot\"} 3\nethkms_fenced_writes_total{key=\"cold\"} 1\n# EOF\n";
    assert_eq!(metric_sum(text, "ethkms_lease_held", &[("key", "hot")]), Some(1.0));
    assert_eq!(metric_sum(text, "ethkms_lease_held", &[("key", "cold")]), Some(0.0));
    assert_eq!(metric_sum(text, "ethkms_lease_held", &[("key", "warm")]), None);
    assert_eq!(metric_sum(text, "ethkms_lease_losses_total", &[]), Some(2.0));
    assert_eq!(metric_sum(text, "ethkms_fenced_writes_total", &[]), Some(4.0));
}

#[test]
fn replica_picks_spread_and_change_between_tries() {
    let mut counts = [0_u32; 3];
    for index in 0..3000 {
        counts[pick(7, index, 0, 3)] += 1;
    }
    assert!(counts.iter().all(|count| (800..1200).contains(count)), "{counts:?}");
    let tries: HashSet<usize> = (0..20).map(|attempt| pick(7, 1, attempt, 3)).collect();
    assert_eq!(tries.len(), 3, "a withdrawal's tries go to every replica");
}
