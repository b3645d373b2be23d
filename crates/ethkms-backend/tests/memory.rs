//! The in-memory backend: the backend contract, request counting, and fault injection.

use std::sync::Arc;
use std::time::Duration;

use ethkms_backend::{
    BackendError, CreateKeyRequest, Faults, KeyBackend, KeyHandle, KeyRef, Keyring, MemoryBackend, RetryPolicy,
};
use ethkms_core::{ErrorKind, keccak256};

ethkms_backend::contract_tests!(async { Some(Arc::new(MemoryBackend::new()) as Arc<dyn KeyBackend>) });

async fn backend_with_key() -> (Arc<MemoryBackend>, KeyRef) {
    let backend = Arc::new(MemoryBackend::with_seed(1));
    let info = backend.create_key(&CreateKeyRequest::new().alias("faults")).await.unwrap();
    (backend, KeyRef::new(info.key_id).unwrap())
}

#[tokio::test]
async fn after_the_first_call_one_signature_is_one_request() {
    let (backend, key) = backend_with_key().await;
    let keyring = Keyring::new(Arc::clone(&backend) as Arc<dyn KeyBackend>);
    for index in 0..25u8 {
        keyring.sign_digest(&key, &keccak256(&[index])).await.unwrap();
    }
    let alias = KeyRef::new("alias/faults").unwrap();
    keyring.address(&alias).await.unwrap();
    keyring.address(&alias).await.unwrap();
    let counts = backend.request_counts();
    assert_eq!((counts.public_key, counts.sign), (2, 25), "{counts:?}");
}

#[tokio::test]
async fn concurrent_first_uses_share_one_public_key_request() {
    let (backend, key) = backend_with_key().await;
    backend.set_faults(Faults { latency: Duration::from_millis(20), ..Faults::default() });
    let keyring = Keyring::new(Arc::clone(&backend) as Arc<dyn KeyBackend>);
    let tasks: Vec<_> = (0..8u8)
        .map(|index| {
            let (keyring, key) = (keyring.clone(), key.clone());
            tokio::spawn(async move { keyring.sign_digest(&key, &keccak256(&[index])).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(backend.request_counts().public_key, 1);
    assert_eq!(backend.request_counts().sign, 8);
}

#[tokio::test(start_paused = true)]
async fn throttling_at_30_percent_still_yields_every_signature() {
    let (backend, key) = backend_with_key().await;
    backend.set_faults(Faults { throttle_rate: 0.3, ..Faults::default() });
    let retry = RetryPolicy { max_attempts: 8, ..RetryPolicy::default() };
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let handle = KeyHandle::open_with_retry(dynamic, key, retry).await.unwrap();
    for index in 0..200u32 {
        let digest = keccak256(&index.to_be_bytes());
        let signature = handle.sign_digest(&digest).await.unwrap();
        assert_eq!(signature.recover_address(&digest).unwrap(), handle.address());
    }
    let counts = backend.request_counts();
    // Throttled attempts were retried: more requests than signatures, but within the attempt budget.
    assert!(counts.sign > 230 && counts.sign < 200 * 8, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn throttling_beyond_the_attempts_is_reported_as_throttling() {
    let (backend, key) = backend_with_key().await;
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let handle = KeyHandle::open(dynamic, key).await.unwrap();
    backend.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let error = handle.sign_digest(&[1; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::Throttled { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(backend.request_counts().sign, u64::from(RetryPolicy::default().max_attempts));
}

#[tokio::test]
async fn corrupted_signatures_are_rejected_never_returned() {
    let (backend, key) = backend_with_key().await;
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let handle = KeyHandle::open(dynamic, key).await.unwrap();
    backend.set_faults(Faults { corrupt_signature_rate: 1.0, ..Faults::default() });
    // The first signature is verified plainly, the later ones with the key's precomputed multiples:
    // both paths reject.
    for index in 0..100u8 {
        let error = handle.sign_digest(&keccak256(&[index])).await.unwrap_err();
        let BackendError::InvalidSignature { key, source } = &error else { panic!("{error:?}") };
        assert_eq!(key, handle.key().as_str());
        // A flipped bit breaks the DER or the signature; either way it is caught.
        assert!(source.position().is_some() || source.kind() == ErrorKind::VerificationFailed, "{source}");
    }
}

#[tokio::test]
async fn foreign_signatures_are_rejected_never_returned() {
    let (backend, key) = backend_with_key().await;
    let dynamic: Arc<dyn KeyBackend> = Arc::clone(&backend) as Arc<dyn KeyBackend>;
    let handle = KeyHandle::open(dynamic, key).await.unwrap();
    backend.set_faults(Faults { foreign_signature_rate: 0.5, ..Faults::default() });
    let (mut good, mut rejected) = (0, 0);
    for index in 0..100u8 {
        let digest = keccak256(&[index]);
        match handle.sign_digest(&digest).await {
            Ok(signature) => {
                assert_eq!(signature.recover_address(&digest).unwrap(), handle.address());
                good += 1;
            }
            Err(BackendError::InvalidSignature { source, .. }) => {
                assert_eq!(source.kind(), ErrorKind::VerificationFailed);
                rejected += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(good > 20 && rejected > 20, "{good} good, {rejected} rejected");
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_to_each_request() {
    let (backend, key) = backend_with_key().await;
    backend.set_faults(Faults { latency: Duration::from_millis(150), ..Faults::default() });
    let started = tokio::time::Instant::now();
    backend.sign_digest(&key, &[3; 32]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn handles_do_not_show_secrets() {
    let (backend, key) = backend_with_key().await;
    let handle = KeyHandle::open(backend as Arc<dyn KeyBackend>, key).await.unwrap();
    let text = format!("{handle:?}");
    assert!(text.contains("backend: \"memory\"") && text.contains(&handle.address().to_string()), "{text}");
}

/// A memory backend that declares its invalid signatures transient, as the PKCS#11 backend does.
#[derive(Debug)]
struct TransientFaults(Arc<MemoryBackend>);

#[async_trait::async_trait]
impl KeyBackend for TransientFaults {
    fn name(&self) -> &'static str {
        "transient-faults"
    }
    fn invalid_signatures_are_transient(&self) -> bool {
        true
    }
    async fn create_key(&self, request: &CreateKeyRequest) -> Result<ethkms_backend::KeyInfo, BackendError> {
        self.0.create_key(request).await
    }
    async fn public_key(&self, key: &KeyRef) -> Result<ethkms_backend::PublicKeyResponse, BackendError> {
        self.0.public_key(key).await
    }
    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError> {
        self.0.sign_digest(key, digest).await
    }
    async fn describe_key(&self, key: &KeyRef) -> Result<ethkms_backend::KeyDescription, BackendError> {
        self.0.describe_key(key).await
    }
    async fn list_keys(
        &self,
        filter: &ethkms_backend::KeyFilter,
    ) -> Result<Vec<ethkms_backend::KeyDescription>, BackendError> {
        self.0.list_keys(filter).await
    }
    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError> {
        self.0.set_alias(alias, key).await
    }
    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.0.disable_key(key).await
    }
    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.0.enable_key(key).await
    }
    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError> {
        self.0.schedule_key_deletion(key, pending_days).await
    }
}

/// Where the backend says bad signatures are transient, the handle asks again: every signature comes
/// back verified, more requests than signatures were made; a backend that only ever signs badly still
/// gets an error after the attempts, never a signature.
#[tokio::test(start_paused = true)]
async fn transient_invalid_signatures_are_retried_never_returned() {
    let (memory, key) = backend_with_key().await;
    let backend: Arc<dyn KeyBackend> = Arc::new(TransientFaults(Arc::clone(&memory)));
    let handle = KeyHandle::open(backend, key).await.unwrap();
    memory.set_faults(Faults { corrupt_signature_rate: 0.1, foreign_signature_rate: 0.1, ..Faults::default() });
    for index in 0..100u8 {
        let digest = keccak256(&[index]);
        let signature = handle.sign_digest(&digest).await.unwrap();
        assert_eq!(signature.recover_address(&digest).unwrap(), handle.address());
    }
    let requests = memory.request_counts().sign;
    assert!(requests > 105, "bad signatures were asked for again: {requests} requests for 100 signatures");

    memory.set_faults(Faults { foreign_signature_rate: 1.0, ..Faults::default() });
    let before = memory.request_counts().sign;
    let error = handle.sign_digest(&[9; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::InvalidSignature { .. }), "{error:?}");
    assert_eq!(memory.request_counts().sign - before, u64::from(RetryPolicy::default().max_attempts));
}
