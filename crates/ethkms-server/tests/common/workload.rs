//! The clients of the replica tests: a [`Workload`] (withdrawals over several keys, each to a fresh
//! recipient with an amount of its own) and [`Posting`], clients that post it to the replicas in the
//! background, each withdrawal to a replica picked by a seeded hash of the withdrawal and the try and, when
//! that one does not answer (killed, paused, journal down), to another pick, with the same idempotency key:
//! a withdrawal accepted by a replica that then died is found again, not repeated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use serde_json::Value;

use super::replicas::http_client;
use super::{TOKEN, recipient, withdrawal_from};

/// The withdrawals of one run: `count` of them, over `keys` in turn, each to a fresh recipient with an
/// amount of its own.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The seed: picks replicas, names the run.
    pub seed: u64,
    /// The run's name: recipients and idempotency keys derive from it.
    pub run: String,
    /// How many withdrawals.
    pub count: u64,
    /// The keys they are from, in turn.
    pub keys: Vec<&'static str>,
}

impl Workload {
    /// A workload named after `test` and `seed`.
    pub fn new(test: &str, seed: u64, count: u64, keys: &[&'static str]) -> Self {
        Self { seed, run: format!("{test}-{seed}"), count, keys: keys.to_vec() }
    }

    /// The key of withdrawal `index`.
    pub fn key_of(&self, index: u64) -> &'static str {
        self.keys[usize::try_from(index).unwrap() % self.keys.len()]
    }

    /// Its recipient: an address nothing else pays.
    pub fn recipient(&self, index: u64) -> Address {
        recipient(&self.run, index)
    }

    /// Its amount, in wei.
    pub fn amount(&self, index: u64) -> U256 {
        U256::from(1_000_000 + self.seed * 10_000 + index)
    }

    /// Its idempotency key.
    pub fn idempotency_key(&self, index: u64) -> String {
        format!("{}-{index}", self.run)
    }

    /// The index of the withdrawal with `idempotency_key`.
    pub fn index_of(&self, idempotency_key: &str) -> u64 {
        let index = idempotency_key.strip_prefix(&format!("{}-", self.run)).and_then(|rest| rest.parse().ok());
        index.unwrap_or_else(|| panic!("{idempotency_key} is no idempotency key of {}", self.run))
    }

    /// The body of its `POST /v1/withdrawals`.
    pub fn body(&self, index: u64) -> Value {
        let amount = self.amount(index).to_string();
        withdrawal_from(self.key_of(index), &self.idempotency_key(index), self.recipient(index), "ETH", &amount)
    }

    /// The payments `key` must make: (recipient, amount).
    pub fn payments(&self, key: &str) -> Vec<(Address, U256)> {
        (0..self.count)
            .filter(|index| self.key_of(*index) == key)
            .map(|index| (self.recipient(index), self.amount(index)))
            .collect()
    }
}

/// A seeded pick in `0..choices` for try `attempt` of withdrawal `index` (`SplitMix64`'s finaliser): the
/// same for a seed whatever the interleaving of the clients.
pub fn pick(seed: u64, index: u64, attempt: u64, choices: usize) -> usize {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    usize::try_from(z % choices as u64).unwrap()
}

/// Clients posting a [`Workload`] to the replicas, in the background.
#[derive(Debug)]
pub struct Posting {
    accepted: Arc<AtomicUsize>,
    /// Per replica (by its place in the URLs), the withdrawals it accepted (202).
    accepted_by: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<BTreeMap<u64, String>>,
}

impl Posting {
    /// `concurrency` clients post the workload's withdrawals in order to the replicas at `urls`, each
    /// client pausing `pause` after each accepted one (so that the faults a test injects land while
    /// withdrawals are being processed, not only after).
    pub fn start(workload: &Workload, urls: Vec<String>, concurrency: usize, pause: Duration) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted_by: Arc<Vec<AtomicUsize>> = Arc::new(urls.iter().map(|_| AtomicUsize::new(0)).collect());
        let (workload, counter, by) = (workload.clone(), Arc::clone(&accepted), Arc::clone(&accepted_by));
        let task = tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let http = http_client();
            let ids = std::sync::Mutex::new(BTreeMap::new());
            futures_util::stream::iter(0..workload.count)
                .for_each_concurrent(concurrency, |index| {
                    let (http, urls, workload, ids, counter, by) = (&http, &urls, &workload, &ids, &counter, &by);
                    async move {
                        let (id, newly_by) = post_anywhere(http, urls, workload, index).await;
                        ids.lock().unwrap().insert(index, id);
                        if let Some(replica) = newly_by {
                            by[replica].fetch_add(1, Ordering::Relaxed);
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                })
                .await;
            ids.into_inner().unwrap()
        });
        Self { accepted, accepted_by, task }
    }

    /// Per replica (in the order of the URLs), how many withdrawals it accepted (answered 202) so far.
    pub fn accepted_by(&self) -> Vec<usize> {
        self.accepted_by.iter().map(|count| count.load(Ordering::Relaxed)).collect()
    }

    /// How many withdrawals were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `target` withdrawals were accepted.
    pub async fn wait_accepted(&self, target: u64, within: Duration) {
        let started = Instant::now();
        while (self.accepted() as u64) < target {
            assert!(
                started.elapsed() < within,
                "only {} of {target} withdrawals accepted in {within:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every withdrawal was accepted: their ids by index.
    pub async fn finish(self) -> BTreeMap<u64, String> {
        self.task.await.unwrap()
    }
}

/// Posts withdrawal `index` to a replica picked for each try until one accepts it (202, or 200 for one
/// already accepted under its idempotency key): its id, and the replica (its place in `urls`) if it
/// answered 202. Errors, time-outs and 5xx (a killed or paused replica, the journal down, overload) are
/// tried again; any other answer fails the test.
async fn post_anywhere(
    http: &reqwest::Client,
    urls: &[String],
    workload: &Workload,
    index: u64,
) -> (String, Option<usize>) {
    let started = Instant::now();
    let body = workload.body(index);
    for attempt in 0.. {
        let replica = pick(workload.seed, index, attempt, urls.len());
        let url = &urls[replica];
        if let Ok(response) = http.post(format!("{url}/v1/withdrawals")).bearer_auth(TOKEN).json(&body).send().await {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            if status == 200 || status == 202 {
                let answer: Value = serde_json::from_str(&text).unwrap();
                return (answer["id"].as_str().unwrap().to_owned(), (status == 202).then_some(replica));
            }
            assert!(status >= 500, "seed {}, withdrawal {index} at {url}: {status} {text}", workload.seed);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "seed {}: withdrawal {index} never accepted",
            workload.seed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop returns or fails")
}
