//! `ethkms`: Ethereum wallets whose keys live in AWS KMS, from the command line.

mod cli;
mod commands;
mod policy;

use std::fmt;
use std::process::ExitCode;

use clap::Parser;
use ethkms::backend::BackendError;
use ethkms::eth::SignerError;

use crate::cli::Cli;

/// What the process exits with; see [`cli::EXIT_CODES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Credentials = 4,
    KeyUnusable = 5,
    Network = 6,
    Transaction = 7,
    InvalidSignature = 8,
}

/// An error for the user: one message (which ends with a hint where there is one) and an exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    pub(crate) message: String,
    /// The error chain, shown with `-v`.
    pub(crate) detail: Option<String>,
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { exit: Exit::Usage, message: message.into(), detail: None }
    }

    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into(), detail: None }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn backend_exit(error: &BackendError) -> Exit {
    match error {
        BackendError::NotFound { .. } => Exit::NotFound,
        BackendError::AccessDenied { .. }
        | BackendError::MissingCredentials { .. }
        | BackendError::InvalidCredentials { .. }
        | BackendError::Configuration { .. } => Exit::Credentials,
        BackendError::Disabled { .. }
        | BackendError::PendingDeletion { .. }
        | BackendError::InvalidState { .. }
        | BackendError::WrongKeySpec { .. }
        | BackendError::WrongKeyUsage { .. }
        | BackendError::InvalidPublicKey { .. } => Exit::KeyUnusable,
        BackendError::Throttled { .. } | BackendError::Transport { .. } | BackendError::Timeout { .. } => Exit::Network,
        BackendError::Service { retryable: true, .. } => Exit::Network,
        BackendError::InvalidKeyReference { .. }
        | BackendError::InvalidArgument { .. }
        | BackendError::AliasExists { .. } => Exit::Usage,
        _ => Exit::Failure,
    }
}

impl From<BackendError> for CliError {
    fn from(error: BackendError) -> Self {
        Self { exit: backend_exit(&error), message: error.to_string(), detail: Some(format!("{error:?}")) }
    }
}

impl From<SignerError> for CliError {
    fn from(error: SignerError) -> Self {
        let exit = match &error {
            SignerError::Backend(backend) => backend_exit(backend),
            SignerError::Rpc(_) => Exit::Network,
            SignerError::ReceiptTimeout { .. } | SignerError::Reverted { .. } => Exit::Transaction,
            SignerError::ChainIdMismatch { .. }
            | SignerError::ReplayableLegacyTransaction
            | SignerError::AuthorizationChainMismatch { .. }
            | SignerError::MissingChainId
            | SignerError::TypedData(_)
            | SignerError::InvalidArgument(_) => Exit::Usage,
            _ => Exit::Failure,
        };
        let message = match &error {
            SignerError::Rpc(message) => {
                format!("Ethereum node: {message}; check --rpc-url / ETH_RPC_URL and that the node is reachable")
            }
            other => other.to_string(),
        };
        Self { exit, message, detail: Some(format!("{error:?}")) }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.global.verbose {
        0 => "warn",
        1 => "info,ethkms=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    let (json, verbose) = (cli.global.json, cli.global.verbose);
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if json {
                eprintln!("{}", serde_json::json!({ "error": error.message, "exit_code": error.exit as u8 }));
            } else {
                eprintln!("error: {}", error.message);
            }
            if let (true, Some(detail)) = (verbose > 0, &error.detail) {
                eprintln!("detail: {detail}");
            }
            ExitCode::from(error.exit as u8)
        }
    }
}
