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
//! calls = "block-in-place"            # the default here (see below)
//!
//! [keys.cold]
//! key = "alias/cold"                  # the key's CKA_LABEL on the token (or its key id)
//! backend = "hsm"
//! chain_id = 1
//! ```
//!
//! The PIN is never part of the configuration: a `pin` setting is refused, naming where it belongs.
//!
//! `calls` says where the token's blocking calls run (`ethkms::pkcs11::CallPlacement`): `block-in-place`
//! unless set — the service gives every signature a task of its own (one per withdrawal; the calls of a
//! JSON-RPC batch are answered one after another), so a call held in place holds up nothing else, and it
//! saves the hand-over to Tokio's blocking threads and back, on any token however slow. `inline` saves
//! Tokio's hand-over of the worker too, for tokens whose calls are short work on the machine (SoftHSM2, an
//! HSM on the bus) — never one reached over the network, whose calls would hold up the service's other
//! work; `blocking-pool` hands every call to Tokio's blocking threads. `cargo xtask bench pkcs11` measures
//! all three beside raw `C_Sign` calls (the figures are in the workspace README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ethkms::pkcs11::{CallPlacement, PinSource, Pkcs11Config};
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
    calls: Option<String>,
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
        let calls = match backend.calls {
            Some(name) => {
                name.parse().map_err(|error: ethkms::pkcs11::UnknownPlacement| at("calls", &error.to_string()))?
            }
            None => CallPlacement::BlockInPlace,
        };
        let mut config = Pkcs11Config::new(module, token).pin(pin).calls(calls);
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
