//! One error type for every backend, saying what happened to which key and what to do about it.

use std::time::Duration;

use crate::types::{KeySpec, KeyUsage};

/// What went wrong in a key backend. Every variant about a key names it; messages end with a hint.
///
/// [`is_retryable`](Self::is_retryable) tells throttling, timeouts and transport failures (worth
/// retrying) from everything else (not).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No key has this id, ARN or alias.
    #[error(
        "key `{key}` was not found; check the key id, ARN or alias and the region (list keys with `ethkms wallet list`)"
    )]
    NotFound {
        /// The key as it was referenced.
        key: String,
    },
    /// The caller's credentials may not do this to this key.
    #[error(
        "access to key `{key}` was denied ({message}); the caller needs kms:{action} on it (`ethkms policy iam` prints a policy)"
    )]
    AccessDenied {
        /// The key as it was referenced.
        key: String,
        /// The KMS action that was refused.
        action: &'static str,
        /// The service's message.
        message: String,
    },
    /// The key is disabled.
    #[error("key `{key}` is disabled; an administrator can enable it (kms:EnableKey), or use another key")]
    Disabled {
        /// The key as it was referenced.
        key: String,
    },
    /// The key is scheduled for deletion.
    #[error(
        "key `{key}` is pending deletion; an administrator can cancel the deletion (kms:CancelKeyDeletion) to use it again"
    )]
    PendingDeletion {
        /// The key as it was referenced.
        key: String,
    },
    /// The key is in another state that does not allow the operation.
    #[error("key `{key}` is in state {state} and cannot be used for this; wait for it to become Enabled")]
    InvalidState {
        /// The key as it was referenced.
        key: String,
        /// The state KMS reported.
        state: String,
    },
    /// The key is not a secp256k1 key.
    #[error(
        "key `{key}` is a {spec} key; Ethereum needs an ECC_SECG_P256K1 (secp256k1) key: create one with `ethkms wallet create`"
    )]
    WrongKeySpec {
        /// The key as it was referenced.
        key: String,
        /// Its key spec.
        spec: KeySpec,
    },
    /// The key is not a signing key.
    #[error("key `{key}` has key usage {usage}; signing needs a SIGN_VERIFY key")]
    WrongKeyUsage {
        /// The key as it was referenced.
        key: String,
        /// Its key usage.
        usage: KeyUsage,
    },
    /// The service throttled the request. Retryable.
    #[error(
        "the key service throttled a request for key `{key}` ({message}); retry with backoff, or raise the KMS request quota"
    )]
    Throttled {
        /// The key as it was referenced.
        key: String,
        /// The service's message.
        message: String,
    },
    /// The service could not be reached. Retryable.
    #[error("could not reach the key service for key `{key}` ({message}); check the network and the endpoint")]
    Transport {
        /// The key as it was referenced.
        key: String,
        /// What failed.
        message: String,
    },
    /// The request timed out. Retryable.
    #[error("a request for key `{key}` timed out{}; retry, or raise the timeout", after.map(|after| format!(" after {after:?}")).unwrap_or_default())]
    Timeout {
        /// The key as it was referenced.
        key: String,
        /// The timeout that expired, when known.
        after: Option<Duration>,
    },
    /// The service answered with something that is not what the API promises.
    #[error("the key service returned a malformed response for key `{key}`: {detail}")]
    MalformedResponse {
        /// The key as it was referenced.
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The service returned a signature that does not verify against the key's public key, or is not
    /// a valid DER signature. It was discarded, never returned.
    #[error("the key service returned an unusable signature for key `{key}` ({source}); it was discarded")]
    InvalidSignature {
        /// The key as it was referenced.
        key: String,
        /// Why it was rejected.
        source: ethkms_core::Error,
    },
    /// The key's public key is not a usable secp256k1 SubjectPublicKeyInfo.
    #[error("the public key of key `{key}` is unusable: {source}")]
    InvalidPublicKey {
        /// The key as it was referenced.
        key: String,
        /// Why it was rejected.
        source: ethkms_core::Error,
    },
    /// No credentials could be found.
    #[error(
        "no credentials for the key service ({message}); provide AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE or --aws-profile), SSO (`aws sso login`), web identity or an instance role"
    )]
    MissingCredentials {
        /// What the credential chain reported.
        message: String,
    },
    /// The service rejected the credentials themselves.
    #[error(
        "the key service rejected the credentials ({message}); check the access key, secret and session token, and that they have not expired"
    )]
    InvalidCredentials {
        /// The service's message.
        message: String,
    },
    /// A PKCS#11 token refused the user PIN.
    #[error(
        "token `{token}` refused the PIN (CKR_PIN_INCORRECT); check the PIN given through {pin_source} (each wrong PIN brings the token closer to locking it)"
    )]
    PinIncorrect {
        /// The token's label.
        token: String,
        /// Where the PIN came from (an environment variable or a file, named), never the PIN.
        pin_source: String,
    },
    /// A PKCS#11 token is locked: its user PIN was blocked (too many wrong PINs) or has expired.
    #[error("token `{token}` is locked ({reason}); its security officer must reset the user PIN")]
    TokenLocked {
        /// The token's label.
        token: String,
        /// The token's answer (`CKR_PIN_LOCKED`, `CKR_PIN_EXPIRED`).
        reason: &'static str,
    },
    /// A PKCS#11 token answered that this process is not logged in (`CKR_USER_NOT_LOGGED_IN`), and logging in
    /// again did not help.
    #[error(
        "token `{token}` answered that this process is not logged in (CKR_USER_NOT_LOGGED_IN), even after logging in again; check what else logs the process out of the token (C_Logout, C_CloseAllSessions)"
    )]
    NotLoggedIn {
        /// The token's label.
        token: String,
    },
    /// A key reference answers to more than one key (two PKCS#11 keys with one label or `CKA_ID`, say):
    /// none of them is used.
    #[error("key `{key}` is ambiguous: {detail}")]
    AmbiguousKey {
        /// The key as it was referenced.
        key: String,
        /// What answers to it, and how to name one key.
        detail: String,
    },
    /// The backend cannot do this at all (a PKCS#11 token has no key aliases of its own, say): no retry
    /// or other argument will help.
    #[error("the {backend} backend cannot {operation} (key `{key}`): {reason}")]
    Unsupported {
        /// The key as it was referenced.
        key: String,
        /// The backend ([`KeyBackend::name`](crate::KeyBackend::name)).
        backend: &'static str,
        /// What was asked, as a verb phrase (`disable a key`).
        operation: &'static str,
        /// Why not, and what to do instead.
        reason: String,
    },
    /// The backend is misconfigured (no region, a bad endpoint, …).
    #[error("key service configuration: {message}")]
    Configuration {
        /// What is wrong and how to set it.
        message: String,
    },
    /// A key reference is not of any form KMS accepts.
    #[error("`{input}` is not a key id, key ARN, alias name (alias/NAME) or alias ARN: {reason}")]
    InvalidKeyReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument is invalid (an alias name, a tag, …).
    #[error("{message}")]
    InvalidArgument {
        /// What is wrong.
        message: String,
    },
    /// The alias is already in use.
    #[error("alias `{alias}` already exists; choose another name, or move it with `ethkms wallet rotate`")]
    AliasExists {
        /// The alias.
        alias: String,
    },
    /// A key was created but a later step (alias, public key) failed. The key exists: it is named so
    /// that it is not orphaned.
    #[error(
        "key `{key_id}` was created, but {step} failed: {source}. The key exists; finish the step or schedule its deletion"
    )]
    Incomplete {
        /// The id of the key that was created.
        key_id: String,
        /// The step that failed.
        step: &'static str,
        /// Why it failed.
        source: Box<Self>,
    },
    /// Any other error the service reported.
    #[error("the key service refused a request for key `{key}`: {code}: {message}")]
    Service {
        /// The key as it was referenced.
        key: String,
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
        /// Whether the service says a retry may succeed (internal errors, dependency timeouts).
        retryable: bool,
    },
}

impl BackendError {
    /// Whether retrying the same request may succeed: throttling, timeouts, transport failures and
    /// internal service errors.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Throttled { .. } | Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Service { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The key the error is about, as it was referenced (or its id, for [`Incomplete`](Self::Incomplete)).
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NotFound { key }
            | Self::AccessDenied { key, .. }
            | Self::Disabled { key }
            | Self::PendingDeletion { key }
            | Self::InvalidState { key, .. }
            | Self::WrongKeySpec { key, .. }
            | Self::WrongKeyUsage { key, .. }
            | Self::Throttled { key, .. }
            | Self::Transport { key, .. }
            | Self::Timeout { key, .. }
            | Self::MalformedResponse { key, .. }
            | Self::InvalidSignature { key, .. }
            | Self::InvalidPublicKey { key, .. }
            | Self::Service { key, .. }
            | Self::AmbiguousKey { key, .. }
            | Self::Unsupported { key, .. } => Some(key),
            Self::Incomplete { key_id, .. } => Some(key_id),
            Self::InvalidKeyReference { input, .. } => Some(input),
            Self::MissingCredentials { .. }
            | Self::InvalidCredentials { .. }
            | Self::PinIncorrect { .. }
            | Self::TokenLocked { .. }
            | Self::NotLoggedIn { .. }
            | Self::Configuration { .. }
            | Self::InvalidArgument { .. }
            | Self::AliasExists { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_key_and_give_a_hint() {
        let error = BackendError::WrongKeySpec { key: "alias/hot".into(), spec: KeySpec::Rsa2048 };
        let text = error.to_string();
        assert!(
            text.contains("`alias/hot`") && text.contains("RSA_2048") && text.contains("ECC_SECG_P256K1"),
            "{text}"
        );
        assert_eq!(error.key(), Some("alias/hot"));
        assert!(!error.is_retryable());
        let throttled = BackendError::Throttled { key: "k".into(), message: "Rate exceeded".into() };
        assert!(throttled.is_retryable());
        let timeout = BackendError::Timeout { key: "k".into(), after: Some(Duration::from_secs(2)) };
        assert!(timeout.to_string().contains("after 2s"), "{timeout}");
        let incomplete = BackendError::Incomplete {
            key_id: "abc".into(),
            step: "creating the alias",
            source: Box::new(BackendError::AliasExists { alias: "alias/x".into() }),
        };
        assert!(
            incomplete.to_string().starts_with("key `abc` was created, but creating the alias failed"),
            "{incomplete}"
        );
        assert_eq!(incomplete.key(), Some("abc"));
        let pin = BackendError::PinIncorrect { token: "ethkms".into(), pin_source: "ETHKMS_PKCS11_PIN".into() };
        assert!(pin.to_string().contains("CKR_PIN_INCORRECT") && pin.to_string().contains("ETHKMS_PKCS11_PIN"));
        assert!(!pin.is_retryable() && pin.key().is_none());
        let unsupported = BackendError::Unsupported {
            key: "k".into(),
            backend: "pkcs11",
            operation: "disable a key",
            reason: "its CKA_SIGN is read-only".into(),
        };
        assert_eq!(
            unsupported.to_string(),
            "the pkcs11 backend cannot disable a key (key `k`): its CKA_SIGN is read-only"
        );
        assert_eq!(unsupported.key(), Some("k"));
        let ambiguous = BackendError::AmbiguousKey { key: "alias/hot".into(), detail: "2 private keys".into() };
        assert_eq!(ambiguous.to_string(), "key `alias/hot` is ambiguous: 2 private keys");
        assert_eq!(ambiguous.key(), Some("alias/hot"));
        let logged_out = BackendError::NotLoggedIn { token: "treasury".into() };
        assert!(logged_out.to_string().contains("CKR_USER_NOT_LOGGED_IN") && logged_out.key().is_none());
        assert!(!logged_out.is_retryable() && !ambiguous.is_retryable());
    }
}
