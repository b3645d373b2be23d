//! The signing service end to end: `ethkms-server` processes (`ETHKMS_BENCH_SERVER`) with their keys in
//! LocalStack, 1,000 withdrawals per round posted to `POST /v1/withdrawals` with 64 in flight (spread over
//! the keys and the replicas), timed from the first post until the last is mined, against the bare `Sign`
//! loop at the same concurrency, as a ratio. Each setup — a journal (SQLite, or a fresh PostgreSQL
//! database), a number of replicas and of keys — has servers and keys of its own, all running from the
//! start; each round runs every setup in turn, so that they meet the same chain. Every withdrawal is then
//! checked confirmed, with each key's nonces contiguous and none used twice.

mod report;
mod round;
mod servers;

use std::sync::Arc;

use alloy_primitives::Address;
use ethkms_aws::aws_sdk_kms::Client;
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};

use crate::placement::{Placement, allowed_cpus};
use crate::{Options, median, rpc_url};
use round::Running;

/// How many withdrawals each round posts.
const WITHDRAWALS: u64 = 1000;

/// The bearer token of the benchmark's client.
const TOKEN: &str = "bench-token";

/// Where the servers keep their journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Journal {
    /// A SQLite file (one server).
    Sqlite,
    /// A PostgreSQL database on `ETHKMS_TEST_POSTGRES_URL`'s server, shared by the replicas.
    Postgres,
}

impl Journal {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "sqlite" => Some(Self::Sqlite),
            "postgres" => Some(Self::Postgres),
            _ => None,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// One thing measured: a journal, replicas and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Setup {
    journal: Journal,
    replicas: usize,
    keys: usize,
    placement: Placement,
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |count: usize, word: &str| format!("{count} {word}{}", if count == 1 { "" } else { "s" });
        let (journal, replicas, keys) =
            (self.journal.name(), plural(self.replicas, "replica"), plural(self.keys, "key"));
        write!(f, "{journal} × {replicas}, {keys}, {}", self.placement.name())
    }
}

/// The setups of `options`: SQLite with one server (one key, or each of `--keys` when only SQLite is
/// asked for) — the reference — then, with `--journal postgres`, each combination of `--replicas` and
/// `--keys` (one and four keys unless told) on PostgreSQL; each in every placement of `--placement`.
fn setups(options: &Options) -> Vec<Setup> {
    let postgres = options.journals.contains(&Journal::Postgres);
    let sqlite_keys = if postgres || options.keys.is_empty() { vec![1] } else { options.keys.clone() };
    let mut shapes: Vec<(Journal, usize, usize)> =
        sqlite_keys.into_iter().map(|keys| (Journal::Sqlite, 1, keys)).collect();
    if postgres {
        let keys = if options.keys.is_empty() { vec![1, 4] } else { options.keys.clone() };
        for &replicas in &options.replicas {
            for &keys in &keys {
                shapes.push((Journal::Postgres, replicas, keys));
            }
        }
    }
    shapes
        .into_iter()
        .flat_map(|(journal, replicas, keys)| {
            options.placements.iter().map(move |&placement| Setup { journal, replicas, keys, placement })
        })
        .collect()
}

/// What one setup measured.
struct Measured {
    setup: Setup,
    ratios: Vec<f64>,
    rates: Vec<f64>,
}

/// Runs every setup of `options` and prints a table for each, then one comparing them.
pub(crate) async fn run(
    options: &Options,
    client: &Client,
    backend: &Arc<dyn KeyBackend>,
    key_id: &str,
    handle: KeyHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let setups = setups(options);
    let rpc_url = rpc_url()?;
    let http = reqwest::Client::new();
    // The keys of each setup, the first setup's first key the one made for the bare loop.
    let mut setup_keys = Vec::new();
    let mut first = Some((key_id.to_owned(), Address::from(handle.address().0)));
    for setup in &setups {
        let mut keys = Vec::new();
        while keys.len() < setup.keys {
            let key = match first.take() {
                Some(key) => key,
                None => {
                    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
                    let handle = KeyHandle::open(Arc::clone(backend), KeyRef::new(info.key_id.clone())?).await?;
                    (info.key_id, Address::from(handle.address().0))
                }
            };
            anvil(&http, &rpc_url, "anvil_setBalance", serde_json::json!([key.1, "0xd3c21bcecceda1000000"])).await;
            keys.push(key);
        }
        setup_keys.push(keys);
    }
    // Every setup's servers run from the start, each on keys of its own, and each round runs every setup
    // (starting with a different one each time): the chain grows as the rounds go, and each transaction
    // costs anvil a little more, so that setups measured one after another would not be compared fairly.
    let mut running = Vec::new();
    for (setup, keys) in setups.into_iter().zip(setup_keys) {
        running.push(Running::start(setup, keys, options.concurrency[0], &rpc_url, &http).await?);
    }
    println!();
    // Each round runs in its setup's placement; every process goes back to all CPUs at the end.
    let cpus = allowed_cpus()?;
    let servers: Vec<u32> = running.iter().flat_map(Running::pids).collect();
    let restore = Restore { cpus: cpus.clone(), servers: servers.clone() };
    for round in 0..options.rounds {
        for turn in 0..running.len() {
            let index = (round + turn) % running.len();
            running[index].setup.placement.apply(&cpus, &servers)?;
            running[index].round(round, options, client, &http, &rpc_url).await?;
        }
    }
    drop(restore);
    println!();
    let measured: Vec<Measured> = running.into_iter().map(|setup| setup.report(options)).collect();
    if measured.len() > 1 {
        println!("| setup | median withdrawals/s | median withdrawals ÷ Sign | lowest | highest | ÷ the first setup |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let reference = measured.first().map(|first| median(first.ratios.clone())).unwrap_or(f64::NAN);
        for Measured { setup, ratios, rates } in &measured {
            let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), r| (low.min(*r), high.max(*r)));
            let ratio = median(ratios.clone());
            println!(
                "| {setup} | {:.0} | {ratio:.2} | {low:.2} | {high:.2} | {:.2} |",
                median(rates.clone()),
                ratio / reference
            );
        }
    }
    Ok(())
}

/// Puts every process back on all CPUs when dropped, however the benchmark ends.
struct Restore {
    cpus: Vec<u32>,
    servers: Vec<u32>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(error) = Placement::Shared.apply(&self.cpus, &self.servers) {
            println!("could not put the processes back on every CPU: {error}");
        }
    }
}

/// A JSON-RPC call to anvil.
pub(crate) async fn anvil(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let answer: serde_json::Value = http.post(url).json(&body).send().await.expect("anvil").json().await.expect("json");
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

async fn mined_count(http: &reqwest::Client, url: &str, address: Address) -> u64 {
    let count = anvil(http, url, "eth_getTransactionCount", serde_json::json!([address, "latest"])).await;
    u64::from_str_radix(count.as_str().expect("a quantity").trim_start_matches("0x"), 16).expect("hex")
}
