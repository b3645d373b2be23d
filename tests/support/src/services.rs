//! The live services a test needs, found through the environment variables `cargo xtask services up`
//! writes to `target/services/env.sh`: `ETHKMS_TEST_KMS_ENDPOINT` (LocalStack KMS),
//! `ETHKMS_TEST_RPC_URL` (the shared anvil), `ETHKMS_TEST_ANVIL` (the anvil binary), `ETHKMS_TEST_CAST`,
//! `ETHKMS_TEST_PYTHON` (with eth-account), `ETHKMS_TEST_NODE_MODULES` (with ethers v6),
//! `ETHKMS_TEST_POSTGRES_URL` (PostgreSQL) and what restarts it (`ETHKMS_TEST_POSTGRES_DATA`, `_BIN`,
//! `_RUN_AS`, `_LOG`; see [`crate::postgres::control`]).
//!
//! A missing service skips the test (it says so on standard error), except where a missing service must
//! fail: in CI, or wherever `ETHKMS_REQUIRE_SERVICES` is set ([`required`]).

/// Whether missing services fail tests rather than skip them: `CI` or `ETHKMS_REQUIRE_SERVICES` is set
/// to something other than empty, `0` or `false`.
#[must_use]
pub fn required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0" && value != "false");
    set("CI") || set("ETHKMS_REQUIRE_SERVICES")
}

/// The value of the environment variable `variable` that points a test at a live service (set by
/// `cargo xtask services up`), or `None` to skip the test when it is missing outside CI.
///
/// # Panics
/// When it is missing and `CI` or `ETHKMS_REQUIRE_SERVICES` is set: there, a missing service is a
/// failure, never a silent skip.
#[must_use]
pub fn service_from_env(variable: &str, service: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if required() => {
            panic!("{variable} is not set: {service} must be running for these tests (`cargo xtask services up`)")
        }
        _ => {
            eprintln!(
                "SKIPPED: no {service} ({variable} is not set); run `cargo xtask services up && source target/services/env.sh`"
            );
            None
        }
    }
}

/// LocalStack's KMS endpoint and the shared anvil's URL: what most tests against live services need.
#[derive(Clone, Debug)]
pub struct Services {
    /// LocalStack's KMS endpoint (`ETHKMS_TEST_KMS_ENDPOINT`).
    pub kms_endpoint: String,
    /// The shared anvil's JSON-RPC URL (`ETHKMS_TEST_RPC_URL`).
    pub rpc_url: String,
}

/// Both services, or `None` to skip the test (see [`service_from_env`]).
///
/// # Panics
/// When one is missing and `CI` or `ETHKMS_REQUIRE_SERVICES` is set.
#[must_use]
pub fn services() -> Option<Services> {
    let kms_endpoint = service_from_env("ETHKMS_TEST_KMS_ENDPOINT", "LocalStack KMS")?;
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil")?;
    Some(Services { kms_endpoint, rpc_url })
}
