//! What the backend needs to reach a token: the PKCS#11 module, the token's label, where the user PIN
//! comes from (an environment variable or a file — never the configuration text), how many sessions
//! it may open and where its blocking calls run.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use cryptoki::types::AuthPin;
use ethkms_backend::BackendError;
use secrecy::zeroize::Zeroizing;

/// The environment variable the PIN is read from unless another source is configured.
pub const DEFAULT_PIN_ENV: &str = "ETHKMS_PKCS11_PIN";

/// How many sessions a backend opens at most unless configured otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// Where the user PIN comes from. Only the name of the variable or the path of the file is kept here;
/// the PIN itself is read when the backend logs in (again, should the token log the process out) and
/// wiped from memory after the login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable holding the PIN.
    Env(String),
    /// A file holding the PIN (one trailing newline is ignored).
    File(PathBuf),
}

impl Default for PinSource {
    /// [`DEFAULT_PIN_ENV`].
    fn default() -> Self {
        Self::Env(DEFAULT_PIN_ENV.to_owned())
    }
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "the environment variable {name}"),
            Self::File(path) => write!(f, "the file {}", path.display()),
        }
    }
}

impl PinSource {
    /// Reads the PIN.
    ///
    /// # Errors
    /// [`BackendError::Configuration`] naming the variable or file when it is missing, unreadable or
    /// empty. The PIN never appears in an error.
    pub(crate) fn read(&self) -> Result<AuthPin, BackendError> {
        let missing = |why: String| BackendError::Configuration {
            message: format!(
                "no PIN for the PKCS#11 token: {why}; set it there (the PIN is never read from the configuration)"
            ),
        };
        // Every copy of the PIN this function makes is wiped when dropped; the `AuthPin` wipes its own.
        let mut pin = Zeroizing::new(match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(pin) => pin,
                Err(std::env::VarError::NotPresent) => return Err(missing(format!("{self} is not set"))),
                Err(std::env::VarError::NotUnicode(_)) => return Err(missing(format!("{self} is not UTF-8"))),
            },
            Self::File(path) => {
                std::fs::read_to_string(path).map_err(|error| missing(format!("{self} cannot be read ({error})")))?
            }
        });
        for ending in ["\n", "\r"] {
            if pin.ends_with(ending) {
                let length = pin.len() - ending.len();
                pin.truncate(length);
            }
        }
        if pin.is_empty() {
            return Err(missing(format!("{self} is empty")));
        }
        Ok(AuthPin::new(Box::from(pin.as_str())))
    }
}

/// Where the backend's PKCS#11 calls, which block their thread until the token answers, run.
///
/// `cargo xtask bench pkcs11` (SoftHSM2, whose `C_Sign` is ≈ 0.3 ms of work on the calling thread) measures
/// each beside raw `C_Sign` calls; the figures are in the workspace README.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallPlacement {
    /// On Tokio's blocking threads (`spawn_blocking`): a call never holds up the runtime or the other futures
    /// of the calling task, at the price of a hand-over to another thread and back for every call. The
    /// default: right for any token, and the only choice for a caller that signs several times in one task
    /// (`join_all`).
    #[default]
    BlockingPool,
    /// In `tokio::task::block_in_place` on a multi-threaded runtime (on the blocking threads otherwise): the
    /// runtime hands the calling worker's other tasks to another thread, and the call holds up only the
    /// calling task. For callers that give each concurrent signature a task of its own, on any token,
    /// however slow (a network HSM).
    BlockInPlace,
    /// On the calling thread, as a plain blocking call: no hand-over at all, the cheapest, but the call holds
    /// up everything else that thread would run meanwhile (on a multi-threaded runtime idle workers steal
    /// its queued tasks, but not the one in its LIFO slot, often a task just spawned or woken, which waits
    /// for the call; `block_in_place` moves that one too). Only for tokens whose calls are short work on
    /// the calling thread — a software token like SoftHSM2, an HSM on the machine's bus — and callers that
    /// give each concurrent signature a task of its own; never for a token reached over the network.
    Inline,
}

impl CallPlacement {
    /// Every placement.
    pub const ALL: [Self; 3] = [Self::BlockingPool, Self::BlockInPlace, Self::Inline];

    /// The placement's name, as [`FromStr`] reads and [`Display`](fmt::Display) writes it:
    /// `blocking-pool`, `block-in-place` or `inline`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::BlockingPool => "blocking-pool",
            Self::BlockInPlace => "block-in-place",
            Self::Inline => "inline",
        }
    }
}

impl fmt::Display for CallPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`CallPlacement`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a placement of PKCS#11 calls; choose blocking-pool, block-in-place or inline")]
pub struct UnknownPlacement(pub String);

impl FromStr for CallPlacement {
    type Err = UnknownPlacement;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|placement| placement.name() == name)
            .ok_or_else(|| UnknownPlacement(name.to_owned()))
    }
}

/// How to reach a token.
///
/// ```
/// use ethkms_pkcs11::{PinSource, Pkcs11Config};
///
/// let config = Pkcs11Config::new("/usr/lib/softhsm/libsofthsm2.so", "treasury")
///     .pin(PinSource::File("/run/secrets/hsm-pin".into()));
/// assert_eq!(config.max_sessions, 8);
/// assert!(!format!("{config:?}").contains("secret-pin"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (a shared library: `libsofthsm2.so`, `libcloudhsm_pkcs11.so`, …).
    pub module: PathBuf,
    /// The label of the token whose keys are used.
    pub token_label: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Sessions opened at most, each used by one request at a time (PKCS#11 sessions are not shared
    /// between threads); requests beyond wait for one.
    pub max_sessions: usize,
    /// Where the blocking PKCS#11 calls run ([`CallPlacement::BlockingPool`] unless set).
    pub calls: CallPlacement,
}

impl Pkcs11Config {
    /// The token labelled `token_label` in `module`, the PIN from [`DEFAULT_PIN_ENV`], at most
    /// [`DEFAULT_MAX_SESSIONS`] sessions.
    #[must_use]
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>) -> Self {
        Self {
            module: module.into(),
            token_label: token_label.into(),
            pin: PinSource::default(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            calls: CallPlacement::BlockingPool,
        }
    }

    /// Sets where the PIN comes from.
    #[must_use]
    pub fn pin(mut self, pin: PinSource) -> Self {
        self.pin = pin;
        self
    }

    /// Sets where the blocking calls run.
    #[must_use]
    pub fn calls(mut self, placement: CallPlacement) -> Self {
        self.calls = placement;
        self
    }

    /// Sets the most sessions opened at once (at least 1).
    #[must_use]
    pub fn max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_come_from_a_file_without_its_newline_and_errors_never_show_them() {
        let directory = std::env::temp_dir().join(format!("ethkms-pkcs11-pin-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let file = directory.join("pin");
        std::fs::write(&file, "s3cret-pin\n").unwrap();
        let pin = PinSource::File(file.clone()).read().unwrap();
        assert!(!format!("{pin:?}").contains("s3cret"), "{pin:?}");
        use secrecy::ExposeSecret as _;
        assert_eq!(pin.expose_secret(), "s3cret-pin");

        std::fs::write(&file, "\n").unwrap();
        let error = PinSource::File(file.clone()).read().unwrap_err();
        assert!(error.to_string().contains("is empty") && error.to_string().contains(&file.display().to_string()));
        let missing = PinSource::File(directory.join("absent")).read().unwrap_err();
        assert!(matches!(missing, BackendError::Configuration { .. }) && missing.to_string().contains("absent"));
        let unset = PinSource::Env("ETHKMS_TEST_PIN_THAT_IS_NEVER_SET".into()).read().unwrap_err();
        assert!(unset.to_string().contains("ETHKMS_TEST_PIN_THAT_IS_NEVER_SET is not set"), "{unset}");
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn placements_read_their_names_and_refuse_others_naming_the_choices() {
        let names = ["blocking-pool", "block-in-place", "inline"];
        for (name, expected) in names.into_iter().zip(CallPlacement::ALL) {
            let placement: CallPlacement = name.parse().unwrap();
            assert_eq!((placement, placement.to_string().as_str()), (expected, name));
        }
        assert_eq!(Pkcs11Config::new("m", "t").calls, CallPlacement::BlockingPool);
        let error = "in-place".parse::<CallPlacement>().unwrap_err().to_string();
        assert!(error.contains("`in-place`") && names.iter().all(|name| error.contains(name)), "{error}");
    }

    #[test]
    fn sessions_are_at_least_one() {
        assert_eq!(Pkcs11Config::new("m", "t").max_sessions(0).max_sessions, 1);
        assert_eq!(PinSource::default(), PinSource::Env(DEFAULT_PIN_ENV.into()));
    }
}
