//! `cargo xtask bench [core|kms|pkcs11|eth|withdrawals|deposits|cli]`: runs the benchmarks and prints their results as ratios, for the README.
//!
//! - `core`: the criterion benchmark `kms_signature_to_ethereum` (ethkms-core) times five ways of
//!   turning a KMS signature into an Ethereum signature in one run (ours plain and with a precomputed key
//!   among them); this prints each mean and its ratio to the bare `verify_prehash` floor and to ethkms-core.
//! - `kms`: the `bench/` workspace measures signatures per second against LocalStack (started here)
//!   at concurrency 1, 8 and 32: a bare `aws-sdk-kms` Sign loop, ethkms's `KeyHandle`, and
//!   `alloy-signer-aws`, interleaved in one run.
//! - `pkcs11`: signatures per second on the SoftHSM2 token at concurrency 1, 8 and 32: raw `C_Sign` calls
//!   (a session per thread), ethkms's `KeyHandle` on `Pkcs11Backend`, and `KeyHandle` on LocalStack's KMS,
//!   interleaved in one run.
//! - `eth`: signed-and-mined ether transfers per second from one KMS key to anvil through the alloy
//!   provider with `KmsSigner`, interleaved with the bare `Sign` loop.
//! - `withdrawals`: the signing service (`ethkms-server`, release build) with 1,000 withdrawals per
//!   round, 64 in flight, posted until mined, against the bare `Sign` rate at the same concurrency; with
//!   `--journal postgres --replicas 1,3` also on a PostgreSQL journal with one and three replicas, one and
//!   four keys, beside SQLite in the same run; each setup with every process on shared CPUs and with
//!   LocalStack on a CPU of its own (`--placement shared,apart`, both unless told).
//! - `deposits`: deposit addresses derived per second on one core (against the 1,000,000/s target), and
//!   on anvil the gas per swept deposit (ether and ERC-20, first sweep with the deployment and later
//!   sweeps, batches of 1, 10 and 50) beside the peers' published figures, and the KMS `Sign` requests per
//!   100 swept deposits; the same sweeps on the clone-with-immutable-args alternative
//!   (`crates/ethkms-deposits/contracts/alternatives`, measured only), side by side with ours.
//! - `cli`: wall time of `ethkms wallet address` and `ethkms sign message` (release build) against
//!   `cast wallet address --aws` and `cast wallet sign --aws` on the same LocalStack key, alternating.
//!
//! The services are started once for all the live benchmarks of a run, and when it ends (or fails)
//! those it started are stopped again; services that were already running stay running.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::Result;
use crate::command::{cargo, run as run_command, target_dir};
use crate::services::Session;

/// `cargo xtask bench [core|kms|pkcs11|eth|withdrawals|deposits|cli] [options for that benchmark]`; all when none is
/// named.
pub(crate) fn run(options: &[&str]) -> Result {
    match options {
        ["core", rest @ ..] => core(rest),
        [mode @ ("kms" | "pkcs11" | "eth" | "deposits"), rest @ ..] => live(&services()?, mode, rest),
        ["withdrawals", rest @ ..] => withdrawals(&services()?, rest),
        ["cli", rest @ ..] => {
            let runs = cli_runs(rest)?;
            cli(&services()?, runs)
        }
        [] => {
            core(&[])?;
            let session = services()?;
            live(&session, "kms", &[])?;
            live(&session, "pkcs11", &[])?;
            live(&session, "eth", &[])?;
            withdrawals(&session, &[])?;
            live(&session, "deposits", &[])?;
            cli(&session, cli_runs(&[])?)
        }
        _ => Err(
            "usage: cargo xtask bench [core [criterion options] | kms|pkcs11|eth|withdrawals|deposits [--seconds S] [--rounds R] [--concurrency 1,8] [--journal sqlite,postgres --replicas 1,3 --keys 1,4] [--placement shared,apart] | cli [--runs N]]"
                .into(),
        ),
    }
}

/// The services for the live benchmarks, saying which of them this run started (and so stops again).
fn services() -> Result<Session> {
    let session = Session::start()?;
    let started = session.started();
    if started.is_empty() {
        eprintln!("xtask: bench: the services were already running; they stay running");
    } else {
        eprintln!("xtask: bench: started {}; stopped again when the benchmarks end", started.join(" and "));
    }
    Ok(session)
}

fn core(options: &[&str]) -> Result {
    run_command(cargo().args(["bench", "--locked", "-p", "ethkms-core", "--bench", "parity", "--"]).args(options))?;
    print_parity_table(&target_dir().join("criterion/kms_signature_to_ethereum"))
}

/// A benchmark of the `bench/` workspace against the live services.
fn live(session: &Session, mode: &str, options: &[&str]) -> Result {
    let services = session.env();
    let mut command = cargo();
    command.args(["run", "--release", "--locked", "--manifest-path", "bench/Cargo.toml", "--", mode]).args(options);
    services.apply(&mut command);
    run_command(&mut command)
}

/// The signing service end to end: builds `ethkms-server` (release) and runs the `bench/` workspace's
/// withdrawal benchmark against it.
fn withdrawals(session: &Session, options: &[&str]) -> Result {
    let services = session.env();
    run_command(cargo().args(["build", "--release", "--locked", "-p", "ethkms-server"]))?;
    let mut command = cargo();
    command
        .args(["run", "--release", "--locked", "--manifest-path", "bench/Cargo.toml", "--", "withdrawals"])
        .args(options)
        .env("ETHKMS_BENCH_SERVER", target_dir().join("release/ethkms-server"))
        // For the benchmark's table of where the CPU goes.
        .env("ETHKMS_BENCH_PIDS", crate::services::recorded_pids());
    services.apply(&mut command);
    run_command(&mut command)
}

fn print_parity_table(directory: &Path) -> Result {
    let mean = |name: &str| -> Result<f64> {
        let path = directory.join(name).join("new/estimates.json");
        let text = std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let estimates: Value = serde_json::from_str(&text)?;
        estimates["mean"]["point_estimate"].as_f64().ok_or_else(|| format!("{}: no mean", path.display()).into())
    };
    let floor = mean("verify_prehash")?;
    let ours = mean("ethkms_core")?;
    println!("\n| approach (per signature) | mean | ÷ verify_prehash | ÷ ethkms-core |");
    println!("| --- | ---: | ---: | ---: |");
    for name in ["ethkms_core", "ethkms_core_precomputed", "recover_v27_then_v28", "trial_recovery", "verify_prehash"] {
        let value = mean(name)?;
        println!("| `{name}` | {:.1} µs | {:.2}× | {:.2}× |", value / 1000.0, value / floor, value / ours);
    }
    Ok(())
}

/// Wall time of whole `ethkms` and `cast` invocations on one LocalStack key, run alternately.
fn cli(session: &Session, runs: usize) -> Result {
    let services = session.env();
    run_command(cargo().args(["build", "--release", "--locked", "-p", "ethkms-cli"]))?;
    let ethkms = target_dir().join("release/ethkms");
    let environment = |command: &mut Command| {
        services.apply(command);
        command.env("AWS_ENDPOINT_URL", &services.kms_endpoint);
    };
    let mut create = Command::new(&ethkms);
    create.args(["--json", "wallet", "create", "--description", "ethkms cli bench"]);
    environment(&mut create);
    let created = create.output()?;
    let wallet: Value = serde_json::from_slice(&created.stdout)
        .map_err(|error| format!("ethkms wallet create: {error}: {}", String::from_utf8_lossy(&created.stderr)))?;
    let key_id = wallet["key_id"].as_str().ok_or("wallet create printed no key_id")?.to_owned();
    let message = "ethkms cli benchmark";
    let cases: [(&str, Vec<&str>, Vec<&str>); 2] = [
        ("wallet address", vec!["wallet", "address", &key_id], vec!["wallet", "address", "--aws"]),
        ("sign message", vec!["sign", "message", &key_id, message], vec!["wallet", "sign", "--aws", message]),
    ];
    println!("\n{runs} runs each, alternating, LocalStack KMS key {key_id}\n");
    println!("| command | ethkms median | cast --aws median | ethkms ÷ cast |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, ours, theirs) in cases {
        let time = |program: &Path, arguments: &[&str]| -> Result<f64> {
            let mut command = Command::new(program);
            command.args(arguments).env("AWS_KMS_KEY_ID", &key_id);
            environment(&mut command);
            let started = Instant::now();
            let output = command.output()?;
            if !output.status.success() {
                return Err(format!(
                    "{} {arguments:?}: {}",
                    program.display(),
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            }
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        };
        // One untimed run each, so neither pays for a cold disk cache.
        time(&ethkms, &ours)?;
        time(&services.cast, &theirs)?;
        let (mut ethkms_times, mut cast_times) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ethkms_times.push(time(&ethkms, &ours)?);
            cast_times.push(time(&services.cast, &theirs)?);
        }
        let (ours, theirs) = (median(ethkms_times), median(cast_times));
        println!("| `{name}` | {ours:.1} ms | {theirs:.1} ms | {:.2} |", ours / theirs);
    }
    Ok(())
}

/// `[--runs N]` of `bench cli`: how many timed runs of each command (20 by default).
fn cli_runs(options: &[&str]) -> Result<usize> {
    match options {
        [] => Ok(20),
        ["--runs", runs] => Ok(runs.parse().map_err(|_| format!("--runs: `{runs}` is not a whole number"))?),
        _ => Err("usage: cargo xtask bench cli [--runs N]".into()),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
