//! The `KeyBackend` trait: the handful of KMS operations an Ethereum wallet needs, object-safe so that
//! a backend can be chosen at run time (`Arc<dyn KeyBackend>`).

use std::fmt;

use async_trait::async_trait;
use ethkms_core::PublicKey;

use crate::error::BackendError;
use crate::types::{
    CreateKeyRequest, KeyDescription, KeyFilter, KeyInfo, KeyRef, KeySpec, KeyUsage, PublicKeyResponse,
};

/// A service that holds private keys and signs with them without ever revealing them.
///
/// Every method that names a key accepts any [`KeyRef`] form: key id, key ARN, alias name or alias
/// ARN. Errors are [`BackendError`]s that name the key.
///
/// Most callers sign through a [`KeyHandle`](crate::KeyHandle), which caches the public key and
/// verifies every signature, rather than calling [`sign_digest`](Self::sign_digest) directly.
#[async_trait]
pub trait KeyBackend: Send + Sync + fmt::Debug {
    /// A short name for messages and metrics (`"aws-kms"`, `"memory"`).
    fn name(&self) -> &'static str;

    /// Whether a signature that fails verification is worth asking for again: `true` where the signer
    /// is known to return an occasional bad signature (a PKCS#11 token: `SoftHSMv2` issue #901), so that
    /// [`KeyHandle::sign_digest`](crate::KeyHandle::sign_digest) retries it within its [`RetryPolicy`](crate::RetryPolicy)
    /// (it is still never returned). `false` (the default): a bad signature is reported at once, as it
    /// points at a corrupted response or the wrong key.
    fn invalid_signatures_are_transient(&self) -> bool {
        false
    }

    /// Creates a key (secp256k1 `SIGN_VERIFY` unless the request says otherwise), then its alias.
    /// For a secp256k1 key the returned info carries its Ethereum address.
    ///
    /// If a step after the key's creation fails, the error is [`BackendError::Incomplete`] naming the
    /// key that exists.
    async fn create_key(&self, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError>;

    /// The key's public key as a DER SubjectPublicKeyInfo, with its spec and usage (`GetPublicKey`).
    async fn public_key(&self, key: &KeyRef) -> Result<PublicKeyResponse, BackendError>;

    /// Signs a 32-byte digest as it is (`Sign` with `MessageType=DIGEST`, `ECDSA_SHA_256`) and returns
    /// the DER signature exactly as the service sent it: unverified, possibly high-s.
    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError>;

    /// The key's metadata (`DescribeKey`).
    async fn describe_key(&self, key: &KeyRef) -> Result<KeyDescription, BackendError>;

    /// Every key that passes `filter`, with aliases and tags, across all result pages.
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyDescription>, BackendError>;

    /// Points `alias` (`alias/…`) at `key`, creating the alias or moving it if it exists.
    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError>;

    /// Disables the key: it can no longer sign until enabled again.
    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError>;

    /// Enables a disabled key.
    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError>;

    /// Schedules the key's deletion after `pending_days` (KMS allows 7 to 30); it is unusable meanwhile.
    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError>;
}

/// Checks that a `GetPublicKey` answer is a secp256k1 signing key and parses it.
///
/// # Errors
/// [`BackendError::WrongKeySpec`] or [`BackendError::WrongKeyUsage`] naming what the key is, or
/// [`BackendError::InvalidPublicKey`] if the SubjectPublicKeyInfo does not parse.
pub fn secp256k1_public_key(key: &KeyRef, response: &PublicKeyResponse) -> Result<PublicKey, BackendError> {
    if response.key_spec != KeySpec::EccSecgP256k1 {
        return Err(BackendError::WrongKeySpec { key: key.to_string(), spec: response.key_spec.clone() });
    }
    if response.key_usage != KeyUsage::SignVerify {
        return Err(BackendError::WrongKeyUsage { key: key.to_string(), usage: response.key_usage.clone() });
    }
    PublicKey::from_spki_der(&response.spki_der)
        .map_err(|source| BackendError::InvalidPublicKey { key: key.to_string(), source })
}
