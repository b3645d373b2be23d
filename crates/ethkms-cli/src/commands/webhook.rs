//! `ethkms webhook verify`: whether a webhook request of the service is genuine — its `Ethkms-Signature`
//! header checked against its raw body with the client's secret, its timestamp within the window — offline,
//! for receivers' tests. Exit 0 if it is; 8 (a signature mismatch, or a timestamp outside the window) or 2
//! (a malformed header, no secret) if not, naming what was wrong.

use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ethkms_server::webhooks::signature::{VerifyError, WebhookSecret, verify as check};
use serde_json::{Value, json};

use super::Output;
use crate::cli::WebhookVerifyArgs;
use crate::exit::{CliError, Exit};

/// The secret, from the variable or the file named (never printed).
fn secret(args: &WebhookVerifyArgs) -> Result<WebhookSecret, CliError> {
    let (text, source) = match (&args.secret_env, &args.secret_file) {
        (Some(variable), _) => (
            std::env::var(variable).map_err(|_| {
                CliError::usage(format!("--secret-env: the environment variable `{variable}` is not set"))
            })?,
            format!("the environment variable `{variable}`"),
        ),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .map_err(|error| CliError::usage(format!("--secret-file {}: {error}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            format!("`{}`", path.display()),
        ),
        (None, None) => return Err(CliError::usage("give --secret-env or --secret-file")),
    };
    WebhookSecret::new(&text).ok_or_else(|| CliError::usage(format!("the secret in {source} is empty")))
}

pub(super) fn verify(output: Output, args: &WebhookVerifyArgs) -> Result<(), CliError> {
    let secret = secret(args)?;
    let mut body = Vec::new();
    match &args.body_file {
        Some(path) => {
            body = std::fs::read(path)
                .map_err(|error| CliError::usage(format!("--body-file {}: {error}", path.display())))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|error| CliError::usage(format!("reading the body from standard input: {error}")))?;
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let event_id = parsed.as_ref().and_then(|body| body["id"].as_str().map(str::to_owned));
    let event_type = parsed.as_ref().and_then(|body| body["type"].as_str().map(str::to_owned));
    match check(&secret, &args.signature, &body, now, Duration::from_secs(args.tolerance_seconds)) {
        Ok(timestamp) => {
            output.emit(
                &json!({ "valid": true, "event_id": event_id, "type": event_type, "timestamp": timestamp }),
                || {
                    format!(
                        "valid: event {} ({}), signed at {timestamp}",
                        event_id.as_deref().unwrap_or("?"),
                        event_type.as_deref().unwrap_or("?")
                    )
                },
            );
            Ok(())
        }
        Err(error) => {
            let (reason, exit) = match &error {
                VerifyError::Malformed(_) => ("malformed_header", Exit::Usage),
                VerifyError::OutsideWindow { .. } => ("outside_window", Exit::InvalidSignature),
                _ => ("signature_mismatch", Exit::InvalidSignature),
            };
            output.emit(
                &json!({ "valid": false, "reason": reason, "message": error.to_string(), "event_id": event_id }),
                || format!("invalid: {error}"),
            );
            Err(CliError::new(exit, error.to_string()))
        }
    }
}
