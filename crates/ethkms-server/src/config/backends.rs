//! Key backends besides the service's own: `[backends.NAME]` sections that a key names with `backend =
//! "NAME"`, so that one service signs with KMS keys and HSM keys side by side. A key without `backend` uses
//! the backend the service was started with (KMS by default), as before.
//!
//! ```toml
//! [backends.hsm]
//! type = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "treasury"                  # the token's label
//! pin_env = "ETHKMS_PKCS11_PIN"       # the default; or pin_file = "/run/secrets/hsm-pin"
//! max_sessions = 8                    # the default
//! calls_in_place = true               # the default here (see below)
//!
//! [keys.cold]
//! key = "alias/cold"                  # the key's CKA_LABEL on the token (or its key id)
//! backend = "hsm"
//! chain_id = 1
//! ```
//!
//! The PIN is never part of the configuration: a `pin` setting is refused, naming where it belongs.
//!
//! The token's calls run in place (`calls_in_place`, Tokio's `block_in_place`) unless set to `false`: the
//! service gives every signature a task of its own (one per withdrawal; the calls of a JSON-RPC batch are
//! answered one after another), so a call held in place holds up nothing else, and it saves the hand-over
//! to Tokio's blocking threads and back (`cargo xtask bench pkcs11`: overhead over raw `C_Sign` 11.6–15.2%
//! in place against 18.6–46.6% handed over, concurrency 32 to 1).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ethkms::pkcs11::{PinSource, Pkcs11Config};
use serde::Deserialize;

use super::ConfigError;

/// A key backend of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    #[serde(rename = "type")]
    kind: String,
    module: Option<PathBuf>,
    token: Option<String>,
    pin_env: Option<String>,
    pin_file: Option<PathBuf>,
    /// Only to refuse it with a better message than "unknown field".
    pin: Option<toml::Value>,
    max_sessions: Option<usize>,
    calls_in_place: Option<bool>,
}

/// Checks the `[backends]` sections.
pub(super) fn backends(raw: BTreeMap<String, RawBackend>) -> Result<BTreeMap<String, BackendConfig>, ConfigError> {
    let mut backends = BTreeMap::new();
    for (name, backend) in raw {
        let at = |setting: &str, problem: &str| ConfigError(format!("backends.{name}.{setting}: {problem}"));
        if backend.kind != "pkcs11" {
            return Err(at("type", &format!("`{}` is not a backend type; the one there is is `pkcs11`", backend.kind)));
        }
        if backend.pin.is_some() {
            return Err(at(
                "pin",
                "the PIN is never read from the configuration: name its variable (pin_env) or file (pin_file)",
            ));
        }
        let module = backend.module.ok_or_else(|| at("module", "missing: the token's PKCS#11 module (a .so file)"))?;
        let token =
            backend.token.filter(|token| !token.is_empty()).ok_or_else(|| at("token", "missing: the token's label"))?;
        let pin = match (backend.pin_env, backend.pin_file) {
            (Some(_), Some(_)) => return Err(at("pin_file", "give pin_env or pin_file, not both")),
            (Some(variable), None) if variable.is_empty() => return Err(at("pin_env", "empty")),
            (Some(variable), None) => PinSource::Env(variable),
            (None, Some(file)) => PinSource::File(file),
            (None, None) => PinSource::default(),
        };
        let mut config =
            Pkcs11Config::new(module, token).pin(pin).calls_in_place(backend.calls_in_place.unwrap_or(true));
        if let Some(sessions) = backend.max_sessions {
            if sessions == 0 {
                return Err(at("max_sessions", "must be at least 1"));
            }
            config = config.max_sessions(sessions);
        }
        backends.insert(name, BackendConfig::Pkcs11(config));
    }
    Ok(backends)
}
