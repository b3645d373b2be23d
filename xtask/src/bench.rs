//! `cargo xtask bench [core|kms|eth]`: runs the benchmarks and prints their results as ratios, for the README.
//!
//! - `core`: the criterion benchmark `kms_signature_to_ethereum` (ethkms-core) times four ways of
//!   turning a KMS signature into an Ethereum signature in one run; this prints each mean and its ratio
//!   to the bare `verify_prehash` floor and to ethkms-core.
//! - `kms`: the `bench/` workspace measures signatures per second against LocalStack (started here)
//!   at concurrency 1, 8 and 32: a bare `aws-sdk-kms` Sign loop, ethkms's `KeyHandle`, and
//!   `alloy-signer-aws`, interleaved in one run.
//! - `eth`: signed-and-mined ether transfers per second from one KMS key to anvil through the alloy
//!   provider with `KmsSigner`, interleaved with the bare `Sign` loop.

use std::path::Path;

use serde_json::Value;

use crate::Result;
use crate::command::{cargo, run as run_command, workspace_root};
use crate::services;

/// `cargo xtask bench [core|kms] [options for that benchmark]`; both when none is named.
pub(crate) fn run(options: &[&str]) -> Result {
    match options {
        ["core", rest @ ..] => core(rest),
        [mode @ ("kms" | "eth"), rest @ ..] => live(mode, rest),
        [] => {
            core(&[])?;
            live("kms", &[])?;
            live("eth", &[])
        }
        _ => Err(
            "usage: cargo xtask bench [core [criterion options] | kms|eth [--seconds S] [--rounds R] [--concurrency 1,8]]"
                .into(),
        ),
    }
}

fn core(options: &[&str]) -> Result {
    run_command(cargo().args(["bench", "--locked", "-p", "ethkms-core", "--bench", "parity", "--"]).args(options))?;
    print_parity_table(&workspace_root().join("target/criterion/kms_signature_to_ethereum"))
}

/// A benchmark of the `bench/` workspace against the live services, which are started first.
fn live(mode: &str, options: &[&str]) -> Result {
    let services = services::up()?;
    let mut command = cargo();
    command.args(["run", "--release", "--locked", "--manifest-path", "bench/Cargo.toml", "--", mode]).args(options);
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
    for name in ["ethkms_core", "recover_v27_then_v28", "trial_recovery", "verify_prehash"] {
        let value = mean(name)?;
        println!("| `{name}` | {:.1} µs | {:.2}× | {:.2}× |", value / 1000.0, value / floor, value / ours);
    }
    Ok(())
}
