//! `AwsKmsBackend`: [`KeyBackend`] on the AWS SDK's KMS client.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::Client;
use aws_sdk_kms::config::Credentials;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyManagerType, MessageType, SigningAlgorithmSpec};
use ethkms_backend::{
    BackendError, CreateKeyRequest, KeyBackend, KeyDescription, KeyFilter, KeyInfo, KeyRef, KeySpec, KeyState,
    KeyUsage, PublicKeyResponse, RetryPolicy, Tag, secp256k1_public_key, validate_alias,
};

use crate::config::{AwsKmsConfig, RetryMode};
use crate::errors::{map_sdk_error, never_sent};

/// A [`KeyBackend`] on AWS KMS (or anything that speaks its API, such as LocalStack).
///
/// Keys are `ECC_SECG_P256K1` / `SIGN_VERIFY`; signing is `Sign` with `MessageType=DIGEST` and
/// `ECDSA_SHA_256`, so KMS signs the Keccak-256 digest as it is. The application needs only
/// `kms:Sign` and `kms:GetPublicKey` on its keys.
///
/// ```no_run
/// use std::sync::Arc;
/// use ethkms_aws::AwsKmsBackend;
/// use ethkms_backend::{KeyBackend, KeyHandle};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// // Region, credentials and endpoint from the environment, as the AWS CLI finds them.
/// let backend: Arc<dyn KeyBackend> = Arc::new(AwsKmsBackend::from_env().await?);
/// let wallet = KeyHandle::open(backend, "alias/hot-wallet".parse()?).await?;
/// println!("{}", wallet.address());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AwsKmsBackend {
    client: Client,
    /// How `CreateKey` is retried when throttled (KMS allows about 5 `CreateKey` requests a second).
    create_retry: RetryPolicy,
}

impl AwsKmsBackend {
    /// A backend configured from the environment alone, as [`AwsKmsConfig::default`].
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub async fn from_env() -> Result<Self, BackendError> {
        Self::new(AwsKmsConfig::default()).await
    }

    /// A backend with `config` layered over the standard AWS configuration.
    ///
    /// # Errors
    /// [`BackendError::Configuration`] if no region can be found. Missing credentials show up on the
    /// first request, as [`BackendError::MissingCredentials`], since some sources (SSO, instance roles)
    /// are only asked then.
    pub async fn new(config: AwsKmsConfig) -> Result<Self, BackendError> {
        let retry = match config.retry_mode {
            RetryMode::Standard => RetryConfig::standard(),
            RetryMode::Adaptive => RetryConfig::adaptive(),
        }
        .with_max_attempts(config.max_attempts.max(1));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.operation_timeout)
            .operation_attempt_timeout(config.operation_attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry).timeout_config(timeouts);
        if let Some(region) = config.region {
            loader = loader.region(Region::new(region));
        }
        if let Some(profile) = config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                credentials.access_key_id.clone(),
                credentials.secret_access_key(),
                credentials.session_token().map(str::to_owned),
                None,
                "ethkms-static",
            ));
        }
        if let Some(endpoint) = config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(BackendError::Configuration {
                message: "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), give the profile a region, or pass --aws-region".into(),
            });
        }
        Ok(Self::from_client(Client::new(&sdk_config)))
    }

    /// A backend on a client you configured yourself.
    #[must_use]
    pub fn from_client(client: Client) -> Self {
        let create_retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            // No deadline: an abandoned CreateKey may still create a key, and a retry a second one.
            deadline: Duration::MAX,
        };
        Self { client, create_retry }
    }

    /// The KMS client.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves an alias to the key id it names; a key reference passes through.
    async fn key_id_of(&self, key: &KeyRef) -> Result<String, BackendError> {
        match key.key_id() {
            Some(id) if !key.as_str().starts_with("arn:") => Ok(id.to_owned()),
            _ => Ok(self.describe_key(key).await?.key_id),
        }
    }

    /// Resolves `key` to a key id (administrative operations take no alias) and runs `send` with it,
    /// mapping its error as one of the KMS `action`.
    async fn on_key_id<T, E, R, Fut>(
        &self,
        key: &KeyRef,
        action: &'static str,
        send: impl FnOnce(String) -> Fut,
    ) -> Result<(), BackendError>
    where
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug + 'static,
    {
        let key_id = self.key_id_of(key).await?;
        send(key_id).await.map_err(|error| map_sdk_error(&error, key.as_str(), action))?;
        Ok(())
    }

    /// `CreateKey` with the SDK's own retries off: a retried `CreateKey` after a timeout could create a
    /// second key. Throttling (which created nothing) is retried here with backoff instead.
    async fn create_bare_key(&self, request: &CreateKeyRequest) -> Result<(String, String), BackendError> {
        let usage = match request.key_spec {
            KeySpec::SymmetricDefault => "ENCRYPT_DECRYPT",
            _ => "SIGN_VERIFY",
        };
        let mut operation = self
            .client
            .create_key()
            .key_spec(request.key_spec.as_str().into())
            .key_usage(usage.into())
            .set_description(request.description.clone());
        for tag in &request.tags {
            let tag = aws_sdk_kms::types::Tag::builder()
                .tag_key(&tag.key)
                .tag_value(&tag.value)
                .build()
                .map_err(|error| BackendError::InvalidArgument { message: format!("tag {tag}: {error}") })?;
            operation = operation.tags(tag);
        }
        let no_sdk_retries = aws_sdk_kms::config::Builder::default().retry_config(RetryConfig::disabled());
        // A connection that was refused sent nothing, so no key exists: that error leaves the retry loop
        // as it is (inside `Ok`), neither retried nor reported as a key that may have been created.
        let output = self
            .create_retry
            .retry("(new key)", || async {
                let result = operation.clone().customize().config_override(no_sdk_retries.clone()).send().await;
                match result {
                    Ok(output) => Ok(Ok(output)),
                    Err(error) if never_sent(&error) => Ok(Err(map_sdk_error(&error, "(new key)", "CreateKey"))),
                    Err(error) => Err(match map_sdk_error(&error, "(new key)", "CreateKey") {
                        throttled @ BackendError::Throttled { .. } => throttled,
                        // Anything else is final: a retry could create a second key.
                        other if other.is_retryable() => BackendError::Service {
                            key: "(new key)".into(),
                            code: error.code().unwrap_or("Unknown").into(),
                            message: format!(
                                "{other}; not retried, since the key may have been created: check `ethkms wallet list`"
                            ),
                            retryable: false,
                        },
                        other => other,
                    }),
                }
            })
            .await??;
        let metadata =
            output.key_metadata().ok_or_else(|| malformed("(new key)", "CreateKey returned no KeyMetadata"))?;
        Ok((metadata.key_id().to_owned(), metadata.arn().unwrap_or_default().to_owned()))
    }

    async fn tags_of(&self, key_id: &str) -> Result<Vec<Tag>, BackendError> {
        let mut tags = Vec::new();
        let mut pages = self.client.list_resource_tags().key_id(key_id).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| map_sdk_error(&error, key_id, "ListResourceTags"))?;
            tags.extend(page.tags().iter().map(|tag| Tag::new(tag.tag_key(), tag.tag_value())));
        }
        Ok(tags)
    }

    /// Alias names by the key id they point at.
    async fn aliases_by_key(&self) -> Result<HashMap<String, Vec<String>>, BackendError> {
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        let mut pages = self.client.list_aliases().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| map_sdk_error(&error, "(all aliases)", "ListAliases"))?;
            for alias in page.aliases() {
                if let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) {
                    aliases.entry(target.to_owned()).or_default().push(name.to_owned());
                }
            }
        }
        Ok(aliases)
    }
}

fn malformed(key: &str, detail: &str) -> BackendError {
    BackendError::MalformedResponse { key: key.to_owned(), detail: detail.to_owned() }
}

fn describe(metadata: &aws_sdk_kms::types::KeyMetadata) -> KeyDescription {
    KeyDescription {
        key_id: metadata.key_id().to_owned(),
        arn: metadata.arn().unwrap_or_default().to_owned(),
        state: KeyState::from(metadata.key_state().map_or("Unknown", |state| state.as_str())),
        key_spec: KeySpec::from(metadata.key_spec().map_or("Unknown", |spec| spec.as_str())),
        key_usage: KeyUsage::from(metadata.key_usage().map_or("Unknown", |usage| usage.as_str())),
        description: metadata.description().filter(|text| !text.is_empty()).map(str::to_owned),
        aliases: Vec::new(),
        tags: Vec::new(),
    }
}

impl fmt::Debug for AwsKmsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.client.config();
        f.debug_struct("AwsKmsBackend")
            .field("region", &config.region().map(|region| region.as_ref().to_owned()))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyBackend for AwsKmsBackend {
    fn name(&self) -> &'static str {
        "aws-kms"
    }

    async fn create_key(&self, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
        request.validate()?;
        let (key_id, arn) = self.create_bare_key(request).await?;
        let incomplete = |step: &'static str, source: BackendError| BackendError::Incomplete {
            key_id: key_id.clone(),
            step,
            source: Box::new(source),
        };
        if let Some(alias) = &request.alias {
            let result = self.client.create_alias().alias_name(alias).target_key_id(&key_id).send().await;
            if let Err(error) = result {
                let source = if error.code() == Some("AlreadyExistsException") {
                    BackendError::AliasExists { alias: alias.clone() }
                } else {
                    map_sdk_error(&error, alias, "CreateAlias")
                };
                return Err(incomplete("creating the alias", source));
            }
        }
        let address = if request.key_spec == KeySpec::EccSecgP256k1 {
            let key = KeyRef::new(key_id.clone()).map_err(|source| incomplete("reading the key id", source))?;
            let response =
                self.public_key(&key).await.map_err(|source| incomplete("reading the public key", source))?;
            let public_key =
                secp256k1_public_key(&key, &response).map_err(|source| incomplete("parsing the public key", source))?;
            Some(public_key.address())
        } else {
            None
        };
        Ok(KeyInfo { key_id, arn, alias: request.alias.clone(), address })
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKeyResponse, BackendError> {
        let output = self
            .client
            .get_public_key()
            .key_id(key.as_str())
            .send()
            .await
            .map_err(|error| map_sdk_error(&error, key.as_str(), "GetPublicKey"))?;
        Ok(PublicKeyResponse {
            key_id: output
                .key_id()
                .ok_or_else(|| malformed(key.as_str(), "GetPublicKey returned no KeyId"))?
                .to_owned(),
            key_spec: KeySpec::from(output.key_spec().map_or("Unknown", |spec| spec.as_str())),
            key_usage: KeyUsage::from(output.key_usage().map_or("Unknown", |usage| usage.as_str())),
            spki_der: output
                .public_key()
                .ok_or_else(|| malformed(key.as_str(), "GetPublicKey returned no PublicKey"))?
                .as_ref()
                .to_vec(),
        })
    }

    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError> {
        let output = self
            .client
            .sign()
            .key_id(key.as_str())
            .message(Blob::new(digest.to_vec()))
            .message_type(MessageType::Digest)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|error| map_sdk_error(&error, key.as_str(), "Sign"))?;
        let signature = output.signature().ok_or_else(|| malformed(key.as_str(), "Sign returned no Signature"))?;
        Ok(signature.as_ref().to_vec())
    }

    async fn describe_key(&self, key: &KeyRef) -> Result<KeyDescription, BackendError> {
        let output = self
            .client
            .describe_key()
            .key_id(key.as_str())
            .send()
            .await
            .map_err(|error| map_sdk_error(&error, key.as_str(), "DescribeKey"))?;
        let metadata =
            output.key_metadata().ok_or_else(|| malformed(key.as_str(), "DescribeKey returned no KeyMetadata"))?;
        Ok(describe(metadata))
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyDescription>, BackendError> {
        let mut aliases = self.aliases_by_key().await?;
        let mut keys = Vec::new();
        let mut pages = self.client.list_keys().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| map_sdk_error(&error, "(all keys)", "ListKeys"))?;
            for entry in page.keys() {
                let Some(key_id) = entry.key_id() else {
                    continue;
                };
                let tags = self.tags_of(key_id).await?;
                if !filter.matches(&tags) {
                    continue;
                }
                let key = KeyRef::new(key_id).map_err(|_| malformed(key_id, "ListKeys returned an invalid key id"))?;
                let output = self
                    .client
                    .describe_key()
                    .key_id(key.as_str())
                    .send()
                    .await
                    .map_err(|error| map_sdk_error(&error, key_id, "DescribeKey"))?;
                let Some(metadata) = output.key_metadata() else {
                    continue;
                };
                // AWS-managed keys (aws/s3, …) are not the caller's to sign with.
                if metadata.key_manager() == Some(&KeyManagerType::Aws) {
                    continue;
                }
                let mut description = describe(metadata);
                description.aliases = aliases.remove(key_id).unwrap_or_default();
                description.tags = tags;
                keys.push(description);
            }
        }
        Ok(keys)
    }

    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError> {
        validate_alias(alias)?;
        let key_id = self.key_id_of(key).await?;
        let update = self.client.update_alias().alias_name(alias).target_key_id(&key_id).send().await;
        match update {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("NotFoundException") => {
                self.client
                    .create_alias()
                    .alias_name(alias)
                    .target_key_id(&key_id)
                    .send()
                    .await
                    .map_err(|error| map_sdk_error(&error, alias, "CreateAlias"))?;
                Ok(())
            }
            Err(error) => Err(map_sdk_error(&error, alias, "UpdateAlias")),
        }
    }

    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.on_key_id(key, "DisableKey", |key_id| self.client.disable_key().key_id(key_id).send()).await
    }

    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.on_key_id(key, "EnableKey", |key_id| self.client.enable_key().key_id(key_id).send()).await
    }

    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError> {
        let days = i32::try_from(pending_days).ok().filter(|days| (7..=30).contains(days)).ok_or_else(|| {
            BackendError::InvalidArgument {
                message: format!("the deletion waiting period must be 7 to 30 days, not {pending_days}"),
            }
        })?;
        self.on_key_id(key, "ScheduleKeyDeletion", |key_id| {
            self.client.schedule_key_deletion().key_id(key_id).pending_window_in_days(days).send()
        })
        .await
    }
}
