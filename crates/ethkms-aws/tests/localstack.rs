//! `AwsKmsBackend` against a real KMS API: LocalStack on 127.0.0.1, started by `cargo xtask services up`
//! (which exports `ETHKMS_TEST_KMS_ENDPOINT`). In CI a missing LocalStack fails these tests; elsewhere
//! they say they were skipped.
//!
//! Besides the backend contract, the environment-driven behaviour (endpoint variables, missing
//! credentials, missing region) is checked in child processes with a controlled environment: the test
//! binary runs one of its own `#[ignore]`d `child_*` tests with `--ignored --exact`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ethkms_aws::{AwsKmsBackend, AwsKmsConfig};
use ethkms_backend::{BackendError, CreateKeyRequest, KeyBackend, KeyHandle, KeyRef};
use ethkms_test_support::kms::{localstack_backend, localstack_config};
use ethkms_test_support::{localstack, service_from_env};

fn endpoint() -> Option<String> {
    service_from_env("ETHKMS_TEST_KMS_ENDPOINT", "LocalStack KMS")
}

ethkms_backend::contract_tests!(async { localstack().await.map(|(_, backend)| backend) });

/// Runs the ignored test `name` of this binary in a child process whose environment is `vars` only
/// (plus `PATH`), and returns what it printed after `CHILD-OK `.
fn run_child(name: &str, vars: &[(&str, &str)]) -> String {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command.args(["--ignored", "--exact", name, "--nocapture", "--test-threads=1"]).env_clear();
    command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    // Never let the credential chain try the instance metadata service from a test.
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    command.env("AWS_CONFIG_FILE", "/nonexistent/ethkms-test/config");
    command.env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/ethkms-test/credentials");
    command.envs(vars.iter().copied());
    let output = command.output().expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child {name} failed:\n{stdout}\n{stderr}");
    // libtest prints the test's name on the same line, before the child's output.
    let report = stdout.split_once("CHILD-OK ").map(|(_, rest)| rest.lines().next().unwrap_or_default());
    report.unwrap_or_else(|| panic!("child {name} did not report:\n{stdout}\n{stderr}")).to_owned()
}

#[tokio::test]
async fn address_is_the_same_in_another_process_reached_through_the_endpoint_variables() {
    let Some(endpoint) = endpoint() else { return };
    let backend = localstack_backend(&endpoint).await;
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let expected = info.address.unwrap().to_string();
    let common = [("AWS_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    for variable in ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"] {
        let mut vars = common.to_vec();
        vars.push((variable, &endpoint));
        vars.push(("ETHKMS_CHILD_KEY", &info.key_id));
        let reported = run_child("child_prints_the_address_of_a_key_from_the_environment", &vars);
        assert_eq!(reported, expected, "through {variable}");
    }
}

#[tokio::test]
#[ignore = "run by address_is_the_same_in_another_process_reached_through_the_endpoint_variables"]
async fn child_prints_the_address_of_a_key_from_the_environment() {
    let key = KeyRef::new(std::env::var("ETHKMS_CHILD_KEY").expect("ETHKMS_CHILD_KEY")).unwrap();
    let backend: Arc<dyn KeyBackend> = Arc::new(AwsKmsBackend::from_env().await.unwrap());
    let handle = KeyHandle::open(backend, key).await.unwrap();
    println!("CHILD-OK {}", handle.address());
}

#[tokio::test]
async fn missing_credentials_are_a_typed_error_with_a_hint() {
    let Some(endpoint) = endpoint() else { return };
    let reported =
        run_child("child_reports_missing_credentials", &[("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", &endpoint)]);
    assert!(reported.contains("AWS_ACCESS_KEY_ID") && reported.contains("AWS_PROFILE"), "{reported}");
}

#[tokio::test]
#[ignore = "run by missing_credentials_are_a_typed_error_with_a_hint"]
async fn child_reports_missing_credentials() {
    let backend = AwsKmsBackend::from_env().await.unwrap();
    let key = KeyRef::new("alias/anything").unwrap();
    let error = backend.public_key(&key).await.unwrap_err();
    assert!(matches!(error, BackendError::MissingCredentials { .. }), "{error:?}");
    println!("CHILD-OK {}", error.to_string().replace('\n', " "));
}

#[tokio::test]
async fn missing_region_is_a_typed_error_with_a_hint() {
    if endpoint().is_none() {
        return;
    }
    let reported =
        run_child("child_reports_missing_region", &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")]);
    assert!(reported.contains("AWS_REGION"), "{reported}");
}

#[tokio::test]
#[ignore = "run by missing_region_is_a_typed_error_with_a_hint"]
async fn child_reports_missing_region() {
    let error = AwsKmsBackend::from_env().await.unwrap_err();
    assert!(matches!(error, BackendError::Configuration { .. }), "{error:?}");
    println!("CHILD-OK {error}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_retryable_transport_error() {
    if endpoint().is_none() {
        return;
    }
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let config = AwsKmsConfig {
        max_attempts: 1,
        connect_timeout: Duration::from_secs(2),
        ..localstack_config("http://127.0.0.1:9".into())
    };
    let backend = AwsKmsBackend::new(config).await.unwrap();
    let error = backend.sign_digest(&KeyRef::new("alias/x").unwrap(), &[1; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::Transport { .. } | BackendError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(error.key(), Some("alias/x"));
}

#[tokio::test]
async fn kms_signs_the_digest_as_given() {
    let Some((_, backend)) = localstack().await else {
        return;
    };
    // LocalStack rejects a digest of the wrong length as KMS does; ours are always 32 bytes, so check
    // instead that a signature over one digest does not verify for another.
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let key = KeyRef::new(info.key_id).unwrap();
    let handle = KeyHandle::open(Arc::clone(&backend), key.clone()).await.unwrap();
    let der = backend.sign_digest(&key, &[0x11; 32]).await.unwrap();
    assert!(ethkms_core::Signature::from_kms_der(&der, &[0x11; 32], handle.public_key()).is_ok());
    let error = ethkms_core::Signature::from_kms_der(&der, &[0x12; 32], handle.public_key()).unwrap_err();
    assert_eq!(error.kind(), ethkms_core::ErrorKind::VerificationFailed);
}
