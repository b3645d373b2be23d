//! `cargo xtask soak [--seeds N] [--first S] [--withdrawals N] [--replica-seeds N]`: the long fault
//! campaigns. Runs the exactly-once test of `ethkms-server` (withdrawals through a fault-injecting proxy,
//! `kill -9` restarts, an outage) for seeds `S..S+N` (default 1..=50, 150 withdrawals each) against
//! LocalStack and anvil, on each journal (SQLite, and PostgreSQL with one replica), printing each seed; a
//! failing seed is re-run alone with `ETHKMS_FAULT_SEEDS=<seed>`. Then the replica tests (three replicas,
//! `kill -9` and `SIGSTOP` of a key's owner, PostgreSQL restarted) for seeds `S..S+M` (`--replica-seeds`,
//! default 10; re-run one with `ETHKMS_REPLICA_SEEDS=<seed>`). CI runs three seeds of the first and one of
//! the second.

use crate::Result;
use crate::command::{cargo, run};
use crate::services;

pub(crate) fn run_soak(options: &[&str]) -> Result {
    let mut seeds: u64 = 50;
    let mut first: u64 = 1;
    let mut withdrawals: u64 = 150;
    let mut replica_seeds: u64 = 10;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value = |name: &str| -> Result<u64> {
            let text = options.next().ok_or_else(|| format!("{name} needs a number"))?;
            text.parse().map_err(|error| format!("{name} {text}: {error}").into())
        };
        match *option {
            "--seeds" => seeds = value("--seeds")?,
            "--first" => first = value("--first")?,
            "--withdrawals" => withdrawals = value("--withdrawals")?,
            "--replica-seeds" => replica_seeds = value("--replica-seeds")?,
            other => {
                return Err(format!(
                    "soak: unknown option `{other}` (--seeds N, --first S, --withdrawals N, --replica-seeds N)"
                )
                .into());
            }
        }
    }
    let list: Vec<String> = (first..first + seeds).map(|seed| seed.to_string()).collect();
    eprintln!("xtask soak: seeds {first}..{}, {withdrawals} withdrawals each", first + seeds - 1);
    let environment = services::up()?;
    let mut command = cargo();
    command
        .args(["test", "-p", "ethkms-server", "--test", "faults", "--locked", "--", "--nocapture"])
        .env("ETHKMS_REQUIRE_SERVICES", "1")
        .env("ETHKMS_FAULT_SEEDS", list.join(","))
        .env("ETHKMS_FAULT_WITHDRAWALS", withdrawals.to_string());
    environment.apply(&mut command);
    run(&mut command)?;
    if replica_seeds == 0 {
        return Ok(());
    }
    let list: Vec<String> = (first..first + replica_seeds).map(|seed| seed.to_string()).collect();
    eprintln!("xtask soak: replica tests, seeds {first}..{}", first + replica_seeds - 1);
    let mut command = cargo();
    command
        // One at a time: they restart the shared PostgreSQL cluster and time lease takeovers.
        .args([
            "test",
            "-p",
            "ethkms-server",
            "--test",
            "replicas",
            "--locked",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ETHKMS_REQUIRE_SERVICES", "1")
        .env("ETHKMS_REPLICA_SEEDS", list.join(","));
    environment.apply(&mut command);
    run(&mut command)
}
