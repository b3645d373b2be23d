//! `MemoryBackend`: keys in process memory that behave like KMS keys, for unit tests, fault injection
//! and local development. Never for real funds: the keys live in the application's memory.
//!
//! What it copies from KMS: key ids are UUIDs and ARNs `arn:aws:kms:REGION:ACCOUNT:key/ID`; every key
//! reference form resolves (id, ARN, alias, alias ARN); signatures are DER and about half of them have a
//! high `s`; errors are KMS's (unknown key, disabled, pending deletion, alias exists); a failure after a
//! key's creation names the key. What it adds for tests: a seed for reproducible keys, request counts,
//! and [`Faults`]: latency, throttling, corrupted signatures, signatures by another key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ethkms_core::PublicKey;
use k256::ecdsa::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};

use crate::backend::KeyBackend;
use crate::error::BackendError;
use crate::types::{
    CreateKeyRequest, KeyDescription, KeyFilter, KeyInfo, KeyRef, KeySpec, KeyState, KeyUsage, PublicKeyResponse, Tag,
    validate_alias,
};

/// Faults the [`MemoryBackend`] injects into `sign_digest` (and, for latency and throttling,
/// `public_key`), for testing what sits above a backend. Rates are probabilities from 0 to 1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Added to every `sign_digest` and `public_key` request.
    pub latency: Duration,
    /// Probability that a request fails with [`BackendError::Throttled`].
    pub throttle_rate: f64,
    /// Probability that a signature comes back with one bit flipped.
    pub corrupt_signature_rate: f64,
    /// Probability that a signature comes back made by another key.
    pub foreign_signature_rate: f64,
    /// How many of the next `sign_digest` requests fail (after their latency) with a non-retryable
    /// [`BackendError::Service`] error: a deterministic failure at a chosen moment.
    pub failing_signatures: u32,
}

/// How many requests of each kind a [`MemoryBackend`] has answered (failed ones included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `create_key`.
    pub create_key: u64,
    /// `public_key` (`GetPublicKey`).
    pub public_key: u64,
    /// `sign_digest` (`Sign`).
    pub sign: u64,
    /// `describe_key`.
    pub describe_key: u64,
    /// `list_keys`.
    pub list_keys: u64,
}

#[derive(Default)]
struct Counters {
    create_key: AtomicU64,
    public_key: AtomicU64,
    sign: AtomicU64,
    describe_key: AtomicU64,
    list_keys: AtomicU64,
}

enum Material {
    /// A secp256k1 signing key; `SigningKey` zeroizes itself on drop.
    Secp256k1(SigningKey),
    /// Another key type: only its SubjectPublicKeyInfo, so that callers can be tested against it.
    Other { spki_der: Vec<u8> },
}

struct MemoryKey {
    id: String,
    arn: String,
    spec: KeySpec,
    usage: KeyUsage,
    state: KeyState,
    description: Option<String>,
    tags: Vec<Tag>,
    material: Material,
}

struct State {
    rng: ChaCha20Rng,
    /// In creation order.
    keys: Vec<MemoryKey>,
    /// Alias name → key id.
    aliases: BTreeMap<String, String>,
    faults: Faults,
    /// Signs the foreign signatures of [`Faults::foreign_signature_rate`].
    stranger: SigningKey,
}

/// An in-memory [`KeyBackend`] that behaves like KMS, for tests and local development; never for
/// real funds, since the keys live in the application's memory (zeroized when dropped).
///
/// Like KMS: key ids are UUIDs and ARNs `arn:aws:kms:REGION:ACCOUNT:key/ID`; every key reference form
/// resolves (id, ARN, alias, alias ARN); signatures are DER and about half of them have a high `s`;
/// errors are KMS's (unknown key, disabled, pending deletion, alias exists); a failure after a key's
/// creation names the key. For tests: [`with_seed`](Self::with_seed) for reproducible keys,
/// [`request_counts`](Self::request_counts), and [`set_faults`](Self::set_faults) ([`Faults`]).
pub struct MemoryBackend {
    region: String,
    account: String,
    state: Mutex<State>,
    counters: Counters,
}

impl MemoryBackend {
    /// A backend seeded from the operating system's random source.
    #[must_use]
    pub fn new() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        Self::from_rng(ChaCha20Rng::from_seed(seed))
    }

    /// A backend whose keys, key ids and signature choices follow from `seed`: the same seed and the
    /// same calls give the same keys and addresses.
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(ChaCha20Rng::seed_from_u64(seed))
    }

    fn from_rng(mut rng: ChaCha20Rng) -> Self {
        let stranger = random_signing_key(&mut rng);
        Self {
            region: "us-east-1".into(),
            account: "000000000000".into(),
            state: Mutex::new(State {
                rng,
                keys: Vec::new(),
                aliases: BTreeMap::new(),
                faults: Faults::default(),
                stranger,
            }),
            counters: Counters::default(),
        }
    }

    /// Adds a secp256k1 key with known private key `secret`, for published test vectors (the EIP-155
    /// and EIP-712 examples); `request.key_spec` is ignored. Never use it for funds.
    ///
    /// # Errors
    /// [`BackendError::InvalidArgument`] if `secret` is not a valid private key, and the errors of
    /// [`KeyBackend::create_key`] for the request's alias.
    pub fn import_secp256k1_key(&self, secret: &[u8; 32], request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
        request.validate()?;
        let signing_key = SigningKey::from_slice(secret)
            .map_err(|_| BackendError::InvalidArgument { message: "not a secp256k1 private key".into() })?;
        let mut state = self.lock();
        self.insert_key(&mut state, request, Material::Secp256k1(signing_key))
    }

    /// Stores a new key as `request` describes, with its alias. As in KMS, the key exists even if the
    /// alias is taken: the error then names it.
    fn insert_key(
        &self,
        state: &mut State,
        request: &CreateKeyRequest,
        material: Material,
    ) -> Result<KeyInfo, BackendError> {
        let id = uuid(&mut state.rng);
        let arn = format!("{}key/{id}", self.arn_prefix());
        let address = match &material {
            Material::Secp256k1(signing_key) => {
                Some(PublicKey::from_affine(*signing_key.verifying_key().as_affine()).address())
            }
            Material::Other { .. } => None,
        };
        let usage = match request.key_spec {
            KeySpec::SymmetricDefault => KeyUsage::EncryptDecrypt,
            _ => KeyUsage::SignVerify,
        };
        state.keys.push(MemoryKey {
            id: id.clone(),
            arn: arn.clone(),
            spec: request.key_spec.clone(),
            usage,
            state: KeyState::Enabled,
            description: request.description.clone(),
            tags: request.tags.clone(),
            material,
        });
        if let Some(alias) = &request.alias {
            if state.aliases.contains_key(alias) {
                let source = Box::new(BackendError::AliasExists { alias: alias.clone() });
                return Err(BackendError::Incomplete { key_id: id, step: "creating the alias", source });
            }
            state.aliases.insert(alias.clone(), id.clone());
        }
        Ok(KeyInfo { key_id: id, arn, alias: request.alias.clone(), address })
    }

    /// Sets the faults to inject from now on.
    ///
    /// # Panics
    /// If a rate is not between 0 and 1: that is a bug in the test that sets it.
    pub fn set_faults(&self, faults: Faults) {
        for rate in [faults.throttle_rate, faults.corrupt_signature_rate, faults.foreign_signature_rate] {
            assert!((0.0..=1.0).contains(&rate), "fault rates are probabilities from 0 to 1, got {rate}");
        }
        self.lock().faults = faults;
    }

    /// The requests answered so far.
    #[must_use]
    pub fn request_counts(&self) -> RequestCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RequestCounts {
            create_key: load(&self.counters.create_key),
            public_key: load(&self.counters.public_key),
            sign: load(&self.counters.sign),
            describe_key: load(&self.counters.describe_key),
            list_keys: load(&self.counters.list_keys),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arn_prefix(&self) -> String {
        format!("arn:aws:kms:{}:{}:", self.region, self.account)
    }

    /// The index of the key `reference` names, as KMS resolves it.
    fn resolve(&self, state: &State, reference: &KeyRef) -> Result<usize, BackendError> {
        let not_found = || BackendError::NotFound { key: reference.to_string() };
        let text = reference.as_str();
        let key_id = if let Some(alias) = reference.alias_name() {
            if text.starts_with("arn:") && !text.starts_with(&self.arn_prefix()) {
                return Err(not_found());
            }
            state.aliases.get(alias).ok_or_else(not_found)?.as_str()
        } else if text.starts_with("arn:") {
            return state.keys.iter().position(|key| key.arn == text).ok_or_else(not_found);
        } else {
            text
        };
        state.keys.iter().position(|key| key.id == key_id).ok_or_else(not_found)
    }

    /// Like `resolve`, and the key must be usable (enabled).
    fn resolve_usable(&self, state: &State, reference: &KeyRef) -> Result<usize, BackendError> {
        let index = self.resolve(state, reference)?;
        let key = reference.to_string();
        match &state.keys[index].state {
            KeyState::Enabled => Ok(index),
            KeyState::Disabled => Err(BackendError::Disabled { key }),
            KeyState::PendingDeletion => Err(BackendError::PendingDeletion { key }),
            other => Err(BackendError::InvalidState { key, state: other.to_string() }),
        }
    }

    fn describe(state: &State, index: usize) -> KeyDescription {
        let key = &state.keys[index];
        KeyDescription {
            key_id: key.id.clone(),
            arn: key.arn.clone(),
            state: key.state.clone(),
            key_spec: key.spec.clone(),
            key_usage: key.usage.clone(),
            description: key.description.clone(),
            aliases: state.aliases.iter().filter(|(_, id)| **id == key.id).map(|(alias, _)| alias.clone()).collect(),
            tags: key.tags.clone(),
        }
    }

    async fn apply_latency_and_throttling(&self, key: &KeyRef) -> Result<(), BackendError> {
        let (latency, throttled) = {
            let mut state = self.lock();
            let faults = state.faults;
            (faults.latency, chance(&mut state.rng, faults.throttle_rate))
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if throttled {
            return Err(BackendError::Throttled { key: key.to_string(), message: "Rate exceeded (injected)".into() });
        }
        Ok(())
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryBackend")
            .field("region", &self.region)
            .field("keys", &state.keys.len())
            .field("aliases", &state.aliases.len())
            .field("faults", &state.faults)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KeyBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create_key(&self, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
        self.counters.create_key.fetch_add(1, Ordering::Relaxed);
        request.validate()?;
        let mut state = self.lock();
        let material = match &request.key_spec {
            KeySpec::EccSecgP256k1 => Material::Secp256k1(random_signing_key(&mut state.rng)),
            other => Material::Other { spki_der: foreign_spki(other) },
        };
        self.insert_key(&mut state, request, material)
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKeyResponse, BackendError> {
        self.counters.public_key.fetch_add(1, Ordering::Relaxed);
        self.apply_latency_and_throttling(key).await?;
        let state = self.lock();
        let index = self.resolve_usable(&state, key)?;
        let entry = &state.keys[index];
        let spki_der = match &entry.material {
            Material::Secp256k1(signing_key) => {
                PublicKey::from_affine(*signing_key.verifying_key().as_affine()).to_spki_der().to_vec()
            }
            Material::Other { spki_der } => spki_der.clone(),
        };
        Ok(PublicKeyResponse {
            key_id: entry.arn.clone(),
            key_spec: entry.spec.clone(),
            key_usage: entry.usage.clone(),
            spki_der,
        })
    }

    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError> {
        self.counters.sign.fetch_add(1, Ordering::Relaxed);
        self.apply_latency_and_throttling(key).await?;
        let mut state = self.lock();
        let index = self.resolve_usable(&state, key)?;
        if state.faults.failing_signatures > 0 {
            state.faults.failing_signatures -= 1;
            return Err(BackendError::Service {
                key: key.to_string(),
                code: "InjectedFault".into(),
                message: "a failure injected by Faults::failing_signatures".into(),
                retryable: false,
            });
        }
        let faults = state.faults;
        let foreign = chance(&mut state.rng, faults.foreign_signature_rate);
        let corrupt = chance(&mut state.rng, faults.corrupt_signature_rate);
        let high_s = chance(&mut state.rng, 0.5);
        let flip = state.rng.next_u32();
        let signing_key = match (&state.keys[index].material, foreign) {
            (_, true) => &state.stranger,
            (Material::Secp256k1(signing_key), false) => signing_key,
            (Material::Other { .. }, false) => {
                return Err(BackendError::WrongKeySpec { key: key.to_string(), spec: state.keys[index].spec.clone() });
            }
        };
        let (signature, _) = signing_key.sign_prehash_recoverable(digest).map_err(|error| BackendError::Service {
            key: key.to_string(),
            code: "KMSInternalException".into(),
            message: error.to_string(),
            retryable: true,
        })?;
        // k256 always returns low s; KMS returns either, about half the time high.
        let signature = if high_s {
            let (r, s) = signature.split_scalars();
            k256::ecdsa::Signature::from_scalars(r, -*s).unwrap_or(signature)
        } else {
            signature
        };
        let mut der = signature.to_der().as_bytes().to_vec();
        if corrupt {
            // Any bit after the SEQUENCE header: breaks either the encoding or the signature.
            let index = 2 + (flip as usize >> 3) % (der.len() - 2);
            der[index] ^= 1 << (flip & 7);
        }
        Ok(der)
    }

    async fn describe_key(&self, key: &KeyRef) -> Result<KeyDescription, BackendError> {
        self.counters.describe_key.fetch_add(1, Ordering::Relaxed);
        let state = self.lock();
        let index = self.resolve(&state, key)?;
        Ok(Self::describe(&state, index))
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyDescription>, BackendError> {
        self.counters.list_keys.fetch_add(1, Ordering::Relaxed);
        let state = self.lock();
        Ok((0..state.keys.len())
            .filter(|&index| filter.matches(&state.keys[index].tags))
            .map(|index| Self::describe(&state, index))
            .collect())
    }

    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError> {
        validate_alias(alias)?;
        let mut state = self.lock();
        let index = self.resolve(&state, key)?;
        let id = state.keys[index].id.clone();
        state.aliases.insert(alias.to_owned(), id);
        Ok(())
    }

    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.set_state(key, KeyState::Disabled)
    }

    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.set_state(key, KeyState::Enabled)
    }

    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError> {
        if !(7..=30).contains(&pending_days) {
            return Err(BackendError::InvalidArgument {
                message: format!("the deletion waiting period must be 7 to 30 days, not {pending_days}"),
            });
        }
        self.set_state(key, KeyState::PendingDeletion)
    }
}

impl MemoryBackend {
    fn set_state(&self, key: &KeyRef, new_state: KeyState) -> Result<(), BackendError> {
        let mut state = self.lock();
        let index = self.resolve(&state, key)?;
        let entry = &mut state.keys[index];
        if entry.state == KeyState::PendingDeletion && new_state != KeyState::PendingDeletion {
            return Err(BackendError::PendingDeletion { key: key.to_string() });
        }
        entry.state = new_state;
        Ok(())
    }
}

fn chance(rng: &mut ChaCha20Rng, probability: f64) -> bool {
    probability > 0.0 && (f64::from(rng.next_u32()) / f64::from(u32::MAX)) < probability
}

fn random_signing_key(rng: &mut ChaCha20Rng) -> SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// A random (version 4) UUID, the shape of KMS key ids.
fn uuid(rng: &mut ChaCha20Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// A SubjectPublicKeyInfo of the right algorithm and curve for a key spec that cannot sign for
/// Ethereum: the generator point for P-256, a small well-formed RSA key for RSA specs.
fn foreign_spki(spec: &KeySpec) -> Vec<u8> {
    const P256_GENERATOR_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    const SMALL_RSA_SPKI: &str = "301c300d06092a864886f70d0101010500030b003008020300c35f020103";
    let hex = match spec {
        KeySpec::EccNistP256 => P256_GENERATOR_SPKI,
        _ => SMALL_RSA_SPKI,
    };
    (0..hex.len()).step_by(2).filter_map(|index| u8::from_str_radix(&hex[index..index + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_kms_shape() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let id = uuid(&mut rng);
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn foreign_keys_name_their_type() {
        use ethkms_core::{Curve, ErrorKind, KeyAlgorithm};
        let p256 = PublicKey::from_spki_der(&foreign_spki(&KeySpec::EccNistP256)).unwrap_err();
        assert_eq!(p256.kind(), ErrorKind::UnsupportedCurve(Curve::P256));
        let rsa = PublicKey::from_spki_der(&foreign_spki(&KeySpec::Rsa2048)).unwrap_err();
        assert_eq!(rsa.kind(), ErrorKind::UnsupportedAlgorithm(KeyAlgorithm::Rsa));
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_keys() {
        let first = MemoryBackend::with_seed(42).create_key(&CreateKeyRequest::new()).await.unwrap();
        let second = MemoryBackend::with_seed(42).create_key(&CreateKeyRequest::new()).await.unwrap();
        let other = MemoryBackend::with_seed(43).create_key(&CreateKeyRequest::new()).await.unwrap();
        assert_eq!(first, second);
        assert_ne!(first.address, other.address);
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let backend = MemoryBackend::with_seed(5);
        let text = format!("{backend:?}");
        assert!(text.contains("keys: 0"), "{text}");
        assert!(!text.to_lowercase().contains("secret"), "{text}");
    }
}
