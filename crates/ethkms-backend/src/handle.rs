//! Signing through a backend: a [`KeyHandle`] per key that fetches the public key once and verifies
//! every signature, a [`Keyring`] that keeps one handle per key, and the [`RetryPolicy`] they share.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ethkms_core::{Address, PrecomputedKey, PublicKey, Signature};
use tokio::sync::OnceCell;

use crate::backend::{KeyBackend, secp256k1_public_key};
use crate::error::BackendError;
use crate::types::KeyRef;

/// How retryable errors ([`BackendError::is_retryable`]) are retried: exponential backoff with jitter,
/// within an overall deadline.
///
/// This is the one retry layer: signing a digest is idempotent, so retrying it is always safe, and it
/// sits above any backend, the in-memory one included. The AWS backend makes one attempt per request by
/// default (`AwsKmsConfig::max_attempts`), so that retries do not multiply (5 here × 3 in the SDK were
/// 15 `Sign` requests per signature under throttling, and minutes on a hung endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// The backoff ceiling before the second attempt; it doubles after each attempt.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// The most all attempts and the waits between them may take: an attempt still running then is
    /// abandoned ([`BackendError::Timeout`]), and no attempt is started whose backoff would end past it.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff from 50 ms doubling up to 2 s, 20 s in all.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt, with no deadline of its own (the backend's timeouts apply).
    #[must_use]
    pub const fn none() -> Self {
        Self { max_attempts: 1, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO, deadline: Duration::MAX }
    }

    /// The delay before attempt `attempt + 1` (so `attempt` ≥ 1): uniformly random between half and
    /// all of `min(initial × 2^(attempt-1), max)`.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling =
            self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max_backoff);
        let jitter = RandomState::new().hash_one(attempt) % 1024;
        let half = ceiling / 2;
        half + half.mul_f64(jitter as f64 / 1023.0)
    }

    /// Runs `operation` (a request for `key`) until it succeeds, fails with a non-retryable error, the
    /// attempts run out or the deadline passes; then the last error is returned.
    ///
    /// # Errors
    /// The operation's error; [`BackendError::Timeout`] when the deadline ends an attempt.
    pub async fn retry<T, F, Fut>(&self, key: &str, operation: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.retry_if(key, operation, BackendError::is_retryable).await
    }

    /// [`retry`](Self::retry) with the errors worth retrying chosen by `retryable`.
    ///
    /// # Errors
    /// As [`retry`](Self::retry).
    pub async fn retry_if<T, F, Fut>(
        &self,
        key: &str,
        mut operation: F,
        retryable: impl Fn(&BackendError) -> bool,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let started = tokio::time::Instant::now();
        let end = started.checked_add(self.deadline);
        let mut attempt = 1;
        loop {
            let result = match end {
                Some(end) => tokio::time::timeout_at(end, operation())
                    .await
                    .unwrap_or_else(|_| Err(BackendError::Timeout { key: key.to_owned(), after: Some(self.deadline) })),
                None => operation().await,
            };
            match result {
                Err(error) if retryable(&error) && attempt < self.max_attempts => {
                    let delay = self.backoff(attempt);
                    if end.is_some_and(|end| tokio::time::Instant::now() + delay >= end) {
                        return Err(error);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// One key, ready to sign: its public key and address are fetched once, when the handle is opened;
/// after that, one signature costs exactly one backend request (plus retries of retryable failures).
///
/// Every signature is run through ethkms-core: strict DER parsing, low-s normalisation, verification
/// against the key and the y-parity. A corrupted or foreign signature from the backend becomes
/// [`BackendError::InvalidSignature`], never output.
///
/// The handle signs with the key id that `GetPublicKey` resolved, so if it was opened through an alias
/// and the alias is later moved, the handle keeps signing with the key whose address it reports.
///
/// When a handle (or a clone of it) signs for the second time, it computes multiples of the key once
/// ([`PrecomputedKey`], about 2 ms and 340 KB), which makes every later verification about three times
/// as fast; a handle that signs once pays nothing for it.
///
/// ```
/// use std::sync::Arc;
/// use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyHandle, MemoryBackend};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::with_seed(7));
/// let info = backend.create_key(&CreateKeyRequest::new().alias("hot-wallet")).await?;
///
/// let handle = KeyHandle::open(backend, "alias/hot-wallet".parse()?).await?;
/// assert_eq!(Some(handle.address()), info.address);
///
/// let digest = ethkms_core::eip191_hash_message(b"withdraw 1 ETH");
/// let signature = handle.sign_digest(&digest).await?;
/// assert_eq!(signature.recover_address(&digest)?, handle.address());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct KeyHandle {
    backend: Arc<dyn KeyBackend>,
    key: KeyRef,
    resolved: KeyRef,
    public_key: PublicKey,
    retry: RetryPolicy,
    verifier: Arc<Verifier>,
}

/// How a handle verifies: plainly on its first signature, with the key's multiples from the second on.
#[derive(Default)]
struct Verifier {
    /// Whether the handle (or a clone) has verified a signature already.
    signed: AtomicBool,
    /// The key's multiples, from the second signature on.
    precomputed: OnceLock<PrecomputedKey>,
}

impl Verifier {
    /// `der` as a verified Ethereum signature of `digest` by `key`.
    fn verify(&self, key: &PublicKey, der: &[u8], digest: &[u8; 32]) -> Result<Signature, ethkms_core::Error> {
        if let Some(precomputed) = self.precomputed.get() {
            return Signature::from_kms_der_precomputed(der, digest, precomputed);
        }
        if !self.signed.swap(true, Ordering::Relaxed) {
            return Signature::from_kms_der(der, digest, key);
        }
        let precomputed = self.precomputed.get_or_init(|| PrecomputedKey::new(*key));
        Signature::from_kms_der_precomputed(der, digest, precomputed)
    }
}

impl KeyHandle {
    /// Opens `key` with the default [`RetryPolicy`]: one `GetPublicKey`, checked to be a secp256k1
    /// signing key.
    ///
    /// # Errors
    /// What the backend reports (not found, disabled, …), [`BackendError::WrongKeySpec`] or
    /// [`BackendError::WrongKeyUsage`] for a key that cannot sign for Ethereum.
    pub async fn open(backend: Arc<dyn KeyBackend>, key: KeyRef) -> Result<Self, BackendError> {
        Self::open_with_retry(backend, key, RetryPolicy::default()).await
    }

    /// Opens `key`, retrying as `retry` says.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with_retry(
        backend: Arc<dyn KeyBackend>,
        key: KeyRef,
        retry: RetryPolicy,
    ) -> Result<Self, BackendError> {
        let response = retry.retry(key.as_str(), || backend.public_key(&key)).await?;
        let public_key = secp256k1_public_key(&key, &response)?;
        let resolved = KeyRef::new(response.key_id.clone()).map_err(|_| BackendError::MalformedResponse {
            key: key.to_string(),
            detail: format!("GetPublicKey returned the key id `{}`", response.key_id),
        })?;
        Ok(Self { backend, key, resolved, public_key, retry, verifier: Arc::default() })
    }

    /// The key as it was referenced when the handle was opened.
    #[must_use]
    pub fn key(&self) -> &KeyRef {
        &self.key
    }

    /// The key id (or ARN) the backend resolved the reference to; signatures are requested with it.
    #[must_use]
    pub fn key_id(&self) -> &str {
        self.resolved.as_str()
    }

    /// The key's Ethereum address.
    #[must_use]
    pub fn address(&self) -> Address {
        self.public_key.address()
    }

    /// The key's public key.
    #[must_use]
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The backend the handle signs with.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        &self.backend
    }

    /// Signs `digest` and returns a verified, low-s Ethereum signature with its y-parity.
    ///
    /// A signature that does not verify is asked for again when the backend says such signatures are
    /// transient ([`KeyBackend::invalid_signatures_are_transient`]), within the retry policy.
    ///
    /// # Errors
    /// The backend's error (after retries), or [`BackendError::InvalidSignature`] if what the backend
    /// returned is not a valid signature of `digest` by this key.
    pub async fn sign_digest(&self, digest: &[u8; 32]) -> Result<Signature, BackendError> {
        let transient = self.backend.invalid_signatures_are_transient();
        let sign = || async {
            let der = self.backend.sign_digest(&self.resolved, digest).await?;
            self.verifier
                .verify(&self.public_key, &der, digest)
                .map_err(|source| BackendError::InvalidSignature { key: self.key.to_string(), source })
        };
        let retryable = |error: &BackendError| {
            error.is_retryable() || (transient && matches!(error, BackendError::InvalidSignature { .. }))
        };
        self.retry.retry_if(self.key.as_str(), sign, retryable).await
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle")
            .field("backend", &self.backend.name())
            .field("key", &self.key)
            .field("key_id", &self.resolved)
            .field("address", &self.public_key.address())
            .finish_non_exhaustive()
    }
}

/// Handles for many keys over one backend, each opened on first use and then reused: after the first
/// request for a key, signing with it costs one backend request per signature. Concurrent first uses
/// of a key share one `GetPublicKey`.
#[derive(Clone)]
pub struct Keyring {
    backend: Arc<dyn KeyBackend>,
    retry: RetryPolicy,
    handles: Arc<Mutex<HashMap<KeyRef, Arc<OnceCell<KeyHandle>>>>>,
}

impl Keyring {
    /// A keyring over `backend` with the default [`RetryPolicy`].
    #[must_use]
    pub fn new(backend: Arc<dyn KeyBackend>) -> Self {
        Self::with_retry(backend, RetryPolicy::default())
    }

    /// A keyring over `backend` retrying as `retry` says.
    #[must_use]
    pub fn with_retry(backend: Arc<dyn KeyBackend>, retry: RetryPolicy) -> Self {
        Self { backend, retry, handles: Arc::default() }
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        &self.backend
    }

    /// The handle for `key`, opening it on first use.
    ///
    /// # Errors
    /// As [`KeyHandle::open`]; a failed open is not cached.
    pub async fn handle(&self, key: &KeyRef) -> Result<KeyHandle, BackendError> {
        let cell = {
            let mut handles = self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(handles.entry(key.clone()).or_default())
        };
        let handle = cell
            .get_or_try_init(|| KeyHandle::open_with_retry(Arc::clone(&self.backend), key.clone(), self.retry))
            .await?;
        Ok(handle.clone())
    }

    /// The address of `key`.
    ///
    /// # Errors
    /// As [`KeyHandle::open`].
    pub async fn address(&self, key: &KeyRef) -> Result<Address, BackendError> {
        Ok(self.handle(key).await?.address())
    }

    /// Signs `digest` with `key`; see [`KeyHandle::sign_digest`].
    ///
    /// # Errors
    /// As [`KeyHandle::open`] and [`KeyHandle::sign_digest`].
    pub async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Signature, BackendError> {
        self.handle(key).await?.sign_digest(digest).await
    }

    /// Drops the cached handle for `key` (after its alias was moved to another key, say).
    pub fn forget(&self, key: &KeyRef) {
        self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.handles.lock().map_or(0, |handles| handles.len());
        f.debug_struct("Keyring")
            .field("backend", &self.backend.name())
            .field("retry", &self.retry)
            .field("cached_keys", &cached)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            deadline: Duration::from_secs(60),
        };
        for (attempt, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 700), (9, 700), (40, 700)] {
            let delay = policy.backoff(attempt);
            let ceiling = Duration::from_millis(ceiling);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "attempt {attempt}: {delay:?} outside {ceiling:?}");
        }
        assert_eq!(RetryPolicy::none().backoff(1), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors_and_stops_at_max_attempts() {
        let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let throttled = || BackendError::Throttled { key: "k".into(), message: "slow down".into() };
        let result: Result<(), _> = policy
            .retry("k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(throttled())
            })
            .await;
        assert!(matches!(result, Err(BackendError::Throttled { .. })));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

        let result: Result<(), _> = policy
            .retry("k", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BackendError::NotFound { key: "k".into() })
            })
            .await;
        assert!(matches!(result, Err(BackendError::NotFound { .. })));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

        let result = policy
            .retry("k", || async {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                if call < 2 { Err(throttled()) } else { Ok(call) }
            })
            .await;
        assert_eq!(result.unwrap(), 2);
    }

    /// A hung key service costs the deadline, not attempts × the backend's own timeouts.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_hung_attempt_and_starts_no_other() {
        let policy = RetryPolicy { deadline: Duration::from_secs(20), ..RetryPolicy::default() };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = policy
            .retry("alias/hung", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await;
        let error = result.unwrap_err();
        assert!(
            matches!(&error, BackendError::Timeout { key, after: Some(after) } if key == "alias/hung" && *after == Duration::from_secs(20)),
            "{error:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Throttled for ever: attempts stop before a backoff would pass the deadline.
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            deadline: Duration::from_secs(10),
        };
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = policy
            .retry("k", || async { Err(BackendError::Throttled { key: "k".into(), message: "slow down".into() }) })
            .await;
        assert!(matches!(result, Err(BackendError::Throttled { .. })));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}
