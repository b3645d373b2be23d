//! The values a key backend takes and returns: key references, specs, usages, states, tags, and the
//! descriptions of keys.

use std::fmt;
use std::str::FromStr;

use ethkms_core::Address;

use crate::error::BackendError;

/// A reference to a key, in any form KMS accepts: a key id (`1234abcd-…`), a key ARN
/// (`arn:aws:kms:…:key/…`), an alias name (`alias/…`) or an alias ARN (`arn:aws:kms:…:alias/…`).
///
/// A PKCS#11 token's keys have ARN-shaped names too, with the service `pkcs11` in place of `kms`
/// (`arn:ethkms:pkcs11::TOKEN-SERIAL:key/ID`, see the `ethkms-pkcs11` crate).
///
/// ```
/// use ethkms_backend::KeyRef;
///
/// let alias: KeyRef = "alias/hot-wallet".parse()?;
/// assert!(alias.is_alias());
/// assert!("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".parse::<KeyRef>().is_ok());
/// assert!("".parse::<KeyRef>().is_err());
/// # Ok::<(), ethkms_backend::BackendError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef(String);

impl KeyRef {
    /// Checks the form of `reference` (not whether the key exists).
    ///
    /// # Errors
    /// [`BackendError::InvalidKeyReference`] naming what is wrong.
    pub fn new(reference: impl Into<String>) -> Result<Self, BackendError> {
        let reference = reference.into();
        let invalid = |reason: &'static str| BackendError::InvalidKeyReference { input: reference.clone(), reason };
        if reference.is_empty() {
            return Err(invalid("it is empty"));
        }
        if reference.len() > 2048 {
            return Err(invalid("it is longer than 2048 characters"));
        }
        if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains white space or control characters"));
        }
        if let Some(rest) = reference.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [_partition, service, _region, _account, resource] = parts.as_slice() else {
                return Err(invalid("an ARN has the form arn:PARTITION:kms:REGION:ACCOUNT:key/ID or …:alias/NAME"));
            };
            if *service != "kms" && *service != "pkcs11" {
                return Err(invalid("the ARN is not a KMS (or PKCS#11 token) ARN"));
            }
            let valid_resource = resource.strip_prefix("key/").is_some_and(|id| !id.is_empty())
                || resource.strip_prefix("alias/").is_some_and(|name| !name.is_empty());
            if !valid_resource {
                return Err(invalid("a KMS ARN must end in key/ID or alias/NAME"));
            }
        } else if let Some(name) = reference.strip_prefix("alias/") {
            if name.is_empty() {
                return Err(invalid("the alias name after `alias/` is empty"));
            }
        } else if reference.contains('/') || reference.contains(':') {
            return Err(invalid("expected a key id, a key ARN, `alias/NAME` or an alias ARN"));
        }
        Ok(Self(reference))
    }

    /// The reference as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this names an alias (`alias/…` or an alias ARN) rather than a key.
    #[must_use]
    pub fn is_alias(&self) -> bool {
        self.0.starts_with("alias/") || (self.0.starts_with("arn:") && self.0.contains(":alias/"))
    }

    /// The alias name (`alias/…`) if this is an alias name or alias ARN.
    #[must_use]
    pub fn alias_name(&self) -> Option<&str> {
        if self.0.starts_with("alias/") {
            Some(&self.0)
        } else {
            self.0.find(":alias/").map(|index| &self.0[index + 1..])
        }
    }

    /// The key id if this is a key id or key ARN.
    #[must_use]
    pub fn key_id(&self) -> Option<&str> {
        if self.is_alias() {
            None
        } else if self.0.starts_with("arn:") {
            self.0.find(":key/").map(|index| &self.0[index + 5..])
        } else {
            Some(&self.0)
        }
    }
}

impl FromStr for KeyRef {
    type Err = BackendError;

    fn from_str(reference: &str) -> Result<Self, Self::Err> {
        Self::new(reference)
    }
}

impl TryFrom<&str> for KeyRef {
    type Error = BackendError;

    fn try_from(reference: &str) -> Result<Self, Self::Error> {
        Self::new(reference)
    }
}

impl TryFrom<String> for KeyRef {
    type Error = BackendError;

    fn try_from(reference: String) -> Result<Self, Self::Error> {
        Self::new(reference)
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for KeyRef {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Defines an enum of KMS names with an `Other` fallback, `as_str`, `Display` and `FromStr`.
macro_rules! kms_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
            /// A value this version does not know, as the service wrote it.
            Other(String),
        }

        impl $name {
            /// The name KMS uses.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Ok(match text {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                })
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text.parse() {
                    Ok(value) => value,
                    Err(never) => match never {},
                }
            }
        }
    };
}

kms_enum! {
    /// A KMS key spec. Ethereum keys are [`KeySpec::EccSecgP256k1`].
    KeySpec {
        /// secp256k1: the only spec an Ethereum key can have.
        EccSecgP256k1 => "ECC_SECG_P256K1",
        /// NIST P-256.
        EccNistP256 => "ECC_NIST_P256",
        /// NIST P-384.
        EccNistP384 => "ECC_NIST_P384",
        /// NIST P-521.
        EccNistP521 => "ECC_NIST_P521",
        /// Ed25519.
        EccNistEdwards25519 => "ECC_NIST_EDWARDS25519",
        /// RSA 2048.
        Rsa2048 => "RSA_2048",
        /// RSA 3072.
        Rsa3072 => "RSA_3072",
        /// RSA 4096.
        Rsa4096 => "RSA_4096",
        /// A symmetric key.
        SymmetricDefault => "SYMMETRIC_DEFAULT",
    }
}

// The macro-made enum cannot carry `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for KeySpec {
    fn default() -> Self {
        Self::EccSecgP256k1
    }
}

kms_enum! {
    /// What a key may be used for. Signing keys are [`KeyUsage::SignVerify`].
    KeyUsage {
        /// Sign and verify.
        SignVerify => "SIGN_VERIFY",
        /// Encrypt and decrypt.
        EncryptDecrypt => "ENCRYPT_DECRYPT",
        /// HMAC.
        GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        /// Key agreement.
        KeyAgreement => "KEY_AGREEMENT",
    }
}

kms_enum! {
    /// The lifecycle state of a key.
    KeyState {
        /// Usable.
        Enabled => "Enabled",
        /// Disabled: every use fails until it is enabled again.
        Disabled => "Disabled",
        /// Scheduled for deletion: unusable; the deletion can still be cancelled.
        PendingDeletion => "PendingDeletion",
        /// Waiting for imported key material.
        PendingImport => "PendingImport",
        /// Its custom key store is disconnected.
        Unavailable => "Unavailable",
        /// Being created.
        Creating => "Creating",
        /// Being updated.
        Updating => "Updating",
    }
}

/// A tag on a key, `key=value`; deposit-address systems tag keys with the customer or purpose.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// The tag key.
    pub key: String,
    /// The tag value.
    pub value: String,
}

impl Tag {
    /// A tag.
    #[must_use]
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into() }
    }
}

impl FromStr for Tag {
    type Err = BackendError;

    /// Parses `KEY=VALUE`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Self::new(key, value)),
            _ => Err(BackendError::InvalidArgument {
                message: format!("`{text}` is not a tag: expected KEY=VALUE with a non-empty KEY"),
            }),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// What to create: a secp256k1 signing key unless another spec is asked for (other specs exist for
/// tests and tooling; they cannot sign for Ethereum).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateKeyRequest {
    /// A human-readable description stored with the key.
    pub description: Option<String>,
    /// An alias to point at the new key (`alias/…`).
    pub alias: Option<String>,
    /// Tags to attach.
    pub tags: Vec<Tag>,
    /// The key spec; [`KeySpec::EccSecgP256k1`] by default.
    pub key_spec: KeySpec,
}

impl CreateKeyRequest {
    /// A request for a secp256k1 signing key with nothing else set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the alias; `alias/` is prepended if missing.
    #[must_use]
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        let alias = alias.into();
        self.alias = Some(if alias.starts_with("alias/") { alias } else { format!("alias/{alias}") });
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// Sets the key spec.
    #[must_use]
    pub fn key_spec(mut self, key_spec: KeySpec) -> Self {
        self.key_spec = key_spec;
        self
    }

    /// Checks the alias name as KMS would: `alias/` followed by 1–250 of `a-zA-Z0-9/_-`, not `alias/aws/`.
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] naming the problem.
    pub fn validate(&self) -> Result<(), BackendError> {
        if let Some(alias) = &self.alias {
            validate_alias(alias)?;
        }
        Ok(())
    }
}

/// Checks an alias name as KMS does.
///
/// # Errors
/// [`BackendError::InvalidArgument`] naming the problem.
pub fn validate_alias(alias: &str) -> Result<(), BackendError> {
    let invalid = |why: &str| BackendError::InvalidArgument { message: format!("alias `{alias}` {why}") };
    let name = alias.strip_prefix("alias/").ok_or_else(|| invalid("must start with `alias/`"))?;
    if name.is_empty() || name.len() > 250 {
        return Err(invalid("must have 1 to 250 characters after `alias/`"));
    }
    if name.starts_with("aws/") {
        return Err(invalid("is reserved: `alias/aws/` names belong to AWS-managed keys"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-')) {
        return Err(invalid("may contain only letters, digits, `/`, `_` and `-`"));
    }
    Ok(())
}

/// A key that was just created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub arn: String,
    /// The alias pointing at it, if one was asked for.
    pub alias: Option<String>,
    /// The Ethereum address of a secp256k1 key; `None` for other key specs.
    pub address: Option<Address>,
}

/// A key's metadata, as `DescribeKey` (plus aliases and tags) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDescription {
    /// The key id.
    pub key_id: String,
    /// The key ARN.
    pub arn: String,
    /// The lifecycle state.
    pub state: KeyState,
    /// The key spec.
    pub key_spec: KeySpec,
    /// The key usage.
    pub key_usage: KeyUsage,
    /// The description.
    pub description: Option<String>,
    /// Aliases that point at the key (filled by [`list_keys`](crate::KeyBackend::list_keys); may be
    /// empty from `describe_key`).
    pub aliases: Vec<String>,
    /// Tags (filled by [`list_keys`](crate::KeyBackend::list_keys); may be empty from `describe_key`).
    pub tags: Vec<Tag>,
}

/// The public key of a key, as `GetPublicKey` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyResponse {
    /// The key id (KMS answers with the key ARN; either form identifies the key).
    pub key_id: String,
    /// The key spec.
    pub key_spec: KeySpec,
    /// The key usage.
    pub key_usage: KeyUsage,
    /// The DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

/// Which keys [`list_keys`](crate::KeyBackend::list_keys) returns: those carrying every listed tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Tags that must all be present with these values.
    pub tags: Vec<Tag>,
}

impl KeyFilter {
    /// Every key.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Keys carrying the tag `key=value` (and any added later).
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// Whether a key with `tags` passes.
    #[must_use]
    pub fn matches(&self, tags: &[Tag]) -> bool {
        self.tags.iter().all(|wanted| tags.contains(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references_in_every_form() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{id}");
        let alias_arn = "arn:aws:kms:us-east-1:111122223333:alias/hot";
        assert_eq!(KeyRef::new(id).unwrap().key_id(), Some(id));
        assert_eq!(KeyRef::new(arn.as_str()).unwrap().key_id(), Some(id));
        assert_eq!(KeyRef::new("alias/hot").unwrap().alias_name(), Some("alias/hot"));
        assert_eq!(KeyRef::new(alias_arn).unwrap().alias_name(), Some("alias/hot"));
        assert_eq!(KeyRef::new(alias_arn).unwrap().key_id(), None);
        let token_key = KeyRef::new("arn:ethkms:pkcs11::8a3f0c2b11d2e4f5:key/0a1b").unwrap();
        assert_eq!(token_key.key_id(), Some("0a1b"));
        assert_eq!(KeyRef::new("arn:ethkms:pkcs11::8a3f:alias/hot").unwrap().alias_name(), Some("alias/hot"));
        for bad in ["", "alias/", "arn:aws:s3:::bucket", "arn:aws:kms:us-east-1:1:user/x", "key id", "a/b", "arn:aws"] {
            let error = KeyRef::new(bad).unwrap_err();
            assert!(matches!(error, BackendError::InvalidKeyReference { .. }), "{bad}: {error}");
            assert!(error.to_string().contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_survive() {
        for spec in [KeySpec::EccSecgP256k1, KeySpec::EccNistP256, KeySpec::Rsa2048] {
            assert_eq!(KeySpec::from(spec.as_str()), spec);
        }
        assert_eq!(KeySpec::from("ML_DSA_65"), KeySpec::Other("ML_DSA_65".into()));
        assert_eq!(KeyState::from("PendingDeletion"), KeyState::PendingDeletion);
        assert_eq!(KeyUsage::from("SIGN_VERIFY").to_string(), "SIGN_VERIFY");
    }

    #[test]
    fn tags_and_aliases_are_checked() {
        assert_eq!("team=treasury".parse::<Tag>().unwrap(), Tag::new("team", "treasury"));
        assert_eq!("k=".parse::<Tag>().unwrap(), Tag::new("k", ""));
        assert!("=v".parse::<Tag>().is_err());
        assert!("novalue".parse::<Tag>().is_err());
        assert_eq!(CreateKeyRequest::new().alias("hot").alias.as_deref(), Some("alias/hot"));
        assert!(validate_alias("alias/hot-wallet_1/eu").is_ok());
        for bad in ["hot", "alias/", "alias/aws/x", "alias/has space", "alias/ünïcode"] {
            assert!(validate_alias(bad).is_err(), "{bad}");
        }
        let filter = KeyFilter::all().tag("env", "prod");
        assert!(filter.matches(&[Tag::new("a", "b"), Tag::new("env", "prod")]));
        assert!(!filter.matches(&[Tag::new("env", "dev")]));
    }
}
