//! The signing service end to end: `ethkms-server` processes (`ETHKMS_BENCH_SERVER`) with their keys in
//! LocalStack, 1,000 withdrawals per round posted to `POST /v1/withdrawals` with 64 in flight (spread over
//! the keys and the replicas), timed from the first post until the last is mined, against the bare `Sign`
//! loop at the same concurrency, as a ratio. Each setup — a journal (SQLite, or a fresh PostgreSQL
//! database), a number of replicas and of keys — runs its rounds on servers of its own; every withdrawal is
//! then checked confirmed, with each key's nonces contiguous and none used twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use ethkms_aws::aws_sdk_kms::Client;
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};
use futures_util::StreamExt as _;
use sha2::Digest as _;

use crate::{Options, bare_sign_rate, cpu, median, rpc_url};

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
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |count: usize, word: &str| format!("{count} {word}{}", if count == 1 { "" } else { "s" });
        write!(f, "{} × {}, {}", self.journal.name(), plural(self.replicas, "replica"), plural(self.keys, "key"))
    }
}

/// The setups of `options`: SQLite with one server (one key, or each of `--keys` when only SQLite is
/// asked for) — the reference — then, with `--journal postgres`, each combination of `--replicas` and
/// `--keys` (one and four keys unless told) on PostgreSQL.
fn setups(options: &Options) -> Vec<Setup> {
    let postgres = options.journals.contains(&Journal::Postgres);
    let sqlite_keys = if postgres || options.keys.is_empty() { vec![1] } else { options.keys.clone() };
    let mut setups: Vec<Setup> =
        sqlite_keys.into_iter().map(|keys| Setup { journal: Journal::Sqlite, replicas: 1, keys }).collect();
    if postgres {
        let keys = if options.keys.is_empty() { vec![1, 4] } else { options.keys.clone() };
        for &replicas in &options.replicas {
            for &keys in &keys {
                setups.push(Setup { journal: Journal::Postgres, replicas, keys });
            }
        }
    }
    setups
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
    let most_keys = setups.iter().map(|setup| setup.keys).max().unwrap_or(1);
    let rpc_url = rpc_url()?;
    let http = reqwest::Client::new();
    let mut keys = vec![(key_id.to_owned(), Address::from(handle.address().0))];
    while keys.len() < most_keys {
        let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
        let handle = KeyHandle::open(Arc::clone(backend), KeyRef::new(info.key_id.clone())?).await?;
        keys.push((info.key_id, Address::from(handle.address().0)));
    }
    for (_, address) in &keys {
        anvil(&http, &rpc_url, "anvil_setBalance", serde_json::json!([address, "0xd3c21bcecceda1000000"])).await;
    }
    let mut measured = Vec::new();
    for setup in setups {
        println!("### {setup}");
        println!();
        measured.push(one_setup(options, client, &http, &rpc_url, setup, &keys[..setup.keys]).await?);
        println!();
    }
    if measured.len() > 1 {
        println!("| setup | median withdrawals/s | median withdrawals ÷ Sign | lowest | highest | ÷ SQLite, 1 key |");
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

/// The servers of one setup: their processes and URLs.
struct Servers {
    children: Vec<std::process::Child>,
    urls: Vec<String>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `setup.replicas` servers on `keys` (named `hot0`, `hot1`, …) and waits until each key is held.
async fn start(
    setup: Setup,
    concurrency: usize,
    rpc_url: &str,
    keys: &[(String, Address)],
    http: &reqwest::Client,
) -> Result<Servers, Box<dyn std::error::Error>> {
    let server = std::env::var("ETHKMS_BENCH_SERVER")
        .map_err(|_| "ETHKMS_BENCH_SERVER is not set: the ethkms-server binary (`cargo xtask bench withdrawals`)")?;
    let kms_endpoint = std::env::var("ETHKMS_TEST_KMS_ENDPOINT")?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let directory = std::env::temp_dir().join(format!("ethkms-bench-withdrawals-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let journal = match setup.journal {
        Journal::Sqlite => directory.join("journal.sqlite").display().to_string(),
        Journal::Postgres => create_database(&format!("ethkms_bench_{}_{nanos}", std::process::id()))?,
    };
    let token_sha256: String =
        sha2::Sha256::digest(TOKEN.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
    let names: Vec<String> = (0..keys.len()).map(|index| format!("hot{index}")).collect();
    let mut servers = Servers { children: Vec::new(), urls: Vec::new() };
    for replica in 0..setup.replicas {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut text = format!(
            r#"listen = "127.0.0.1:{port}"
upstream = "{rpc_url}"
audit_log = "{audit}"
journal = "{journal}"
# anvil mines at once: a transaction unmined after 2 s is stuck (anvil can leave the next nonce in
# its queue while later ones pile up behind it), and re-signing it with higher fees releases them.
withdrawals = {{ poll_interval_ms = 200, rebroadcast_after_seconds = 2, signing_concurrency = {concurrency} }}
replica = {{ name = "r{replica}", lease_seconds = 10 }}

[clients.bench]
token_sha256 = "{token_sha256}"
keys = {names:?}
methods = ["withdrawals"]
"#,
            audit = directory.join(format!("audit-r{replica}.jsonl")).display(),
        );
        for ((key_id, _), name) in keys.iter().zip(&names) {
            // anvil does not reorganise: final once mined.
            text.push_str(&format!("\n[keys.{name}]\nkey = \"{key_id}\"\nchain_id = 31337\nconfirmations = 1\n"));
        }
        let config = directory.join(format!("server-r{replica}.toml"));
        std::fs::write(&config, text)?;
        let child = std::process::Command::new(&server)
            .arg("--config")
            .arg(&config)
            .env("AWS_ENDPOINT_URL", &kms_endpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(directory.join(format!("server-r{replica}.log")))?)
            .spawn()
            .map_err(|error| format!("{server}: {error}"))?;
        servers.children.push(child);
        servers.urls.push(format!("http://127.0.0.1:{port}"));
    }
    let started = Instant::now();
    for url in &servers.urls {
        while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|response| response.status().is_success()) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{server} did not become ready at {url} (logs in {})", directory.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every key held by some replica (its lease taken and its rows recovered) before the clock starts.
    for name in &names {
        let line = format!("ethkms_lease_held{{key=\"{name}\"}} 1");
        loop {
            let mut held = false;
            for url in &servers.urls {
                let text = match http.get(format!("{url}/metrics")).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                held |= text.lines().any(|candidate| candidate == line);
            }
            if held {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("no replica took key {name} within 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(servers)
}

/// A fresh PostgreSQL database on the server of `ETHKMS_TEST_POSTGRES_URL` (through `psql`): its URL.
fn create_database(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let url = std::env::var("ETHKMS_TEST_POSTGRES_URL")
        .map_err(|_| "ETHKMS_TEST_POSTGRES_URL is not set: start PostgreSQL with `cargo xtask services up`")?;
    let binaries = std::env::var("ETHKMS_TEST_POSTGRES_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let output = std::process::Command::new(format!("{binaries}/psql"))
        .args(["--quiet", "--no-psqlrc", "--dbname", &url, "--command", &format!("CREATE DATABASE {name}")])
        .output()
        .map_err(|error| format!("{binaries}/psql: {error}"))?;
    if !output.status.success() {
        return Err(format!("CREATE DATABASE {name}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let (server, _) = url.rsplit_once('/').ok_or("ETHKMS_TEST_POSTGRES_URL names no database")?;
    Ok(format!("{server}/{name}"))
}

/// The rounds of one setup: its own servers, a table row per round, the CPU table.
async fn one_setup(
    options: &Options,
    client: &Client,
    http: &reqwest::Client,
    rpc_url: &str,
    setup: Setup,
    keys: &[(String, Address)],
) -> Result<Measured, Box<dyn std::error::Error>> {
    let concurrency = options.concurrency[0];
    let servers = start(setup, concurrency, rpc_url, keys, http).await?;
    println!(
        "ethkms-server (release) at {}; anvil at {rpc_url}; {WITHDRAWALS} withdrawals per round, {concurrency} in flight",
        servers.urls.join(", ")
    );
    println!();
    println!(
        "| round | raw LocalStack Sign/s | withdrawals/s (posted → mined) | withdrawals ÷ Sign | all posted after | signatures over 1 s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut slow_before = slow_signatures(http, &servers.urls).await;
    let (mut bare_rates, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let processes = cpu::Processes::new(&servers.children.iter().map(std::process::Child::id).collect::<Vec<_>>());
    let mut cpu_rows = Vec::new();
    let (bare_key, _) = &keys[0];
    for round in 0..options.rounds {
        let bare_before = processes.ticks();
        let bare = bare_sign_rate(client, bare_key, concurrency, options.seconds).await;
        let bare_cpu = cpu::per_item_ms(&bare_before, &processes.ticks(), (bare * options.seconds).round() as u64);
        let mut first_nonces = Vec::new();
        for (_, address) in keys {
            first_nonces.push(mined_count(http, rpc_url, *address).await);
        }
        let before = processes.ticks();
        let started = Instant::now();
        let ids: Vec<(usize, String)> = futures_util::stream::iter(0..WITHDRAWALS)
            .map(|index| {
                let key = usize::try_from(index).unwrap_or(0) % keys.len();
                let url = &servers.urls[usize::try_from(index).unwrap_or(0) / keys.len() % servers.urls.len()];
                let body = serde_json::json!({
                    "idempotency_key": format!("bench-{round}-{index}"),
                    "key": format!("hot{key}"),
                    "to": Address::with_last_byte(0xde),
                    "asset": "ETH",
                    "amount": "1",
                });
                async move {
                    let response = http
                        .post(format!("{url}/v1/withdrawals"))
                        .bearer_auth(TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .expect("post");
                    let status = response.status().as_u16();
                    let answer: serde_json::Value = response.json().await.expect("json");
                    assert_eq!(status, 202, "withdrawal {index} not accepted: {answer}");
                    (key, answer["id"].as_str().expect("an id").to_owned())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let posted_in = started.elapsed();
        let per_key = WITHDRAWALS / keys.len() as u64;
        let targets: Vec<u64> = (0..keys.len())
            .map(|key| first_nonces[key] + per_key + u64::from((key as u64) < WITHDRAWALS % keys.len() as u64))
            .collect();
        let (mut last_total, mut last_change, mut reported) = (0, Instant::now(), false);
        loop {
            let mut total = 0;
            let mut done = true;
            for (key, (_, address)) in keys.iter().enumerate() {
                let count = mined_count(http, rpc_url, *address).await;
                total += count;
                done &= count >= targets[key];
            }
            if done {
                break;
            }
            if total != last_total {
                (last_total, last_change, reported) = (total, Instant::now(), false);
            } else if !reported && last_change.elapsed() > STALL {
                reported = true;
                report_stall(http, rpc_url, &servers.urls, keys).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = WITHDRAWALS as f64 / started.elapsed().as_secs_f64();
        cpu_rows.push((bare_cpu, cpu::per_item_ms(&before, &processes.ticks(), WITHDRAWALS)));

        // Checked outside the timing, through every replica in turn: each confirmed, each key's nonces
        // contiguous and none used twice.
        let mut nonces: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        for (index, (key, id)) in ids.iter().enumerate() {
            let url = &servers.urls[index % servers.urls.len()];
            let withdrawal = loop {
                let withdrawal: serde_json::Value =
                    http.get(format!("{url}/v1/withdrawals/{id}")).bearer_auth(TOKEN).send().await?.json().await?;
                if withdrawal["final"] == true {
                    break withdrawal;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(withdrawal["status"], "confirmed", "{withdrawal}");
            let nonce = withdrawal["nonce"].as_u64().expect("a nonce");
            assert!(nonces.entry(*key).or_default().insert(nonce), "key hot{key}: nonce {nonce} used twice");
        }
        for (key, (_, address)) in keys.iter().enumerate() {
            let expected: BTreeSet<u64> = (first_nonces[key]..targets[key]).collect();
            assert_eq!(nonces.get(&key), Some(&expected), "key hot{key}: nonces not contiguous");
            assert_eq!(mined_count(http, rpc_url, *address).await, targets[key], "transactions beyond the withdrawals");
        }
        let slow = slow_signatures(http, &servers.urls).await;
        println!(
            "| {} | {bare:.0} | {rate:.0} | {:.2} | {:.2} s | {} |",
            round + 1,
            rate / bare,
            posted_in.as_secs_f64(),
            slow.saturating_sub(slow_before)
        );
        slow_before = slow;
        bare_rates.push(bare);
        rates.push(rate);
        ratios.push(rate / bare);
    }
    let (lowest, highest) =
        ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), ratio| (low.min(*ratio), high.max(*ratio)));
    let median_ratio = median(ratios.clone());
    println!("| median | {:.0} | {:.0} | {median_ratio:.2} | |", median(bare_rates), median(rates.clone()));
    println!();
    println!(
        "{setup}: withdrawals ÷ Sign over {} rounds: median {median_ratio:.2}, lowest {lowest:.2}, highest {highest:.2}",
        options.rounds
    );
    print_cpu(&processes, &cpu_rows);
    drop(servers);
    Ok(Measured { setup, ratios, rates })
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

/// Milliseconds of processor time per operation, one for each process (`None` where it was not measured).
type CpuMillis = Vec<Option<f64>>;

/// Where the CPU went, per round: milliseconds of processor time per bare `Sign` (each process, in the bare
/// loop) and per withdrawal (each process, while the withdrawals ran).
fn print_cpu(processes: &cpu::Processes, rows: &[(CpuMillis, CpuMillis)]) {
    let names: Vec<&str> = processes.names().collect();
    let show = |values: &[Option<f64>]| -> String {
        values
            .iter()
            .map(|value| value.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.2}")))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!();
    println!("CPU milliseconds (user + system, all threads) per bare Sign, then per withdrawal:");
    println!();
    println!("| round | phase | {} |", names.join(" | "));
    println!("| ---: | --- |{}", " ---: |".repeat(names.len()));
    for (round, (bare, withdrawals)) in rows.iter().enumerate() {
        println!("| {} | bare Sign | {} |", round + 1, show(bare));
        println!("| {} | withdrawal | {} |", round + 1, show(withdrawals));
    }
}

/// How many of the server's signatures so far took more than a second (KMS request and verification), from
/// its `ethkms_signing_seconds` histogram: one such signature holds every higher nonce back.
async fn slow_signatures(http: &reqwest::Client, urls: &[String]) -> u64 {
    let mut slow = 0;
    for url in urls {
        let Ok(response) = http.get(format!("{url}/metrics")).send().await else { continue };
        let text = response.text().await.unwrap_or_default();
        let value = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .map_or(0, |value| value as u64)
        };
        slow +=
            value("ethkms_signing_seconds_count ").saturating_sub(value("ethkms_signing_seconds_bucket{le=\"1.0\"} "));
    }
    slow
}

/// How long the key's mined count may stay still, with withdrawals outstanding, before the benchmark says
/// what the node and the service hold.
const STALL: Duration = Duration::from_millis(700);

/// Prints, once per stall, what anvil's pool holds of each key (pending and queued nonces) and the servers'
/// broadcast and retry counters: where a round's lost time is.
async fn report_stall(http: &reqwest::Client, rpc_url: &str, servers: &[String], keys: &[(String, Address)]) {
    for (index, (_, address)) in keys.iter().enumerate() {
        let mined = mined_count(http, rpc_url, *address).await;
        report_key_stall(http, rpc_url, &format!("hot{index}"), *address, mined).await;
    }
    for server in servers {
        let metrics = match http.get(format!("{server}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|line| {
                ["ethkms_broadcasts_total", "ethkms_transient_retries_total", "ethkms_rebroadcasts_total"]
                    .iter()
                    .any(|name| line.starts_with(name))
            })
            .collect();
        println!("  {server}: {}", counters.join(", "));
    }
}

async fn report_key_stall(http: &reqwest::Client, rpc_url: &str, name: &str, address: Address, mined: u64) {
    let content = anvil(http, rpc_url, "txpool_inspect", serde_json::json!([])).await;
    let nonces = |part: &str| -> Vec<u64> {
        let mut nonces: Vec<u64> = content[part]
            .as_object()
            .into_iter()
            .flat_map(|accounts| accounts.iter())
            .filter(|(account, _)| account.eq_ignore_ascii_case(&address.to_string()))
            .flat_map(|(_, by_nonce)| by_nonce.as_object().into_iter().flat_map(|map| map.keys()))
            .filter_map(|nonce| nonce.parse().ok())
            .collect();
        nonces.sort_unstable();
        nonces
    };
    let (pending, queued) = (nonces("pending"), nonces("queued"));
    let ends = |nonces: &[u64]| match (nonces.first(), nonces.last()) {
        (Some(first), Some(last)) => format!("{} ({first}..={last})", nonces.len()),
        _ => "0".to_owned(),
    };
    println!(
        "  stall: key {name}: mined count {mined} for {} ms; anvil holds pending {}, queued {}",
        STALL.as_millis(),
        ends(&pending),
        ends(&queued),
    );
}
