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
//! Usage: `ethkms-bench kms [--seconds S] [--rounds R] [--concurrency 1,8,32]` with
//! `ETHKMS_TEST_KMS_ENDPOINT` pointing at LocalStack (`cargo xtask bench kms` does all of this).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::B256;
use alloy_signer::Signer;
use alloy_signer_aws::AwsSigner;
use ethkms_aws::aws_sdk_kms::primitives::Blob;
use ethkms_aws::aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use ethkms_aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};

struct Options {
    seconds: f64,
    rounds: usize,
    concurrency: Vec<usize>,
}

fn options() -> Result<Options, String> {
    let mut options = Options { seconds: 3.0, rounds: 3, concurrency: vec![1, 8, 32] };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut arguments = arguments.iter().map(String::as_str);
    match arguments.next() {
        Some("kms") => {}
        other => {
            return Err(format!(
                "usage: ethkms-bench kms [--seconds S] [--rounds R] [--concurrency 1,8,32]; got {other:?}"
            ));
        }
    }
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let endpoint = std::env::var("ETHKMS_TEST_KMS_ENDPOINT")
        .map_err(|_| "ETHKMS_TEST_KMS_ENDPOINT is not set: start LocalStack with `cargo xtask services up`")?;
    let config = AwsKmsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.clone()),
        credentials: Some(StaticCredentials::new("test", "test", None)),
        ..AwsKmsConfig::default()
    };
    let backend = AwsKmsBackend::new(config).await?;
    let client = backend.client().clone();
    let backend: Arc<dyn KeyBackend> = Arc::new(backend);
    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms-bench")).await?;
    let key = KeyRef::new(info.key_id.clone())?;
    let handle = Arc::new(KeyHandle::open(Arc::clone(&backend), key).await?);
    let alloy = Arc::new(AwsSigner::new(client.clone(), info.key_id.clone(), Some(1)).await?);
    assert_eq!(alloy.address().0.0, handle.address().0, "alloy and ethkms disagree on the address");

    println!(
        "LocalStack KMS at {endpoint}; key {}; {} s per measurement, median of {} rounds",
        info.key_id, options.seconds, options.rounds
    );
    println!();
    println!(
        "| concurrency | bare SDK Sign/s | ethkms sig/s | ethkms overhead | alloy-signer-aws sig/s | ethkms ÷ alloy |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for &concurrency in &options.concurrency {
        let (mut bare, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            let (client, key_id) = (client.clone(), info.key_id.clone());
            bare.push(
                rate(concurrency, options.seconds, move |index| {
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
                .await,
            );
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
