//! What the command-line tests share: the `ethkms` program with a clean environment (or pointed at
//! LocalStack and anvil), running it, and a wallet manager on the same services.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_provider::Provider;
use assert_cmd::Command;
use ethkms::aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms::backend::KeyBackend;
use ethkms::{ChainSettings, WalletManager};
use ethkms_test_support::Services;
use serde_json::Value;

/// `ethkms` with a clean environment: only what is set here (and `PATH`, `HOME`).
pub(crate) fn bare() -> Command {
    let mut command = Command::cargo_bin("ethkms").unwrap();
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
        .env("AWS_CONFIG_FILE", "/nonexistent/ethkms/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/ethkms/credentials");
    command.timeout(Duration::from_secs(120));
    command
}

/// `ethkms` pointed at LocalStack and anvil through the standard variables.
pub(crate) fn ethkms(services: &Services) -> Command {
    let mut command = bare();
    command
        .env("AWS_ENDPOINT_URL", &services.kms_endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("ETH_RPC_URL", &services.rpc_url);
    command
}

/// Runs and returns standard output, asserting success.
pub(crate) fn ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Runs and returns (exit code, standard error), asserting failure.
pub(crate) fn fails(command: &mut Command) -> (i32, String) {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "{command:?} should have failed: {}", String::from_utf8_lossy(&output.stdout));
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

pub(crate) fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"))).collect()
}

pub(crate) async fn manager(services: &Services) -> WalletManager {
    let config = AwsKmsConfig::with_endpoint(
        services.kms_endpoint.clone(),
        "us-east-1",
        StaticCredentials::new("test", "test", None),
    );
    let backend: Arc<dyn KeyBackend> = Arc::new(AwsKmsBackend::new(config).await.unwrap());
    WalletManager::with_backend(backend, ChainSettings::new(services.rpc_url.parse().unwrap())).unwrap()
}

pub(crate) async fn fund(manager: &WalletManager, address: Address) {
    let ten_ether = U256::from(10u128.pow(19));
    let () = manager.provider().raw_request("anvil_setBalance".into(), (address, ten_ether)).await.unwrap();
}
