//! `cargo xtask`: every piece of automation in the ethkms workspace, in Rust, with few dependencies.
//!
//! ```text
//! cargo xtask ci                      the whole check CI runs (the README's test command)
//! cargo xtask nostd                   prove ethkms-core builds without std
//! cargo xtask fuzz [--seconds N] [TARGET...]   run the fuzz targets
//! cargo xtask fuzz-seeds              rewrite the committed seed corpus from the test vectors
//! cargo xtask bench [core|kms|eth|cli] run the benchmarks (all but core start the services)
//! cargo xtask services up|down|status start or stop LocalStack KMS and anvil on 127.0.0.1
//! cargo xtask tools                   install the helper tools (cargo-deny, cargo-fuzz) if missing
//! cargo xtask demo [--keep]           the whole job end to end on LocalStack and anvil, through the CLI
//! cargo xtask soak [--seeds N] [--first S] [--withdrawals N]   the long exactly-once fault campaigns
//! cargo xtask schemathesis [--max-examples N] [--seed S]   the server's REST API against its OpenAPI document
//! ```

mod bench;
mod ci;
mod command;
mod demo;
mod fuzz;
mod nostd;
mod schemathesis;
mod services;
mod soak;
#[cfg(test)]
mod tidy;
mod tools;

use std::process::ExitCode;

/// Errors are reported to the user as text: every failure says what failed and what to do.
pub(crate) type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const USAGE: &str = "usage: cargo xtask <ci | nostd | fuzz [--seconds N] [TARGET...] | fuzz-seeds | bench [core|kms|eth|cli] | \
                     services up|down|status | tools | demo [--keep] | \
                     soak [--seeds N] [--first S] [--withdrawals N] | schemathesis [--max-examples N] [--seed S]>";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match run(&arguments) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(arguments: &[String]) -> Result {
    let (task, rest) = arguments.split_first().ok_or(USAGE)?;
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (task.as_str(), rest.as_slice()) {
        ("ci", []) => ci::run_all(),
        ("nostd", []) => nostd::run(),
        ("fuzz", options) => fuzz::run(options),
        ("fuzz-seeds", []) => fuzz::write_seeds(),
        ("bench", options) => bench::run(options),
        ("services", [action]) => services::run(action),
        ("tools", []) => tools::install_all(),
        ("demo", options) => demo::run(options),
        ("soak", options) => soak::run_soak(options),
        ("schemathesis", options) => schemathesis::run(options),
        _ => Err(USAGE.into()),
    }
}
