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
//! `ethkms-bench withdrawals` measures the signing service end to end ([`withdrawals`]): `ethkms-server`
//! processes (`ETHKMS_BENCH_SERVER`), 1,000 withdrawals posted to `POST /v1/withdrawals` with 64 in flight,
//! timed from the first post until the last is mined; interleaved with the bare `Sign` loop at the same
//! concurrency — on SQLite with one key, and with `--journal postgres --replicas 1,3 --keys 1,4` on
//! PostgreSQL with one and three replicas, one and four keys, in the same run; each with the processes on
//! shared CPUs and with LocalStack on a CPU of its own (`--placement shared,apart`, [`placement`]).
//!
//! `ethkms-bench pkcs11` measures signing on a PKCS#11 token ([`pkcs11`]): raw `C_Sign` calls on SoftHSM2,
//! `KeyHandle` on `Pkcs11Backend`, and `KeyHandle` on LocalStack's KMS, at concurrency 1, 8 and 32 (9 rounds of
//! 1 s by default; the others 3 rounds of 3 s).
//!
//! `ethkms-bench deposits` measures deposit addresses ([`deposits`]): derived per second on one core, and
//! the gas and KMS signatures their sweeps take on anvil, beside the clone-with-immutable-args alternative.
//!
//! Usage: `ethkms-bench kms|eth|withdrawals|deposits|pkcs11 [--seconds S] [--rounds R] [--concurrency 1,8,32]` with
//! `ETHKMS_TEST_KMS_ENDPOINT` (and for `eth`, `ETHKMS_TEST_RPC_URL`) pointing at LocalStack and anvil
//! (`cargo xtask bench kms|eth` does all of this).

mod cpu;
mod deposits;
mod pkcs11;
mod placement;
mod withdrawals;

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
    Deposits,
    Pkcs11,
}

struct Options {
    mode: Mode,
    seconds: f64,
    rounds: usize,
    concurrency: Vec<usize>,
    /// `withdrawals`: the journals (`sqlite`, `postgres`), replica counts and key counts to measure.
    journals: Vec<withdrawals::Journal>,
    replicas: Vec<usize>,
    keys: Vec<usize>,
    /// `withdrawals`: where LocalStack runs beside the rest (`shared`, `apart`).
    placements: Vec<placement::Placement>,
}

fn options() -> Result<Options, String> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut arguments = arguments.iter().map(String::as_str);
    let mode = match arguments.next() {
        Some("kms") => Mode::Kms,
        Some("eth") => Mode::Eth,
        Some("withdrawals") => Mode::Withdrawals,
        Some("deposits") => Mode::Deposits,
        Some("pkcs11") => Mode::Pkcs11,
        other => {
            return Err(format!(
                "usage: ethkms-bench kms|eth|withdrawals|deposits|pkcs11 [--seconds S] [--rounds R] [--concurrency 1,8,32] [--journal sqlite,postgres] [--replicas 1,3] [--keys 1,4] [--placement shared,apart]; got {other:?}"
            ));
        }
    };
    let concurrency = match mode {
        Mode::Kms | Mode::Pkcs11 => vec![1, 8, 32],
        Mode::Eth => vec![1, 8],
        Mode::Withdrawals => vec![64],
        Mode::Deposits => vec![1],
    };
    // The token's overheads are medians of per-round ratios: many short rounds, so that a second in which
    // the machine stalls (the host of the virtual machine, the scheduler) is one round among nine.
    let (seconds, rounds) = match mode {
        Mode::Pkcs11 => (1.0, 9),
        Mode::Kms | Mode::Eth | Mode::Withdrawals | Mode::Deposits => (3.0, 3),
    };
    let mut options = Options {
        mode,
        seconds,
        rounds,
        concurrency,
        journals: vec![withdrawals::Journal::Sqlite],
        replicas: vec![1],
        keys: Vec::new(),
        placements: vec![placement::Placement::Shared, placement::Placement::KmsApart],
    };
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
            "--journal" => {
                options.journals = named(value, withdrawals::Journal::parse)
                    .ok_or(format!("--journal {value}: sqlite, postgres or both"))?;
            }
            "--replicas" => options.replicas = numbers("--replicas", value)?,
            "--keys" => options.keys = numbers("--keys", value)?,
            "--placement" => {
                options.placements = named(value, placement::Placement::parse)
                    .ok_or(format!("--placement {value}: shared, apart or both"))?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// A comma-separated list of names, each read by `parse`; `None` if one is not a name it knows.
fn named<T>(value: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    value.split(',').map(parse).collect()
}

/// A comma-separated list of positive whole numbers.
fn numbers(option: &str, value: &str) -> Result<Vec<usize>, String> {
    value
        .split(',')
        .map(|part| part.parse().ok().filter(|number| *number > 0))
        .collect::<Option<_>>()
        .ok_or(format!("{option} {value}: positive whole numbers, comma-separated"))
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
        Mode::Withdrawals => withdrawals::run(&options, &client, &backend, &info.key_id, handle).await,
        Mode::Deposits => deposits::run(&options, &backend, &info.key_id).await,
        Mode::Pkcs11 => pkcs11::run(&options, handle).await,
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
