//! The token: its module loaded and initialised once per process, the slot found by the token's label,
//! one login, and a pool of sessions that requests take turns on.
//!
//! PKCS#11 sessions must not be used by two threads at once and every call blocks, so each request takes
//! a session from the pool (opening one if fewer than `max_sessions` exist), runs its calls on Tokio's
//! blocking threads and puts the session back. The login belongs to the application, not the session:
//! sessions opened after it are logged in too, and it lasts while any session is open — so the first
//! session stays open, in the pool, for as long as the backend lives.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use ethkms_backend::BackendError;
use tokio::sync::Semaphore;

use crate::config::Pkcs11Config;
use crate::errors::{backend_error, ckr_name, rv};

/// Modules already loaded and initialised, by path: `C_Initialize` is once per process, and
/// `C_Finalize` would end every other backend's sessions, so a module stays loaded.
fn module(path: &PathBuf) -> Result<Pkcs11, BackendError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pkcs11) = modules.get(path) {
        return Ok(pkcs11.clone());
    }
    let configuration = |what: String| BackendError::Configuration { message: what };
    let pkcs11 = Pkcs11::new(path).map_err(|error| {
        configuration(format!(
            "the PKCS#11 module {} could not be loaded ({error}); check --pkcs11-module",
            path.display()
        ))
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => {
            return Err(configuration(format!("the PKCS#11 module {} failed to initialise: {error}", path.display())));
        }
    }
    modules.insert(path.clone(), pkcs11.clone());
    Ok(pkcs11)
}

/// Runs a call again (up to 5 times, 50 ms apart) while it answers `CKR_GENERAL_ERROR`: SoftHSM2 does so
/// now and then while another session or process uses the token's files. For calls that change nothing
/// when they fail (opening the token, generating a key pair under a fresh `CKA_ID`).
pub(crate) fn patiently<T>(mut call: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut attempts = 0;
    loop {
        match call() {
            Err(Error::Pkcs11(RvError::GeneralError, _)) if attempts < 5 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// Taken for writing while a request creates, changes or destroys token objects, for reading by every
/// other request: SoftHSM2 answered `CKR_GENERAL_ERROR` to object creation while other sessions of the
/// process used the token. Writes are administrative and rare; requests that only read or sign never wait
/// for one another.
static ACCESS: RwLock<()> = RwLock::new(());

/// Runs `write` while no request of this crate uses any token in this process.
///
/// This crate creates, changes and destroys token objects while nothing else of it touches a token:
/// SoftHSM2 answered `CKR_GENERAL_ERROR` to object creation while other sessions used the token. Code of
/// the same process that writes to a token through [`cryptoki`] itself can take its turn the same way.
///
/// ```
/// let created = ethkms_pkcs11::exclusive_writes(|| "a key pair generated through cryptoki");
/// assert!(created.starts_with("a key"));
/// ```
pub fn exclusive_writes<T>(write: impl FnOnce() -> T) -> T {
    let _guard = ACCESS.write().unwrap_or_else(PoisonError::into_inner);
    write()
}

/// How a request uses the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reads or signs: alongside other such requests.
    Shared,
    /// Creates, changes or destroys objects: alone.
    Exclusive,
}

/// A logged-in token and its sessions.
pub(crate) struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    label: String,
    serial: String,
    idle: Mutex<Vec<Session>>,
    permits: Semaphore,
    /// Run calls in `block_in_place` on a multi-threaded runtime (`Pkcs11Config::calls_in_place`).
    in_place: bool,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("serial", &self.serial)
            .field("slot", &self.slot.id())
            .field("idle_sessions", &idle)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Loads the module, finds the token, reads the PIN and logs in. Blocking: call it off the runtime.
    pub(crate) fn open(config: &Pkcs11Config) -> Result<Self, BackendError> {
        let pkcs11 = module(&config.module)?;
        let label = config.token_label.clone();
        let on_token = |error: Error| backend_error(&error, "(token)", &label);
        let mut found = Vec::new();
        let mut slot = None;
        for candidate in patiently(|| pkcs11.get_slots_with_token()).map_err(on_token)? {
            let info = patiently(|| pkcs11.get_token_info(candidate)).map_err(on_token)?;
            if info.label() == label {
                slot = Some((candidate, info.serial_number().to_owned()));
                break;
            }
            found.push(format!("`{}`", info.label()));
        }
        let Some((slot, serial)) = slot else {
            let found = if found.is_empty() { "none".to_owned() } else { found.join(", ") };
            return Err(BackendError::Configuration {
                message: format!(
                    "no token labelled `{label}` in the PKCS#11 module {} (tokens found: {found}); check --pkcs11-token",
                    config.module.display()
                ),
            });
        };
        let pin = config.pin.read()?;
        let session = patiently(|| pkcs11.open_rw_session(slot)).map_err(on_token)?;
        match patiently(|| session.login(UserType::User, Some(&pin))) {
            // Another backend of this process logged in to the token already: the login is shared.
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(BackendError::PinIncorrect { token: label, pin_source: config.pin.to_string() });
            }
            Err(Error::Pkcs11(rv @ (RvError::PinInvalid | RvError::PinLenRange), _)) => {
                return Err(BackendError::Configuration {
                    message: format!(
                        "token `{label}` refused the PIN from {} as malformed ({}); check it",
                        config.pin,
                        ckr_name(rv)
                    ),
                });
            }
            Err(Error::Pkcs11(RvError::UserPinNotInitialized, _)) => {
                return Err(BackendError::Configuration {
                    message: format!(
                        "token `{label}` has no user PIN yet; its security officer must set one (C_InitPIN)"
                    ),
                });
            }
            Err(error) => return Err(on_token(error)),
        }
        tracing::info!(token = %label, serial = %serial, module = %config.module.display(), "logged in to the PKCS#11 token");
        Ok(Self {
            pkcs11,
            slot,
            label,
            serial,
            idle: Mutex::new(vec![session]),
            permits: Semaphore::new(config.max_sessions.max(1)),
            in_place: config.calls_in_place,
        })
    }

    /// The token's label.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The token's serial number, as it reports it (trimmed).
    pub(crate) fn serial(&self) -> &str {
        &self.serial
    }

    /// Runs `job`, which reads or signs, on a session of its own; `key` names what it is about in errors.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, key: &str, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        self.run_with(key, Access::Shared, job).await
    }

    /// Runs `job`, which creates, changes or destroys objects, on a session of its own, while no other
    /// request of this crate uses a token.
    pub(crate) async fn run_exclusive<T, F>(self: &Arc<Self>, key: &str, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        self.run_with(key, Access::Exclusive, job).await
    }

    /// Runs `job` on a session of its own, off the runtime's threads' other work (see below).
    ///
    /// A session on which a call failed is checked before it goes back to the pool, and closed if the
    /// token no longer knows it.
    async fn run_with<T, F>(self: &Arc<Self>, key: &str, access: Access, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| BackendError::Transport {
            key: key.to_owned(),
            message: format!("the session pool of token `{}` is closed", self.label),
        })?;
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let token = Arc::clone(self);
        let key_text = key.to_owned();
        let work = move || {
            let session = match idle {
                Some(session) => session,
                None => token.pkcs11.open_rw_session(token.slot).map_err(|error| token.error(&error, &key_text))?,
            };
            let result = match access {
                Access::Shared => {
                    let _guard = ACCESS.read().unwrap_or_else(PoisonError::into_inner);
                    job(&token, &session)
                }
                Access::Exclusive => exclusive_writes(|| job(&token, &session)),
            };
            if result.is_err() && session.get_session_info().is_err() {
                tracing::warn!(token = %token.label, "closing a PKCS#11 session the token no longer knows");
            } else {
                token.idle.lock().unwrap_or_else(PoisonError::into_inner).push(session);
            }
            result
        };
        // In place (when configured, on a multi-threaded runtime) the call blocks this worker thread, whose
        // other tasks move to the others: no hand-over to another thread and back. Otherwise Tokio's
        // blocking threads, which never hold up other futures of the calling task.
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if self.in_place && multi_threaded {
            return tokio::task::block_in_place(work);
        }
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|join| {
            Err(BackendError::Service {
                key: key.to_owned(),
                code: "PKCS11_TASK".into(),
                message: format!("a PKCS#11 request on token `{}` did not finish: {join}", self.label),
                retryable: false,
            })
        })
    }

    /// A failed call's error about `key`.
    pub(crate) fn error(&self, error: &Error, key: &str) -> BackendError {
        backend_error(error, key, &self.label)
    }

    /// Whether `error` is the token's return value `expected`.
    pub(crate) fn is(error: &Error, expected: RvError) -> bool {
        rv(error) == Some(expected)
    }
}
