//! How to reach AWS KMS: region, profile or static credentials, endpoint, retries and timeouts. Secrets
//! are kept out of `Debug` output.

use std::fmt;
use std::time::Duration;

/// Settings for [`AwsKmsBackend::new`](crate::AwsKmsBackend::new). Everything left unset comes from
/// the standard AWS configuration: environment variables, the shared config and credentials files,
/// SSO, web identity, container and instance credentials — the chain the AWS CLI uses.
///
/// ```
/// use std::time::Duration;
/// use ethkms_aws::{AwsKmsConfig, RetryMode};
///
/// let config = AwsKmsConfig {
///     region: Some("eu-west-1".into()),
///     profile: Some("treasury-signer".into()),
///     retry_mode: RetryMode::Adaptive,
///     max_attempts: 5,
///     operation_timeout: Duration::from_secs(10),
///     ..AwsKmsConfig::default()
/// };
/// assert!(format!("{config:?}").contains("treasury-signer"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// The region; otherwise `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's region.
    pub region: Option<String>,
    /// The shared-config profile; otherwise `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// Static credentials, replacing the credential chain.
    pub credentials: Option<StaticCredentials>,
    /// The KMS endpoint (LocalStack, a VPC endpoint, FIPS); otherwise `AWS_ENDPOINT_URL_KMS`, then
    /// `AWS_ENDPOINT_URL`, as the AWS CLI and foundry's cast read them, then the region's endpoint.
    pub endpoint_url: Option<String>,
    /// The SDK's retry mode.
    pub retry_mode: RetryMode,
    /// Attempts per request in the SDK, the first included. 1 by default: signatures are retried once, by
    /// the key handle's `RetryPolicy` (with an overall deadline), not by both layers.
    pub max_attempts: u32,
    /// How long to wait for a TCP and TLS connection.
    pub connect_timeout: Duration,
    /// The time limit for one operation, all its retries included.
    pub operation_timeout: Duration,
    /// The time limit for each attempt of an operation.
    pub operation_attempt_timeout: Duration,
}

impl Default for AwsKmsConfig {
    /// One attempt per request (the key handle retries); 3.1 s to connect, 10 s per attempt, 30 s per
    /// operation.
    fn default() -> Self {
        Self {
            region: None,
            profile: None,
            credentials: None,
            endpoint_url: None,
            retry_mode: RetryMode::Standard,
            max_attempts: 1,
            connect_timeout: Duration::from_millis(3100),
            operation_timeout: Duration::from_secs(30),
            operation_attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl AwsKmsConfig {
    /// KMS at `endpoint` in `region` with static credentials, the rest default: LocalStack, a VPC
    /// endpoint, a test double.
    ///
    /// ```
    /// use ethkms_aws::{AwsKmsConfig, StaticCredentials};
    ///
    /// let config = AwsKmsConfig::with_endpoint("http://127.0.0.1:4566", "us-east-1", StaticCredentials::new("test", "test", None));
    /// assert_eq!(config.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    /// ```
    #[must_use]
    pub fn with_endpoint(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        credentials: StaticCredentials,
    ) -> Self {
        Self {
            region: Some(region.into()),
            endpoint_url: Some(endpoint.into()),
            credentials: Some(credentials),
            ..Self::default()
        }
    }
}

/// The SDK's retry strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryMode {
    /// Exponential backoff with jitter on throttling, transient and 5xx errors.
    #[default]
    Standard,
    /// Standard, plus client-side rate limiting that slows down when throttled: for bulk work.
    Adaptive,
}

/// An access key, its secret and an optional session token. `Debug` shows the access key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id (`AKIA…` or `ASIA…`); not secret.
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl StaticCredentials {
    /// Credentials from their parts.
    #[must_use]
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self { access_key_id: access_key_id.into(), secret_access_key: secret_access_key.into(), session_token }
    }

    pub(crate) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("session_token", &self.session_token.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let config = AwsKmsConfig {
            credentials: Some(StaticCredentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG",
                Some("FwoGZXIvYXdzEBY".into()),
            )),
            ..AwsKmsConfig::default()
        };
        let text = format!("{config:?}");
        assert!(text.contains("AKIDEXAMPLE"), "{text}");
        assert!(!text.contains("wJalrXUtnFEMI") && !text.contains("FwoGZXIvYXdzEBY"), "{text}");
    }
}
