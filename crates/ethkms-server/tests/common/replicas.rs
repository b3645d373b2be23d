//! Several `ethkms-server` processes — replicas — sharing one PostgreSQL journal (issue 13), for
//! `tests/replicas.rs` and the PostgreSQL run of the fault campaign.
//!
//! A [`Cluster`] is a database of its own ([`TestDatabase`]), an anvil of its own (one block a second),
//! funded KMS keys on LocalStack, and replicas with one configuration each: their own listen port, audit
//! log and `[replica] name`, the same journal URL, keys and client. Each replica talks to anvil through a
//! JSON-RPC proxy of its own (no faults), which records every transaction it tried to broadcast.
//!
//! What the tests rely on of the service (the contract of the replicated journal):
//! - configuration: `journal = "postgres://…"`, `[replica] name = "r1"`, `lease_seconds = 3`;
//! - `GET /metrics`: `ethkms_lease_held{key="hot"}` (0 or 1), and the counters
//!   `ethkms_lease_acquisitions_total`, `ethkms_lease_losses_total`, `ethkms_fenced_writes_total`;
//! - `/readyz`: 503 `not ready: the journal does not answer` while PostgreSQL is down;
//! - tables `withdrawals`, `attempts` (with the lease `epoch` and `replica` an attempt was stored under)
//!   and `leases (key, holder, epoch, expires_ms)`; columns are cast in the queries, so that any integer
//!   type reads.
//!
//! The clients posting to them are in [`workload`](super::workload).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, U256, hex, keccak256};
use ethkms_test_support::postgres::TestDatabase;
use ethkms_test_support::rpc_proxy::{Faults, RpcProxy};
use ethkms_test_support::unique;
use serde_json::Value;

use super::exactly_once::{Mined, assert_paid_exactly_once};
use super::workload::Workload;
use super::{
    Anvil, Server, TOKEN, config_client_of_keys, config_head_with_journal, config_key, free_port, funded_key,
    localstack,
};

/// The lease the tests configure: short, so that takeovers happen within a test, long enough that a
/// loaded two-core machine renews in time.
pub const LEASE_SECONDS: u64 = 3;

/// How long a request may take before the replica counts as not answering: a paused process never
/// answers, while the kernel still accepts the connection.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// An HTTP client whose requests give up after [`REQUEST_TIMEOUT`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap()
}

/// The current time in milliseconds since the epoch: the clock the replicas stamp the journal with (the
/// same machine's).
pub fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The `[replica]` section.
pub fn replica_section(name: &str, lease_seconds: u64) -> String {
    format!("\n[replica]\nname = \"{name}\"\nlease_seconds = {lease_seconds}\n")
}

/// A key the cluster signs with: its name in the configuration, its KMS key and its funded address.
#[derive(Debug)]
pub struct FundedKey {
    /// `hot` (the first one, always), then `cold`.
    pub name: &'static str,
    /// The KMS key id.
    pub kms_id: String,
    /// Its address, funded on the cluster's anvil.
    pub address: Address,
}

/// One replica: its files, its proxy to the node, and its process while it runs.
#[derive(Debug)]
pub struct Replica {
    /// `r1`, `r2`, …: the configuration's `[replica] name`.
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its audit log (one per replica).
    pub audit: PathBuf,
    /// Its log (standard error), appended to across restarts.
    pub log: PathBuf,
    /// Its JSON-RPC proxy to anvil: what it tried to broadcast.
    pub proxy: RpcProxy,
    server: Option<Server>,
    paused: bool,
    kms_endpoint: String,
}

impl Replica {
    /// Whether its process runs and is not paused: whether it can answer.
    pub fn is_serving(&self) -> bool {
        self.server.is_some() && !self.paused
    }

    /// Starts its process (again) and waits until it answers `/healthz`.
    pub async fn start(&mut self) {
        assert!(self.server.is_none(), "{} is already running", self.name);
        self.server = Some(Server::start_logging(&self.config, &self.kms_endpoint, &self.url, &self.log).await);
        self.paused = false;
    }

    /// `kill -9`.
    pub fn kill_9(&mut self) {
        self.server.take().expect("a running replica").kill_9();
    }

    /// `SIGSTOP`.
    pub fn sigstop(&mut self) {
        self.server.as_ref().expect("a running replica").sigstop();
        self.paused = true;
    }

    /// `SIGCONT`.
    pub fn sigcont(&mut self) {
        self.server.as_ref().expect("a running replica").sigcont();
        self.paused = false;
    }

    /// `SIGTERM`, waiting for the exit: its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.server.take().expect("a running replica").terminate()
    }

    /// `GET path`: status and body, or `None` if it does not answer (or is known not to).
    pub async fn get(&self, http: &reqwest::Client, path: &str) -> Option<(u16, String)> {
        if !self.is_serving() {
            return None;
        }
        let response = http.get(format!("{}{path}", self.url)).bearer_auth(TOKEN).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Its metrics, or `None` if it does not answer.
    pub async fn metrics(&self, http: &reqwest::Client) -> Option<String> {
        self.get(http, "/metrics").await.filter(|(status, _)| *status == 200).map(|(_, text)| text)
    }
}

/// The sum of the samples of metric `name` (the sample's name, `_total` included for a counter) whose
/// labels include each of `labels`; `None` if there is no such sample.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) = match line.split_once('}') {
            Some((series, rest)) => (series, rest.split_whitespace().next()),
            None => (line.split_whitespace().next().unwrap_or_default(), line.split_whitespace().nth(1)),
        };
        let (sample, label_text) = series.split_once('{').unwrap_or((series, ""));
        let wanted = labels.iter().all(|(label, value)| label_text.contains(&format!("{label}=\"{value}\"")));
        if sample == name
            && wanted
            && let Some(value) = value.and_then(|value| value.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// A row of `leases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds (or last held) it.
    pub holder: Option<String>,
    /// Bumped by every takeover.
    pub epoch: i64,
    /// When it lapses unless renewed.
    pub expires_ms: i64,
}

/// A row of `attempts` with its withdrawal's key and nonce.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The withdrawal's id.
    pub withdrawal: String,
    /// The attempt's number within it.
    pub number: i64,
    /// Lower-case `0x…`.
    pub tx_hash: String,
    /// When it was signed.
    pub signed_ms: i64,
    /// The lease epoch it was stored under.
    pub epoch: i64,
    /// The replica that stored it.
    pub replica: Option<String>,
    /// The withdrawal's key.
    pub key: String,
    /// The withdrawal's nonce.
    pub nonce: Option<i64>,
}

/// Replicas sharing a PostgreSQL journal; see the [module documentation](self). Dropping it kills the
/// replicas, then anvil, then drops the database (kept if the test failed).
#[derive(Debug)]
pub struct Cluster {
    /// The replicas, `r1` first.
    pub replicas: Vec<Replica>,
    /// The keys, `hot` first.
    pub keys: Vec<FundedKey>,
    /// The node.
    pub anvil: Anvil,
    /// A client whose requests time out ([`REQUEST_TIMEOUT`]).
    pub http: reqwest::Client,
    /// The journal's database.
    pub database: TestDatabase,
}

impl Cluster {
    /// Starts `count` replicas with the keys `key_names` (`hot` first) and `lease_seconds`, one after
    /// another, each ready before the next starts; `None` skips the test when a service is missing
    /// outside CI.
    pub async fn start(count: usize, key_names: &[&'static str], lease_seconds: u64) -> Option<Self> {
        assert_eq!(key_names.first(), Some(&"hot"), "the configuration's first key is `hot`");
        let (kms_endpoint, backend) = localstack().await?;
        let database = TestDatabase::create().await?;
        let anvil = Anvil::start(&["--block-time", "1"]).await?;
        let mut keys = Vec::new();
        for &name in key_names {
            let (kms_id, address) = funded_key(&backend, &anvil.url).await;
            keys.push(FundedKey { name, kms_id, address });
        }
        let mut replicas = Vec::new();
        for index in 0..count {
            let name = format!("r{}", index + 1);
            let proxy = RpcProxy::start(&anvil.url, index as u64, Faults::none()).await.unwrap();
            let listen = format!("127.0.0.1:{}", free_port());
            let base = std::env::temp_dir().join(unique(&format!("replica-{name}")));
            let audit = base.with_extension("jsonl");
            let text = configuration(&listen, proxy.url().trim_end_matches('/'), &keys, &audit, &database.url)
                + &replica_section(&name, lease_seconds);
            let config = base.with_extension("toml");
            std::fs::write(&config, text).unwrap();
            let (url, log) = (format!("http://{listen}"), base.with_extension("log"));
            eprintln!("replica {name}: {url}, config {}, log {}", config.display(), log.display());
            let kms_endpoint = kms_endpoint.clone();
            replicas.push(Replica { name, url, config, audit, log, proxy, server: None, paused: false, kms_endpoint });
        }
        let mut cluster = Self { replicas, keys, anvil, http: http_client(), database };
        for index in 0..count {
            cluster.replicas[index].start().await;
            cluster.wait_ready(index, Duration::from_secs(30)).await;
        }
        Some(cluster)
    }

    /// The key named `name`.
    pub fn key(&self, name: &str) -> &FundedKey {
        self.keys.iter().find(|key| key.name == name).unwrap()
    }

    /// Every replica's URL, serving or not: what clients know.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|replica| replica.url.clone()).collect()
    }

    /// `/readyz` of replica `index`: status and body, or `None` if it does not answer.
    pub async fn readyz(&self, index: usize) -> Option<(u16, String)> {
        self.replicas[index].get(&self.http, "/readyz").await
    }

    /// Waits until replica `index` answers `/readyz` with 200.
    pub async fn wait_ready(&self, index: usize, within: Duration) {
        let started = Instant::now();
        loop {
            let answer = self.readyz(index).await;
            if answer.as_ref().is_some_and(|(status, _)| *status == 200) {
                return;
            }
            let replica = &self.replicas[index];
            assert!(
                started.elapsed() < within,
                "{} not ready in {within:?}: {answer:?}; log {}",
                replica.name,
                replica.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a counter or gauge on replica `index` (summed over its label sets), 0 if absent;
    /// `None` if the replica does not answer.
    pub async fn metric(&self, index: usize, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.replicas[index].metrics(&self.http).await?;
        Some(metric_sum(&text, name, labels).unwrap_or_default())
    }

    /// The serving replicas whose `ethkms_lease_held{key}` is 1.
    pub async fn holders(&self, key: &str) -> Vec<usize> {
        let mut holders = Vec::new();
        for index in 0..self.replicas.len() {
            if self.metric(index, "ethkms_lease_held", &[("key", key)]).await == Some(1.0) {
                holders.push(index);
            }
        }
        holders
    }

    /// Waits until exactly one serving replica, not `other_than`, says it holds `key`'s lease, and no other
    /// serving replica says so: that replica, and how long it took.
    pub async fn wait_for_holder(&self, key: &str, within: Duration, other_than: Option<usize>) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            let holders = self.holders(key).await;
            if let [holder] = holders[..]
                && Some(holder) != other_than
            {
                return (holder, started.elapsed());
            }
            assert!(started.elapsed() < within, "no single new holder of {key} in {within:?}: {holders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `leases` row of `key`.
    pub async fn lease(&self, key: &str) -> Option<Lease> {
        let sql = self.database.connect().await;
        let row = sql
            .query_opt("SELECT holder, epoch::bigint, expires_ms::bigint FROM leases WHERE key = $1", &[&key])
            .await
            .unwrap()?;
        Some(Lease { holder: row.get(0), epoch: row.get(1), expires_ms: row.get(2) })
    }

    /// How many of `key`'s withdrawals the journal says are confirmed.
    pub async fn confirmed(&self, key: &str) -> i64 {
        let sql = self.database.connect().await;
        let query = "SELECT count(*) FROM withdrawals WHERE kind = 'withdrawal' AND key = $1 AND status = 'confirmed'";
        sql.query_one(query, &[&key]).await.unwrap().get(0)
    }

    /// Every attempt in the journal, with its withdrawal's key and nonce.
    pub async fn attempts(&self) -> Vec<Attempt> {
        let sql = self.database.connect().await;
        let rows = sql
            .query(
                "SELECT a.withdrawal, a.number::bigint, lower(a.tx_hash), a.signed_ms::bigint, a.epoch::bigint, \
                 a.replica, w.key, w.nonce::bigint FROM attempts a JOIN withdrawals w ON w.id = a.withdrawal",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|row| Attempt {
                withdrawal: row.get(0),
                number: row.get(1),
                tx_hash: row.get(2),
                signed_ms: row.get(3),
                epoch: row.get(4),
                replica: row.get(5),
                key: row.get(6),
                nonce: row.get(7),
            })
            .collect()
    }

    /// Waits until the journal has `workload`'s withdrawals all confirmed, then checks each through the
    /// REST API of a serving replica (any replica answers for any key), and that each accepted id is the
    /// one the journal holds for its idempotency key.
    pub async fn assert_all_confirmed(&self, workload: &Workload, ids: &BTreeMap<u64, String>, within: Duration) {
        assert_eq!(ids.len() as u64, workload.count, "seed {}: every withdrawal was accepted", workload.seed);
        let started = Instant::now();
        loop {
            let sql = self.database.connect().await;
            let query = "SELECT count(*) FROM withdrawals WHERE kind = 'withdrawal' AND status = 'confirmed'";
            let confirmed: i64 = sql.query_one(query, &[]).await.unwrap().get(0);
            if confirmed as u64 >= workload.count || started.elapsed() > within {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let serving: Vec<&Replica> = self.replicas.iter().filter(|replica| replica.is_serving()).collect();
        assert!(!serving.is_empty(), "no replica serves");
        for (index, id) in ids {
            let mut answer = None;
            for offset in 0..serving.len() {
                let replica = serving[(usize::try_from(*index).unwrap() + offset) % serving.len()];
                if let Some((200, body)) = replica.get(&self.http, &format!("/v1/withdrawals/{id}")).await {
                    answer = Some((replica.name.clone(), serde_json::from_str::<Value>(&body).unwrap()));
                    break;
                }
            }
            let (name, withdrawal) = answer.unwrap_or_else(|| panic!("no replica answers GET {id}"));
            assert_eq!(
                withdrawal["status"], "confirmed",
                "seed {}, withdrawal {index} (asked {name}): {withdrawal}",
                workload.seed
            );
        }
        // One row per idempotency key, the one the clients were given, each for its amount and recipient.
        let sql = self.database.connect().await;
        let rows = sql
            .query(
                "SELECT idempotency_key, id, key, lower(recipient), amount::text, status FROM withdrawals \
                 WHERE kind = 'withdrawal'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len() as u64, workload.count, "seed {}: withdrawal rows", workload.seed);
        for row in rows {
            let idempotency_key: String = row.get(0);
            let index = workload.index_of(&idempotency_key);
            assert_eq!(Some(&row.get::<_, String>(1)), ids.get(&index), "{idempotency_key}'s id");
            assert_eq!(row.get::<_, String>(2), workload.key_of(index));
            assert_eq!(row.get::<_, String>(3), format!("{:#x}", workload.recipient(index)));
            assert_eq!(row.get::<_, String>(4), workload.amount(index).to_string());
            assert_eq!(row.get::<_, String>(5), "confirmed");
        }
    }

    /// The exactly-once checks, after every withdrawal of `workload` was confirmed: on chain, per key
    /// ([`assert_paid_exactly_once`]); in the journal, every nonce's attempts belong to one withdrawal and
    /// every mined transaction is an attempt of the withdrawal holding its nonce; every transaction any
    /// replica tried to broadcast is an attempt in the journal (stored before it was sent); every audit
    /// record names its replica. Returns what each key mined.
    pub async fn assert_exactly_once(&self, workload: &Workload) -> BTreeMap<&'static str, Mined> {
        let mut mined_by_key = BTreeMap::new();
        for key in &self.keys {
            let context = format!("seed {}, key {}", workload.seed, key.name);
            let mined =
                assert_paid_exactly_once(&self.anvil.url, key.address, &workload.payments(key.name), &context).await;
            mined_by_key.insert(key.name, mined);
        }
        let attempts = self.attempts().await;
        let mut withdrawals_by_nonce: BTreeMap<(String, Option<i64>), HashSet<&str>> = BTreeMap::new();
        for attempt in &attempts {
            withdrawals_by_nonce.entry((attempt.key.clone(), attempt.nonce)).or_default().insert(&attempt.withdrawal);
        }
        for ((key, nonce), withdrawals) in &withdrawals_by_nonce {
            assert!(nonce.is_some(), "attempts of {withdrawals:?} without a nonce");
            assert_eq!(
                withdrawals.len(),
                1,
                "key {key}, nonce {nonce:?}: attempts of several withdrawals {withdrawals:?}"
            );
        }
        for (name, mined) in &mined_by_key {
            for (nonce, (_, _, hash)) in mined {
                let stored: Vec<&Attempt> = attempts.iter().filter(|attempt| attempt.tx_hash == *hash).collect();
                assert!(!stored.is_empty(), "key {name}: mined {hash} (nonce {nonce}) is no attempt in the journal");
                for attempt in stored {
                    assert_eq!((attempt.key.as_str(), attempt.nonce), (*name, Some(*nonce as i64)), "{attempt:?}");
                }
            }
        }
        let journaled: HashSet<&str> = attempts.iter().map(|attempt| attempt.tx_hash.as_str()).collect();
        for replica in &self.replicas {
            for sent in replica.proxy.raw_transactions() {
                let hash = raw_transaction_hash(&sent.raw);
                assert!(
                    journaled.contains(hash.as_str()),
                    "{} broadcast {hash}, which the journal does not hold",
                    replica.name
                );
            }
            assert_audit_names(replica);
        }
        mined_by_key
    }

    /// Shuts every running replica down cleanly (`SIGTERM`; each must exit 0) and checks that none left
    /// a lease held: a clean shutdown releases its leases.
    pub async fn terminate_all(&mut self) {
        for replica in &mut self.replicas {
            if replica.server.is_some() {
                if replica.paused {
                    replica.sigcont();
                }
                let status = replica.terminate();
                assert!(
                    status.success(),
                    "{} exited with {status} after SIGTERM; log {}",
                    replica.name,
                    replica.log.display()
                );
            }
        }
        let sql = self.database.connect().await;
        let rows = sql.query("SELECT key, holder, expires_ms::bigint FROM leases", &[]).await.unwrap();
        let now = now_ms();
        for row in rows {
            let (key, holder, expires_ms): (String, Option<String>, i64) = (row.get(0), row.get(1), row.get(2));
            let held = holder.is_some_and(|holder| !holder.is_empty()) && expires_ms > now;
            assert!(!held, "the lease of {key} is still held ({expires_ms} > {now}) after every replica shut down");
        }
    }
}

/// The configuration of a replica: keys (`hot` first; at most 1 ether a withdrawal), the client `exchange`
/// ([`TOKEN`], withdrawals of every key), the journal `journal`; rebroadcasts after 5 s, so that a
/// transaction a replica stored but did not get to send (paused, killed) goes out from its successor.
fn configuration(listen: &str, rpc_url: &str, keys: &[FundedKey], audit: &Path, journal: &str) -> String {
    let policy = |name: &str| format!("\n[keys.{name}.policy]\nmax_value = {{ ETH = \"1ether\" }}\n");
    let mut text = config_head_with_journal(listen, rpc_url, &keys[0].kms_id, audit, journal)
        .replace("rebroadcast_after_seconds = 600", "rebroadcast_after_seconds = 5");
    text.push_str(&policy("hot"));
    for key in &keys[1..] {
        text.push_str(&config_key(key.name, &key.kms_id));
        text.push_str(&policy(key.name));
    }
    let names: Vec<&str> = keys.iter().map(|key| key.name).collect();
    text + &config_client_of_keys("exchange", TOKEN, &names, &["withdrawals"])
}

/// The hash of a raw transaction (`0x` hex of its EIP-2718 encoding): lower-case `0x…`.
pub fn raw_transaction_hash(raw: &str) -> String {
    format!("{:#x}", keccak256(hex::decode(raw).unwrap()))
}

/// Every record of the replica's audit log names the replica.
fn assert_audit_names(replica: &Replica) {
    let Ok(text) = std::fs::read_to_string(&replica.audit) else { return };
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        // A record cut short by `kill -9` is not this check's concern.
        if let Ok(record) = serde_json::from_str::<Value>(line) {
            assert_eq!(record["event"]["replica"], replica.name.as_str(), "{}: {line}", replica.audit.display());
        }
    }
}
