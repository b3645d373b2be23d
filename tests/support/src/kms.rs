//! KMS on LocalStack: a backend with LocalStack's test credentials, and keys funded on anvil.

use std::sync::Arc;

use alloy_primitives::{Address, U256};
use ethkms_aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms_backend::{CreateKeyRequest, KeyBackend};

use crate::chain::{ETHER, set_balance};
use crate::service_from_env;

/// The configuration of a backend on LocalStack at `endpoint` (region `us-east-1`, credentials
/// `test`/`test`).
#[must_use]
pub fn localstack_config(endpoint: String) -> AwsKmsConfig {
    AwsKmsConfig::with_endpoint(endpoint, "us-east-1", StaticCredentials::new("test", "test", None))
}

/// A backend on LocalStack at `endpoint`.
///
/// # Panics
/// If the backend cannot be built.
pub async fn localstack_backend(endpoint: &str) -> Arc<dyn KeyBackend> {
    Arc::new(AwsKmsBackend::new(localstack_config(endpoint.to_owned())).await.expect("LocalStack backend"))
}

/// LocalStack's KMS endpoint (`ETHKMS_TEST_KMS_ENDPOINT`) and a backend on it, or `None` to skip the
/// test (see [`service_from_env`]).
///
/// # Panics
/// If the endpoint is missing in CI, or the backend cannot be built.
pub async fn localstack() -> Option<(String, Arc<dyn KeyBackend>)> {
    let endpoint = service_from_env("ETHKMS_TEST_KMS_ENDPOINT", "LocalStack KMS")?;
    let backend = localstack_backend(&endpoint).await;
    Some((endpoint, backend))
}

/// Creates a key and gives its address 100 ether on `rpc_url` (an anvil): its key id and address.
///
/// # Panics
/// If the key cannot be created or the node refuses `anvil_setBalance`.
pub async fn funded_key(backend: &Arc<dyn KeyBackend>, rpc_url: &str) -> (String, Address) {
    let info = backend.create_key(&CreateKeyRequest::new().description("ethkms test key (funded)")).await.unwrap();
    let address: Address = info.address.unwrap().to_string().parse().unwrap();
    set_balance(rpc_url, address, U256::from(100) * U256::from(ETHER)).await;
    (info.key_id, address)
}
