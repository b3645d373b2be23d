//! What each command does. Output goes to standard output, as text or (with `--json`) one JSON object
//! per line whose shape the CLI tests pin down; progress and spinners go to standard error.
//!
//! Every command checks its arguments (keys, addresses, amounts, tags, hexadecimal) before it builds the
//! key backend or talks to the network, so a typo is reported as one, whatever the configuration.

mod allowlist;
mod approvals;
mod audit;
mod deposits;
mod policy;
mod send;
mod serve;
mod sign;
mod verify;
mod wallet;
mod webhook;

use std::io::Read;

use alloy_primitives::{Address, U256, hex};
use ethkms::aws::AwsKmsConfig;
use ethkms::backend::{KeyRef, Tag};
use ethkms::pkcs11::{PinSource, Pkcs11Config};
use ethkms::units::{parse_address, parse_value};
use ethkms::{BackendSettings, ChainSettings, WalletManager};
use serde_json::Value;

use crate::cli::{
    AllowlistCommand, ApprovalsCommand, AuditCommand, BackendKind, Cli, Command, Global, PolicyCommand, WebhookCommand,
};
use crate::exit::CliError;

/// Prints results as text or JSON lines.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn emit(self, value: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }
}

pub(crate) async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let output = Output { json: global.json };
    let result = match command {
        Command::Policy(PolicyCommand::Iam(args)) => policy::iam(&args),
        Command::Verify(args) => verify::verify(output, &args),
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(output, &args),
        Command::Webhook(WebhookCommand::Verify(args)) => webhook::verify(output, &args),
        Command::Approve(args) => approvals::approve(&global, output, &args).await,
        Command::Approvals(ApprovalsCommand::List(args)) => approvals::list(output, &args).await,
        Command::Allowlist(AllowlistCommand::List(args)) => allowlist::list(output, &args).await,
        Command::Allowlist(AllowlistCommand::Approve(args)) => allowlist::approve(&global, output, &args).await,
        Command::Serve(args) => serve::serve(&global, &args).await,
        Command::Wallet(command) => wallet::run(&global, output, command).await,
        Command::Balance(args) => wallet::balance(&global, output, &args).await,
        Command::Sign(command) => sign::run(&global, output, command).await,
        Command::Send(args) => send::send(&global, output, &args).await,
        Command::Deposits(command) => deposits::run(&global, output, command).await,
    };
    // A token that cannot be reached says so itself (naming the token); only KMS has an endpoint to name.
    result.map_err(|error| match global.backend {
        BackendKind::Aws => error.at_endpoint(&kms_endpoint(&global)),
        BackendKind::Pkcs11 | BackendKind::Memory => error,
    })
}

/// The wallet manager for the global options: call it once the arguments are checked.
pub(crate) async fn connect(global: &Global) -> Result<WalletManager, CliError> {
    let chain = ChainSettings { chain_id: global.chain_id, ..ChainSettings::new(global.rpc_url.clone()) };
    tracing::info!(backend = ?global.backend, rpc_url = %global.rpc_url, "connecting");
    Ok(WalletManager::new(backend_settings(global)?, chain).await?)
}

/// Where the keys live, from the global options.
///
/// # Errors
/// A usage error when `--backend pkcs11` lacks its module or token.
pub(crate) fn backend_settings(global: &Global) -> Result<BackendSettings, CliError> {
    Ok(match global.backend {
        BackendKind::Aws => BackendSettings::Aws(AwsKmsConfig {
            region: global.aws_region.clone(),
            profile: global.aws_profile.clone(),
            endpoint_url: global.kms_endpoint.clone(),
            ..AwsKmsConfig::default()
        }),
        BackendKind::Pkcs11 => {
            let missing =
                |flag: &str, variable: &str| CliError::usage(format!("--backend pkcs11 needs {flag} (or {variable})"));
            let module =
                global.pkcs11_module.clone().ok_or_else(|| missing("--pkcs11-module", "ETHKMS_PKCS11_MODULE"))?;
            let token = global.pkcs11_token.clone().ok_or_else(|| missing("--pkcs11-token", "ETHKMS_PKCS11_TOKEN"))?;
            let pin = global.pkcs11_pin_file.clone().map_or_else(PinSource::default, PinSource::File);
            BackendSettings::Pkcs11(Pkcs11Config::new(module, token).pin(pin))
        }
        BackendKind::Memory => BackendSettings::Memory { seed: None },
    })
}

/// The KMS endpoint the options and the environment name, as the SDK picks it, for error messages.
fn kms_endpoint(global: &Global) -> String {
    let from_env = || {
        ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
    };
    if let Some(endpoint) = global.kms_endpoint.clone().or_else(from_env) {
        return endpoint;
    }
    let region = global
        .aws_region
        .clone()
        .or_else(|| ["AWS_REGION", "AWS_DEFAULT_REGION"].into_iter().find_map(|name| std::env::var(name).ok()));
    match region {
        Some(region) => format!("https://kms.{region}.amazonaws.com"),
        None => "the region's AWS KMS endpoint".into(),
    }
}

pub(crate) fn key_ref(text: &str) -> Result<KeyRef, CliError> {
    Ok(KeyRef::new(text)?)
}

pub(crate) fn parse_tags(tags: &[String]) -> Result<Vec<Tag>, CliError> {
    tags.iter().map(|tag| tag.parse::<Tag>().map_err(CliError::from)).collect()
}

pub(crate) fn decode_hex(what: &str, text: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(text.trim()).map_err(|error| CliError::usage(format!("{what} `{text}` is not hexadecimal: {error}")))
}

pub(crate) fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    let mut text = String::new();
    let result = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|read| text = read)
    };
    result.map_err(|error| CliError::usage(format!("cannot read {}: {error}", path.display())))?;
    Ok(text)
}

pub(crate) fn value(text: &str) -> Result<U256, CliError> {
    parse_value(text).map_err(CliError::usage)
}

pub(crate) fn address(text: &str) -> Result<Address, CliError> {
    parse_address(text).map_err(CliError::usage)
}
