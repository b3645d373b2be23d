//! Signing throughput against LocalStack's KMS, at several concurrency levels, three ways in one run:
//!
//! - `bare SDK`: `aws-sdk-kms` `Sign` requests and nothing else (the ceiling for any KMS signer);
//! - `ethkms`: `KeyHandle::sign_digest` on `AwsKmsBackend` (strict DER, low-s, verification and
//!   y-parity on every signature), on the same client;
//! - `alloy-signer-aws`: `AwsSigner::sign_hash` (trial recovery), on the same client.
//!
//! Each measurement runs for a fixed time; the three are interleaved round by round so that drift in
//! the service affects them alike, and the median round is reported.
//!
//! `ethkms-bench eth` measures signed-and-mined ether transfers per second from one KMS key to anvil
//! through the alloy provider with `KmsSigner` as its wallet, interleaved with the bare `Sign` loop.
//!
//! `ethkms-bench withdrawals` measures the signing service end to end: the `ethkms-server` binary
//! (`ETHKMS_BENCH_SERVER`) with one KMS key, 1,000 withdrawals posted to `POST /v1/withdrawals` with 64
//! in flight, timed from the first post until the last is mined; interleaved with the bare `Sign` loop
//! at the same concurrency. Every withdrawal is then checked mined, with nonces contiguous and none
//! used twice.
//!
//! Usage: `ethkms-bench kms|eth|withdrawals [--seconds S] [--rounds R] [--concurrency 1,8,32]` with
//! `ETHKMS_TEST_KMS_ENDPOINT` (and for `eth`, `ETHKMS_TEST_RPC_URL`) pointing at LocalStack and anvil
//! (`cargo xtask bench kms|eth` does all of this).

mod cpu;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy_network::TransactionBuilder;
use alloy_primitives::B256;
use alloy_primitives::{Address, U256};
use alloy_provider::{Provider, ProviderBuilder};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_signer::Signer;
use alloy_signer_aws::AwsSigner;
use ethkms_aws::aws_sdk_kms::Client;
use ethkms_aws::aws_sdk_kms::primitives::Blob;
use ethkms_aws::aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use ethkms_aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};
use ethkms_eth::KmsSigner;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kms,
    Eth,
    Withdrawals,
}

struct Options {
    mode: Mode,
    seconds: f64,
    rounds: usize,
    concurrency: Vec<usize>,
}

fn options() -> Result<Options, String> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut arguments = arguments.iter().map(String::as_str);
    let mode = match arguments.next() {
        Some("kms") => Mode::Kms,
        Some("eth") => Mode::Eth,
        Some("withdrawals") => Mode::Withdrawals,
        other => {
            return Err(format!(
                "usage: ethkms-bench kms|eth|withdrawals [--seconds S] [--rounds R] [--concurrency 1,8,32]; got {other:?}"
            ));
        }
    };
    let concurrency = match mode {
        Mode::Kms => vec![1, 8, 32],
        Mode::Eth => vec![1, 8],
        Mode::Withdrawals => vec![64],
    };
    let mut options = Options { mode, seconds: 3.0, rounds: 3, concurrency };
    while let Some(option) = arguments.next() {
        let value = arguments.next().ok_or(format!("{option} needs a value"))?;
        match option {
            "--seconds" => options.seconds = value.parse().map_err(|_| format!("--seconds {value}"))?,
            "--rounds" => options.rounds = value.parse().map_err(|_| format!("--rounds {value}"))?,
            "--concurrency" => {
                options.concurrency = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--concurrency {value}"))?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// Runs `task` from `concurrency` loops for `seconds` and returns completed operations per second.
async fn rate<F, Fut>(concurrency: usize, seconds: f64, task: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let task = Arc::new(task);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (task, done) = (Arc::clone(&task), Arc::clone(&done));
            tokio::spawn(async move {
                let mut index = (worker as u64) << 40;
                while Instant::now() < deadline {
                    task(index).await;
                    index += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker panicked");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn digest(index: u64) -> [u8; 32] {
    ethkms_core::keccak256(&index.to_be_bytes())
}

/// anvil's URL, from `ETHKMS_TEST_RPC_URL`.
fn rpc_url() -> Result<String, &'static str> {
    std::env::var("ETHKMS_TEST_RPC_URL")
        .map_err(|_| "ETHKMS_TEST_RPC_URL is not set: start anvil with `cargo xtask services up`")
}

/// The bare `aws-sdk-kms` Sign loop: the ceiling for any KMS signer.
async fn bare_sign_rate(client: &Client, key_id: &str, concurrency: usize, seconds: f64) -> f64 {
    let (client, key_id) = (client.clone(), key_id.to_owned());
    rate(concurrency, seconds, move |index| {
        let request = client
            .sign()
            .key_id(key_id.clone())
            .message(Blob::new(digest(index).to_vec()))
            .message_type(MessageType::Digest)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256);
        async move {
            let output = request.send().await.expect("bare Sign");
            assert!(output.signature().is_some());
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let endpoint = std::env::var("ETHKMS_TEST_KMS_ENDPOINT")
        .map_err(|_| "ETHKMS_TEST_KMS_ENDPOINT is not set: start LocalStack with `cargo xtask services up`")?;
    let config =
        AwsKmsConfig::with_endpoint(endpoint.clone(), "us-east-1", StaticCredentials::new("test", "test", None));
    let backend = AwsKmsBackend::new(config).await?;
    let client = backend.client().clone();
    let backend: Arc<dyn KeyBackend> = Arc::new(backend);
    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
    let handle = KeyHandle::open(Arc::clone(&backend), KeyRef::new(info.key_id.clone())?).await?;
    println!(
        "LocalStack KMS at {endpoint}; key {}; {} s per measurement, median of {} rounds",
        info.key_id, options.seconds, options.rounds
    );
    println!();
    match options.mode {
        Mode::Kms => kms(&options, &client, &info.key_id, handle).await,
        Mode::Eth => eth(&options, &client, &info.key_id, handle).await,
        Mode::Withdrawals => withdrawals(&options, &client, &info.key_id, handle).await,
    }
}

async fn kms(
    options: &Options,
    client: &Client,
    key_id: &str,
    handle: KeyHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let handle = Arc::new(handle);
    let alloy = Arc::new(AwsSigner::new(client.clone(), key_id.to_owned(), Some(1)).await?);
    assert_eq!(alloy.address().0.0, handle.address().0, "alloy and ethkms disagree on the address");
    println!(
        "| concurrency | bare SDK Sign/s | ethkms sig/s | ethkms overhead | alloy-signer-aws sig/s | ethkms ÷ alloy |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for &concurrency in &options.concurrency {
        let (mut bare, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            bare.push(bare_sign_rate(client, key_id, concurrency, options.seconds).await);
            let handle = Arc::clone(&handle);
            ours.push(
                rate(concurrency, options.seconds, move |index| {
                    let handle = Arc::clone(&handle);
                    async move {
                        handle.sign_digest(&digest(index)).await.expect("ethkms sign");
                    }
                })
                .await,
            );
            let alloy = Arc::clone(&alloy);
            theirs.push(
                rate(concurrency, options.seconds, move |index| {
                    let alloy = Arc::clone(&alloy);
                    async move {
                        alloy.sign_hash(&B256::from(digest(index))).await.expect("alloy sign");
                    }
                })
                .await,
            );
        }
        let (bare, ours, theirs) = (median(bare), median(ours), median(theirs));
        println!(
            "| {concurrency} | {bare:.0} | {ours:.0} | {:+.1}% | {theirs:.0} | {:.2}× |",
            (bare / ours - 1.0) * 100.0,
            ours / theirs
        );
    }
    Ok(())
}

/// Signed-and-mined transfers: each task sends a 1-wei transfer through the provider (nonce from the
/// provider's cache, gas and fees set once) and polls for its receipt every 5 ms.
async fn eth(
    options: &Options,
    client: &Client,
    key_id: &str,
    handle: KeyHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let rpc_url = rpc_url()?;
    let signer = KmsSigner::from_handle(handle, Some(31337));
    let from = alloy_signer::Signer::address(&signer);
    let provider =
        Arc::new(ProviderBuilder::new().with_cached_nonce_management().wallet(signer).connect_http(rpc_url.parse()?));
    let () = provider.raw_request("anvil_setBalance".into(), (from, U256::from(10u128.pow(24)))).await?;
    let fees = ethkms_eth::chain::fees(&*provider).await?;
    let transfer = fees.apply(
        TransactionRequest::default()
            .with_to(Address::with_last_byte(0xde))
            .with_value(U256::from(1))
            .with_gas_limit(21_000)
            .with_chain_id(31337),
    );
    println!("anvil at {rpc_url}; transfers from {from}");
    println!();
    println!("| concurrency | raw LocalStack Sign/s | signed-and-mined transfers/s | transfers ÷ Sign |");
    println!("| ---: | ---: | ---: | ---: |");
    for &concurrency in &options.concurrency {
        let (mut bare, mut mined) = (Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            bare.push(bare_sign_rate(client, key_id, concurrency, options.seconds).await);
            let (provider, transfer) = (Arc::clone(&provider), transfer.clone());
            mined.push(
                rate(concurrency, options.seconds, move |_| {
                    let (provider, transfer) = (Arc::clone(&provider), transfer.clone());
                    async move {
                        let pending = provider.send_transaction(transfer).await.expect("send");
                        let hash = *pending.tx_hash();
                        // Polling the receipt directly beats alloy's block watcher on anvil (measured).
                        loop {
                            if let Some(receipt) = provider.get_transaction_receipt(hash).await.expect("receipt") {
                                assert!(receipt.status(), "transfer {hash} reverted");
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
                .await,
            );
        }
        let (bare, mined) = (median(bare), median(mined));
        println!("| {concurrency} | {bare:.0} | {mined:.0} | {:.2} |", mined / bare);
    }
    Ok(())
}

/// How many withdrawals each round posts.
const WITHDRAWALS: u64 = 1000;

/// A JSON-RPC call to anvil.
async fn anvil(http: &reqwest::Client, url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let answer: serde_json::Value = http.post(url).json(&body).send().await.expect("anvil").json().await.expect("json");
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

async fn mined_count(http: &reqwest::Client, url: &str, address: Address) -> u64 {
    let count = anvil(http, url, "eth_getTransactionCount", serde_json::json!([address, "latest"])).await;
    u64::from_str_radix(count.as_str().expect("a quantity").trim_start_matches("0x"), 16).expect("hex")
}

/// The signing service: 1,000 withdrawals from one key per round, 64 in flight, against the bare Sign
/// loop at the same concurrency.
async fn withdrawals(
    options: &Options,
    client: &Client,
    key_id: &str,
    handle: KeyHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures_util::StreamExt as _;
    use sha2::Digest as _;

    let rpc_url = rpc_url()?;
    let server = std::env::var("ETHKMS_BENCH_SERVER")
        .map_err(|_| "ETHKMS_BENCH_SERVER is not set: the ethkms-server binary (`cargo xtask bench withdrawals`)")?;
    let kms_endpoint = std::env::var("ETHKMS_TEST_KMS_ENDPOINT")?;
    let address = Address::from(handle.address().0);
    let http = reqwest::Client::new();
    anvil(&http, &rpc_url, "anvil_setBalance", serde_json::json!([address, "0xd3c21bcecceda1000000"])).await;

    let directory = std::env::temp_dir().join(format!("ethkms-bench-withdrawals-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let token = "bench-token";
    let token_sha256: String =
        sha2::Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
    // The engine signs as many at once as the bare loop below: the same load on LocalStack.
    let concurrency = options.concurrency[0];
    let config = directory.join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
upstream = "{rpc_url}"
audit_log = "{audit}"
journal = "{journal}"
# anvil mines at once: a transaction unmined after 2 s is stuck (anvil can leave the next nonce in
# its queue while later ones pile up behind it), and re-signing it with higher fees releases them.
withdrawals = {{ poll_interval_ms = 200, rebroadcast_after_seconds = 2, signing_concurrency = {signing} }}

[keys.hot]
key = "{key_id}"
chain_id = 31337
# anvil does not reorganise: final once mined.
confirmations = 1

[clients.bench]
token_sha256 = "{token_sha256}"
keys = ["hot"]
methods = ["withdrawals"]
"#,
            audit = directory.join("audit.jsonl").display(),
            journal = directory.join("journal.sqlite").display(),
            signing = concurrency,
        ),
    )?;
    let mut child = std::process::Command::new(&server)
        .arg("--config")
        .arg(&config)
        .env("AWS_ENDPOINT_URL", &kms_endpoint)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|error| format!("{server}: {error}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|response| response.status().is_success()) {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(format!("{server} did not become ready at {url}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "ethkms-server (release) at {url}, anvil at {rpc_url}; {WITHDRAWALS} withdrawals per round, {concurrency} in flight"
    );
    println!();
    println!(
        "| round | raw LocalStack Sign/s | withdrawals/s (posted → mined) | withdrawals ÷ Sign | all posted after | signatures over 1 s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut slow_before = slow_signatures(&http, &url).await;
    let (mut bare_rates, mut withdrawal_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let processes = cpu::Processes::new(child.id());
    let mut cpu_rows = Vec::new();
    let mut posted = 0u64;
    for round in 0..options.rounds {
        let bare_before = processes.ticks();
        let bare = bare_sign_rate(client, key_id, concurrency, options.seconds).await;
        let bare_cpu = cpu::per_item_ms(&bare_before, &processes.ticks(), (bare * options.seconds).round() as u64);
        let first_nonce = mined_count(&http, &rpc_url, address).await;
        let before = processes.ticks();
        let started = Instant::now();
        let ids: Vec<String> = futures_util::stream::iter(0..WITHDRAWALS)
            .map(|index| {
                let (http, url) = (&http, &url);
                let body = serde_json::json!({
                    "idempotency_key": format!("bench-{round}-{index}"),
                    "key": "hot",
                    "to": Address::with_last_byte(0xde),
                    "asset": "ETH",
                    "amount": "1",
                });
                async move {
                    let response = http
                        .post(format!("{url}/v1/withdrawals"))
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await
                        .expect("post");
                    assert_eq!(response.status().as_u16(), 202, "withdrawal {index} not accepted");
                    let answer: serde_json::Value = response.json().await.expect("json");
                    answer["id"].as_str().expect("an id").to_owned()
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let posted_in = started.elapsed();
        let (mut last_count, mut last_change, mut reported) = (0, Instant::now(), false);
        loop {
            let count = mined_count(&http, &rpc_url, address).await;
            if count >= first_nonce + WITHDRAWALS {
                break;
            }
            if count != last_count {
                (last_count, last_change, reported) = (count, Instant::now(), false);
            } else if !reported && last_change.elapsed() > STALL {
                reported = true;
                report_stall(&http, &rpc_url, &url, address, count).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = WITHDRAWALS as f64 / started.elapsed().as_secs_f64();
        cpu_rows.push((bare_cpu, cpu::per_item_ms(&before, &processes.ticks(), WITHDRAWALS)));
        posted += WITHDRAWALS;

        // Checked outside the timing: every one mined, nonces contiguous, none used twice.
        let mut nonces = std::collections::BTreeSet::new();
        for id in &ids {
            let withdrawal = loop {
                let withdrawal: serde_json::Value =
                    http.get(format!("{url}/v1/withdrawals/{id}")).bearer_auth(token).send().await?.json().await?;
                if withdrawal["final"] == true {
                    break withdrawal;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(withdrawal["status"], "confirmed", "{withdrawal}");
            assert!(nonces.insert(withdrawal["nonce"].as_u64().expect("a nonce")), "a nonce used twice");
        }
        let expected: std::collections::BTreeSet<u64> = (first_nonce..first_nonce + WITHDRAWALS).collect();
        assert_eq!(nonces, expected, "nonces not contiguous");
        assert_eq!(mined_count(&http, &rpc_url, address).await, posted, "transactions beyond the withdrawals");
        let slow = slow_signatures(&http, &url).await;
        println!(
            "| {} | {bare:.0} | {rate:.0} | {:.2} | {:.2} s | {} |",
            round + 1,
            rate / bare,
            posted_in.as_secs_f64(),
            slow.saturating_sub(slow_before)
        );
        slow_before = slow;
        bare_rates.push(bare);
        withdrawal_rates.push(rate);
        ratios.push(rate / bare);
    }
    let (lowest, highest) =
        ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), ratio| (low.min(*ratio), high.max(*ratio)));
    let median_ratio = median(ratios);
    println!("| median | {:.0} | {:.0} | {median_ratio:.2} | |", median(bare_rates), median(withdrawal_rates));
    println!();
    println!(
        "withdrawals ÷ Sign over {} rounds: median {median_ratio:.2}, lowest {lowest:.2}, highest {highest:.2}",
        options.rounds
    );
    print_cpu(&processes, &cpu_rows);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
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
async fn slow_signatures(http: &reqwest::Client, url: &str) -> u64 {
    let Ok(response) = http.get(format!("{url}/metrics")).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    };
    value("ethkms_signing_seconds_count ").saturating_sub(value("ethkms_signing_seconds_bucket{le=\"1.0\"} "))
}

/// How long the key's mined count may stay still, with withdrawals outstanding, before the benchmark says
/// what the node and the service hold.
const STALL: Duration = Duration::from_millis(700);

/// Prints, once per stall, what anvil's pool holds of the key (pending and queued nonces) and the server's
/// broadcast and retry counters: where a round's lost time is.
async fn report_stall(http: &reqwest::Client, rpc_url: &str, server: &str, address: Address, mined: u64) {
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
    println!(
        "  stall: mined count {mined} for {} ms; anvil holds pending {}, queued {}; {}",
        STALL.as_millis(),
        ends(&pending),
        ends(&queued),
        counters.join(", ")
    );
}
