//! The token: its module loaded and initialised once per process, the slot found by the token's label,
//! the login, and a pool of sessions that requests take turns on.
//!
//! PKCS#11 sessions must not be used by two threads at once and every call blocks, so each request takes
//! a session from the pool (opening one if fewer than `max_sessions` are in use), runs its calls on Tokio's
//! blocking threads and puts the session back. The login belongs to the application, not the session:
//! sessions opened after it are logged in too, and it lasts while any session is open — so one more
//! session, which no request uses, stays open for as long as the backend lives and holds the login.
//!
//! Should the token log the process out all the same (another library's `C_Logout` or
//! `C_CloseAllSessions`, a token reset), a request that is told so (`CKR_USER_NOT_LOGGED_IN`, or no
//! private key found by a session that is not logged in) logs in again, with the PIN read afresh from
//! its source, and is run once more.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use ethkms_backend::BackendError;
use tokio::sync::Semaphore;

use crate::config::{CallPlacement, PinSource, Pkcs11Config};
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
/// when they fail (opening the token, generating a key pair under a fresh `CKA_ID`) — never `C_Login`,
/// where a failure may have counted against the PIN.
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

/// Whether `session` is logged in as the user.
pub(crate) fn logged_in(session: &Session) -> Result<bool, Error> {
    Ok(matches!(session.get_session_info()?.session_state(), SessionState::RoUser | SessionState::RwUser))
}

/// A logged-in token and its sessions.
pub(crate) struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    label: String,
    serial: String,
    /// Where the PIN comes from, to log in again (the PIN itself is not kept).
    pin: PinSource,
    /// The session that holds the login: never used by a request, never closed while the backend lives
    /// (replaced only when the token no longer knows it).
    anchor: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
    /// One per session a request may use; held until the session is back in the pool.
    permits: Arc<Semaphore>,
    /// Where the blocking calls run (`Pkcs11Config::calls`).
    calls: CallPlacement,
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
        let mut others = Vec::new();
        let mut matching = Vec::new();
        for candidate in patiently(|| pkcs11.get_slots_with_token()).map_err(on_token)? {
            let info = patiently(|| pkcs11.get_token_info(candidate)).map_err(on_token)?;
            if info.label() == label {
                matching.push((candidate, info.serial_number().to_owned()));
            } else {
                others.push(format!("`{}`", info.label()));
            }
        }
        let (slot, serial) = match matching.as_slice() {
            [(slot, serial)] => (*slot, serial.clone()),
            [] => {
                let found = if others.is_empty() { "none".to_owned() } else { others.join(", ") };
                return Err(BackendError::Configuration {
                    message: format!(
                        "no token labelled `{label}` in the PKCS#11 module {} (tokens found: {found}); check --pkcs11-token",
                        config.module.display()
                    ),
                });
            }
            more => {
                let serials: Vec<&str> = more.iter().map(|(_, serial)| serial.as_str()).collect();
                return Err(BackendError::Configuration {
                    message: format!(
                        "{} tokens are labelled `{label}` in the PKCS#11 module {} (serial numbers {}); give each token its own label",
                        more.len(),
                        config.module.display(),
                        serials.join(", ")
                    ),
                });
            }
        };
        let anchor = patiently(|| pkcs11.open_rw_session(slot)).map_err(on_token)?;
        log_in(&anchor, &config.pin, &label)?;
        tracing::info!(token = %label, serial = %serial, module = %config.module.display(), "logged in to the PKCS#11 token");
        Ok(Self {
            pkcs11,
            slot,
            label,
            serial,
            pin: config.pin.clone(),
            anchor: Mutex::new(anchor),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.max_sessions.max(1))),
            calls: config.calls,
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
    /// `job` may run twice: again after logging in again (see the module documentation).
    pub(crate) async fn run<T, F>(self: &Arc<Self>, key: &str, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        self.run_with(key, Access::Shared, job).await
    }

    /// Runs `job`, which creates, changes or destroys objects, on a session of its own, while no other
    /// request of this crate uses a token. `job` may run twice, as for [`run`](Self::run).
    pub(crate) async fn run_exclusive<T, F>(self: &Arc<Self>, key: &str, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        self.run_with(key, Access::Exclusive, job).await
    }

    /// Runs `job` on a session of its own, off the runtime's threads' other work (see below).
    ///
    /// The pool's permit goes with the blocking work, not with this future: a caller that stops waiting
    /// does not free the session's place while the work still uses the session.
    async fn run_with<T, F>(self: &Arc<Self>, key: &str, access: Access, job: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Fn(&Self, &Session) -> Result<T, BackendError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| BackendError::Transport {
            key: key.to_owned(),
            message: format!("the session pool of token `{}` is closed", self.label),
        })?;
        let token = Arc::clone(self);
        let key_text = key.to_owned();
        let work = move || {
            let result = token.on_a_session(&key_text, access, &job);
            drop(permit);
            result
        };
        // See `CallPlacement`: inline, the call simply blocks this thread; in place, Tokio first hands this
        // worker's other tasks to another thread; otherwise Tokio's blocking threads, which never hold up
        // other futures of the calling task.
        let multi_threaded = || {
            tokio::runtime::Handle::try_current()
                .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        };
        match self.calls {
            CallPlacement::Inline => return work(),
            CallPlacement::BlockInPlace if multi_threaded() => return tokio::task::block_in_place(work),
            _ => {}
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

    /// Runs `job` on a session from the pool (or a new one), once more after logging in again if the token
    /// logged the process out, and puts the session back — unless a call failed and the token no longer
    /// knows the session. Blocking.
    fn on_a_session<T>(
        &self,
        key: &str,
        access: Access,
        job: &dyn Fn(&Self, &Session) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let session = match idle {
            Some(session) => session,
            None => patiently(|| self.pkcs11.open_rw_session(self.slot)).map_err(|error| self.error(&error, key))?,
        };
        let attempt = || match access {
            Access::Shared => {
                let _guard = ACCESS.read().unwrap_or_else(PoisonError::into_inner);
                job(self, &session)
            }
            Access::Exclusive => exclusive_writes(|| job(self, &session)),
        };
        let mut result = attempt();
        if matches!(result, Err(BackendError::NotLoggedIn { .. })) {
            result = self.log_in_again(key).and_then(|()| attempt());
        }
        if result.is_err() && session.get_session_info().is_err() {
            // Closing it cannot log the process out: the anchor holds the login.
            tracing::warn!(token = %self.label, "closing a PKCS#11 session the token no longer knows");
        } else {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(session);
        }
        result
    }

    /// Logs in again after the token logged the process out, on the anchor (reopened if the token no
    /// longer knows it) — unless another request already did.
    fn log_in_again(&self, key: &str) -> Result<(), BackendError> {
        let mut anchor = self.anchor.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match anchor.get_session_info() {
            Ok(info) => info.session_state(),
            Err(_) => {
                tracing::warn!(token = %self.label, "the token no longer knows the session that held the login; opening another");
                *anchor =
                    patiently(|| self.pkcs11.open_rw_session(self.slot)).map_err(|error| self.error(&error, key))?;
                anchor.get_session_info().map_err(|error| self.error(&error, key))?.session_state()
            }
        };
        if matches!(state, SessionState::RoUser | SessionState::RwUser) {
            return Ok(());
        }
        tracing::warn!(token = %self.label, "the token logged this process out; logging in again");
        log_in(&anchor, &self.pin, &self.label)
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

/// Logs the application in to token `label` as its user, on `session`, with the PIN read from `pin`.
/// Once: a failed `C_Login` may have counted against the PIN.
fn log_in(session: &Session, pin: &PinSource, label: &str) -> Result<(), BackendError> {
    let secret = pin.read()?;
    match session.login(UserType::User, Some(&secret)) {
        // Another backend of this process logged in to the token already: the login is shared.
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(Error::Pkcs11(RvError::PinIncorrect, _)) => {
            Err(BackendError::PinIncorrect { token: label.to_owned(), pin_source: pin.to_string() })
        }
        Err(Error::Pkcs11(rv @ (RvError::PinInvalid | RvError::PinLenRange), _)) => Err(BackendError::Configuration {
            message: format!("token `{label}` refused the PIN from {pin} as malformed ({}); check it", ckr_name(rv)),
        }),
        Err(Error::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(BackendError::Configuration {
            message: format!("token `{label}` has no user PIN yet; its security officer must set one (C_InitPIN)"),
        }),
        Err(error) => Err(backend_error(&error, "(token)", label)),
    }
}
