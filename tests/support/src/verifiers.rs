//! Signatures checked by code nobody in this project wrote: Python eth-account and ethers v6 (scripts
//! that recover the signer of each case they are given) and foundry's cast.
//!
//! The scripts live in `crates/ethkms-eth/tests/verifiers/` (where `xtask demo` also finds them); each
//! reads a JSON list of cases on standard input, `{"name", "kind": "tx"|"message"|"typed", ...}`, and
//! prints one `{"name", "address"}` or `{"name", "error"}` per case, in order.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

use crate::service_from_env;

/// What a verifier recovered from one case: the signer's address (EIP-55), or why it could not (and for
/// a signing script, the signature it made).
#[derive(Deserialize, Debug)]
pub struct Recovered {
    /// The case's name.
    pub name: String,
    /// The address recovered (or that signed).
    pub address: Option<String>,
    /// The signature made, from a signing script.
    pub signature: Option<String>,
    /// Why nothing was recovered.
    pub error: Option<String>,
}

/// The path of the verifier script `name`.
#[must_use]
pub fn verifier_script(name: &str) -> String {
    format!("{}/../../crates/ethkms-eth/tests/verifiers/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// ethers v6 (`node` with `ETHKMS_TEST_NODE_MODULES`), ready for [`run_verifier`]; `None` to skip.
///
/// # Panics
/// When the modules are missing in CI (see [`service_from_env`]).
#[must_use]
pub fn ethers() -> Option<Command> {
    let node_modules = service_from_env("ETHKMS_TEST_NODE_MODULES", "the npm verifiers")?;
    let mut node = Command::new("node");
    node.arg(verifier_script("ethers_recover.cjs")).env("NODE_PATH", node_modules);
    Some(node)
}

/// ethers v6 signing EIP-712 messages (`ethers_sign_typed.cjs`), ready for [`run_verifier`] with cases
/// `{"name", "private_key", "json"}`; `None` to skip.
///
/// # Panics
/// When the modules are missing in CI (see [`service_from_env`]).
#[must_use]
pub fn ethers_signer() -> Option<Command> {
    let node_modules = service_from_env("ETHKMS_TEST_NODE_MODULES", "the npm verifiers")?;
    let mut node = Command::new("node");
    node.arg(verifier_script("ethers_sign_typed.cjs")).env("NODE_PATH", node_modules);
    Some(node)
}

/// Python eth-account (`ETHKMS_TEST_PYTHON`), ready for [`run_verifier`]; `None` to skip.
///
/// # Panics
/// When the interpreter is missing in CI (see [`service_from_env`]).
#[must_use]
pub fn eth_account() -> Option<Command> {
    let python = service_from_env("ETHKMS_TEST_PYTHON", "the eth-account verifier")?;
    let mut command = Command::new(python);
    command.arg(verifier_script("eth_account_recover.py"));
    Some(command)
}

/// Runs a verifier script with `cases` on standard input and returns what it recovered, in order.
///
/// # Panics
/// If the script cannot be run, fails, or prints something else than the list of results.
#[must_use]
pub fn run_verifier(mut command: Command, cases: &Value) -> Vec<Recovered> {
    let shown = format!("{command:?}");
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(cases.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{shown}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{shown}: {error}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// foundry's cast (`ETHKMS_TEST_CAST`); `None` to skip.
///
/// # Panics
/// When it is missing in CI (see [`service_from_env`]).
#[must_use]
pub fn cast() -> Option<String> {
    service_from_env("ETHKMS_TEST_CAST", "cast")
}

/// Points `command` (a `cast … --aws`) at the KMS key `key_id` on LocalStack at `kms_endpoint`.
pub fn cast_aws_env(command: &mut Command, kms_endpoint: &str, key_id: &str) {
    command
        .env("AWS_ENDPOINT_URL", kms_endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_KMS_KEY_ID", key_id);
}

/// `cast decode-transaction`: the transaction `raw` (`0x` hex) as cast reads it, with the `signer` it
/// recovered.
///
/// The transaction goes on standard input (a blob transaction with its sidecar is longer than a command
/// line may be). cast 1.7 prints the JSON object as a JSON string; both forms are accepted.
///
/// # Panics
/// If cast fails or prints something else.
#[must_use]
pub fn cast_decode_transaction(cast: &str, raw: &str) -> Value {
    let mut command = Command::new(cast);
    command.arg("decode-transaction").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(raw.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "cast decode-transaction: {}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("cast decode-transaction: {error}: {}", String::from_utf8_lossy(&output.stdout))
    });
    match printed {
        Value::String(text) => serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}")),
        object => object,
    }
}

/// Runs the verifier `command` (`name` in messages) on `cases` and checks that it recovered `expected`
/// (an EIP-55 address) from every one of them.
///
/// # Panics
/// If the verifier fails, answers for another number of cases, or recovers anything else from a case.
pub fn assert_every_case_recovers(name: &str, command: Command, cases: &Value, expected: &str) {
    let recovered = run_verifier(command, cases);
    assert_eq!(recovered.len(), cases.as_array().map_or(0, Vec::len), "{name}: {recovered:?}");
    for case in recovered {
        assert_eq!(case.address.as_deref(), Some(expected), "{name} on {}: {:?}", case.name, case.error);
    }
}
