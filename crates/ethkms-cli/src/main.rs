#![doc = include_str!("../README.md")]

mod cli;
mod commands;
mod exit;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(cli.global.verbose, serving))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(serving)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(Exit::Failure.code());
        }
    };
    let (json, verbose) = (cli.global.json, cli.global.verbose);
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if json {
                eprintln!("{}", serde_json::json!({ "error": error.message, "exit_code": error.exit.code() }));
            } else {
                eprintln!("error: {}", error.message);
            }
            if let (true, Some(detail)) = (verbose > 0, &error.detail) {
                eprintln!("detail: {detail}");
            }
            ExitCode::from(error.exit.code())
        }
    }
}

/// What is logged: `RUST_LOG` if set; else by `-v`. By default only ethkms's own warnings and errors,
/// not those of the AWS SDK or the HTTP stack (an error that matters reaches the user as the error);
/// `ethkms serve` logs as `ethkms-server` does.
fn log_filter(verbose: u8, serving: bool) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    EnvFilter::new(match (verbose, serving) {
        (0, false) => "off,ethkms=warn",
        (0, true) => "warn,ethkms_server=info,ethkms::commands::serve=info",
        (1, _) => "info,ethkms=debug",
        _ => "debug",
    })
}
