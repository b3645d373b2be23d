//! A PKCS#11 token for tests: the SoftHSM2 tokens `cargo xtask services up` creates in
//! `target/services/softhsm/`, found through `ETHKMS_TEST_PKCS11_MODULE`, `ETHKMS_TEST_PKCS11_TOKEN`,
//! `ETHKMS_TEST_PKCS11_SPARE_TOKEN`, `ETHKMS_TEST_PKCS11_PIN` (the tokens' PIN, read by the backend from
//! that variable) and `SOFTHSM2_CONF` (the module's own variable).
//!
//! The spare token is one no test logs in to with the right PIN: a login belongs to the whole process, so
//! a wrong PIN is only refused by a token the process is not logged in to yet.
//!
//! SoftHSM2 keeps its tokens in files and answers `CKR_GENERAL_ERROR` now and then when two processes
//! write one token at the same moment: tests that run the `ethkms` binary against the token run its
//! commands one after another.

use std::sync::Arc;

use ethkms_backend::KeyBackend;
use ethkms_pkcs11::{PinSource, Pkcs11Backend, Pkcs11Config};

use crate::service_from_env;

/// The variable that holds the test token's user PIN.
pub const PIN_VARIABLE: &str = "ETHKMS_TEST_PKCS11_PIN";

/// The test token: the module and the token's label.
#[derive(Clone, Debug)]
pub struct SoftHsm {
    /// The PKCS#11 module (`libsofthsm2.so`).
    pub module: String,
    /// The token's label.
    pub token: String,
    /// The spare token's label.
    pub spare_token: String,
}

impl SoftHsm {
    /// A backend configuration for the token, its PIN from [`PIN_VARIABLE`].
    #[must_use]
    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config::new(&self.module, &self.token).pin(PinSource::Env(PIN_VARIABLE.to_owned()))
    }

    /// A backend logged in to the token.
    ///
    /// # Panics
    /// If it cannot log in.
    pub async fn backend(&self) -> Arc<dyn KeyBackend> {
        Arc::new(Pkcs11Backend::connect(self.config()).await.expect("log in to the SoftHSM2 test token"))
    }
}

/// The test token, or `None` to skip the test (see [`service_from_env`]).
///
/// # Panics
/// If it is missing in CI, or the module is named but `SOFTHSM2_CONF` or the PIN is not set.
#[must_use]
pub fn softhsm() -> Option<SoftHsm> {
    let module = service_from_env("ETHKMS_TEST_PKCS11_MODULE", "SoftHSM2")?;
    let token = service_from_env("ETHKMS_TEST_PKCS11_TOKEN", "SoftHSM2")?;
    let spare_token = service_from_env("ETHKMS_TEST_PKCS11_SPARE_TOKEN", "SoftHSM2")?;
    for variable in ["SOFTHSM2_CONF", PIN_VARIABLE] {
        assert!(std::env::var_os(variable).is_some(), "{variable} is not set: source target/services/env.sh");
    }
    Some(SoftHsm { module, token, spare_token })
}

/// A backend on the test token, or `None` to skip the test.
///
/// # Panics
/// As [`softhsm`], and if it cannot log in.
pub async fn pkcs11_backend() -> Option<Arc<dyn KeyBackend>> {
    Some(softhsm()?.backend().await)
}
