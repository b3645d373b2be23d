//! [`Pkcs11Backend`]: the [`KeyBackend`] operations on a PKCS#11 token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use ethkms_backend::{
    BackendError, CreateKeyRequest, KeyBackend, KeyDescription, KeyFilter, KeyInfo, KeyRef, KeySpec, PublicKeyResponse,
    validate_alias,
};
use ethkms_core::{EcdsaSignature, PublicKey};

use crate::config::Pkcs11Config;
use crate::metadata::{self, Metadata, StoredState};
use crate::objects::{self, KeyObject, Lookup};
use crate::signing::{self, Handles, forget, remember};
use crate::spki;
use crate::token::{Token, patiently};

/// What the name of a key not created yet is in errors.
const NEW_KEY: &str = "(new key)";

/// Ethereum keys on a PKCS#11 token (an HSM, or SoftHSM2 for tests), behind the same [`KeyBackend`] as
/// AWS KMS.
///
/// Keys are created inside the token (`C_GenerateKeyPair`: token objects, `CKA_SENSITIVE`, not
/// `CKA_EXTRACTABLE`, sign-only) and sign with `CKM_ECDSA` over the 32-byte digest; the token's fixed-width
/// `r ‖ s` is checked by `ethkms-core` (`0 < r, s < n`) and handed on in DER, exactly like a KMS signature,
/// to the [`KeyHandle`](ethkms_backend::KeyHandle) that verifies it. Aliases are `CKA_LABEL`s, key ids
/// are `CKA_ID`s; descriptions, tags and the disabled or pending-deletion state live in a private data
/// object beside the key (see the crate documentation for what each operation does on the token).
///
/// Its `Debug` shows the token's label and serial number; the PIN is not kept after the login (it is read
/// from its source again should the token log the process out).
pub struct Pkcs11Backend {
    token: Arc<Token>,
    /// Handles of secp256k1 private keys by `CKA_ID`, kept once a reference by key id found exactly one:
    /// handles are the same in every session of the process. An entry goes when its handle fails or
    /// signs something unusable.
    handles: Handles,
}

impl fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.handles.lock().map_or(0, |handles| handles.len());
        f.debug_struct("Pkcs11Backend").field("token", &self.token).field("cached_keys", &cached).finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module, finds the token by its label, reads the PIN from its source and logs in.
    ///
    /// # Errors
    /// [`BackendError::Configuration`] when the module cannot be loaded, no token has the label or the PIN
    /// is missing; [`BackendError::PinIncorrect`] or [`BackendError::TokenLocked`] when the login fails.
    pub async fn connect(config: Pkcs11Config) -> Result<Self, BackendError> {
        let token = tokio::task::spawn_blocking(move || Token::open(&config)).await.map_err(|join| {
            BackendError::Configuration { message: format!("opening the PKCS#11 token did not finish: {join}") }
        })??;
        Ok(Self { token: Arc::new(token), handles: Arc::default() })
    }

    /// The token's label.
    #[must_use]
    pub fn token_label(&self) -> &str {
        self.token.label()
    }

    /// The token's serial number (the account part of its keys' ARNs).
    #[must_use]
    pub fn token_serial(&self) -> &str {
        self.token.serial()
    }

    /// Sets the key's state: `CKA_SIGN` on the token, then the record beside it.
    ///
    /// `CKA_SIGN` goes back on only for a key this crate switched it off on (the record says so): enabling
    /// never makes a signing key of a key made not to sign (derive-only, say).
    async fn set_state(
        &self,
        key: &KeyRef,
        operation: &'static str,
        change: impl Fn(&mut Metadata) + Send + 'static,
    ) -> Result<(), BackendError> {
        let key = key.clone();
        let name = key.to_string();
        self.token
            .run_exclusive(&name, move |token, session| {
                let object = objects::private_key(token, session, &key)?;
                let (current, records) = metadata_of(token, session, &key, &object)?;
                let current = current.unwrap_or_default();
                let mut metadata = current.next_revision();
                change(&mut metadata);
                if current.state == StoredState::PendingDeletion && metadata.state != StoredState::PendingDeletion {
                    return Err(BackendError::PendingDeletion { key: key.to_string() });
                }
                let sign = if metadata.state == StoredState::Enabled {
                    if !object.sign && !current.signing_switched_off {
                        return Err(BackendError::Unsupported {
                            key: key.to_string(),
                            backend: "pkcs11",
                            operation,
                            reason: format!(
                                "its CKA_SIGN on token `{}` is false and was not switched off by ethkms (a key made not to sign); only keys ethkms disabled are enabled",
                                token.label()
                            ),
                        });
                    }
                    metadata.signing_switched_off = false;
                    true
                } else {
                    metadata.signing_switched_off = current.signing_switched_off || object.sign;
                    false
                };
                if object.sign != sign {
                    session
                        .update_attributes(object.handle, &[Attribute::Sign(sign)])
                        .map_err(|error| unsupported_if_read_only(token, &error, &key, operation, "CKA_SIGN"))?;
                }
                objects::write_metadata(session, &object.key_id(), &records, &metadata)
                    .map_err(|error| token.error(&error, key.as_str()))?;
                tracing::info!(key = %key, token = %token.label(), state = ?metadata.state, "changed a key's state");
                Ok(())
            })
            .await
    }
}

/// The record beside `object` (`None` for a key without one) and every object holding a record of it
/// (the one read first; more when a write was cut short, see [`metadata::newest`]).
pub(crate) fn metadata_of(
    token: &Token,
    session: &Session,
    key: &KeyRef,
    object: &KeyObject,
) -> Result<(Option<Metadata>, Vec<ObjectHandle>), BackendError> {
    let found = objects::read_metadata(session, &object.key_id()).map_err(|error| token.error(&error, key.as_str()))?;
    match metadata::newest(&found) {
        Ok(Some((handle, metadata, stale))) => Ok((Some(metadata), [vec![handle], stale].concat())),
        Ok(None) => Ok((None, Vec::new())),
        Err(detail) => Err(BackendError::MalformedResponse { key: key.to_string(), detail }),
    }
}

/// [`BackendError::Unsupported`] when the token refuses to change `attribute`, else the token's error.
fn unsupported_if_read_only(
    token: &Token,
    error: &Error,
    key: &KeyRef,
    operation: &'static str,
    attribute: &str,
) -> BackendError {
    if Token::is(error, RvError::AttributeReadOnly) || Token::is(error, RvError::ActionProhibited) {
        BackendError::Unsupported {
            key: key.to_string(),
            backend: "pkcs11",
            operation,
            reason: format!("token `{}` does not let {attribute} be changed on this key", token.label()),
        }
    } else {
        token.error(error, key.as_str())
    }
}

/// What the model says of `object`, with the record beside it.
fn describe(serial: &str, object: &KeyObject, metadata: Option<&Metadata>) -> KeyDescription {
    let key_id = object.key_id();
    KeyDescription {
        arn: objects::arn(serial, &key_id),
        key_id,
        state: metadata.map_or(StoredState::Enabled, |metadata| metadata.state).key_state(),
        key_spec: object.spec.clone(),
        key_usage: object.usage(metadata),
        description: metadata.and_then(|metadata| metadata.description.clone()),
        aliases: object.alias().into_iter().collect(),
        tags: metadata.map(Metadata::tags).unwrap_or_default(),
    }
}

/// The templates and mechanism that generate a key pair of `spec` with `CKA_ID` `id`.
fn key_pair_templates(
    spec: &KeySpec,
    id: &[u8],
    label: Option<&str>,
) -> Option<(Mechanism<'static>, Vec<Attribute>, Vec<Attribute>)> {
    let (mechanism, mut public) = if let Some(params) = spki::ec_params(spec) {
        (Mechanism::EccKeyPairGen, vec![Attribute::EcParams(params.to_vec())])
    } else {
        let bits = spki::rsa_bits(spec)?;
        (
            Mechanism::RsaPkcsKeyPairGen,
            vec![Attribute::ModulusBits(bits.into()), Attribute::PublicExponent(vec![0x01, 0x00, 0x01])],
        )
    };
    public.extend([
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Id(id.to_vec()),
    ]);
    let mut private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
    ];
    if let Some(label) = label {
        public.push(Attribute::Label(label.as_bytes().to_vec()));
        private.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    Some((mechanism, public, private))
}

/// Gives the private key `object` (referred to as `name`) and its public key the label `label` (empty:
/// none).
fn relabel(
    token: &Token,
    session: &Session,
    name: &KeyRef,
    object: &KeyObject,
    label: &str,
) -> Result<(), BackendError> {
    let attribute = [Attribute::Label(label.as_bytes().to_vec())];
    let fail = |error: Error| unsupported_if_read_only(token, &error, name, "move an alias", "CKA_LABEL");
    let public = objects::public_key_object(token, session, name.as_str(), object)?;
    session.update_attributes(object.handle, &attribute).map_err(fail)?;
    if let Some(public) = public {
        session.update_attributes(public, &attribute).map_err(fail)?;
    }
    Ok(())
}

/// Creates the key pair, its record and (if free) its label; blocking, on a session.
fn create(token: &Token, session: &Session, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
    let new_key = |error: Error| token.error(&error, NEW_KEY);
    let label = request.alias.as_deref().map(|alias| alias.strip_prefix("alias/").unwrap_or(alias).to_owned());
    let taken = match &label {
        Some(label) => !objects::find_private_keys(session, &Lookup::Label(label.clone())).map_err(new_key)?.is_empty(),
        None => false,
    };
    let free_label = label.as_deref().filter(|_| !taken);
    let (id, public) = patiently(|| {
        let id = session.generate_random_vec(16)?;
        let (mechanism, public, private) =
            key_pair_templates(&request.key_spec, &id, free_label).ok_or(Error::NotSupported)?;
        let (public, _private) = session.generate_key_pair(&mechanism, &public, &private)?;
        Ok((id, public))
    })
    .map_err(new_key)?;
    let key_id = objects::key_id(&id);
    tracing::info!(key_id = %key_id, token = %token.label(), spec = %request.key_spec, "created a key on the PKCS#11 token");
    let incomplete = |step: &'static str, source: BackendError| BackendError::Incomplete {
        key_id: key_id.clone(),
        step,
        source: Box::new(source),
    };
    let metadata = Metadata::new(request.description.clone(), &request.tags);
    objects::write_metadata(session, &key_id, &[], &metadata)
        .map_err(|error| incomplete("storing its description and tags", token.error(&error, &key_id)))?;
    let address = if request.key_spec == KeySpec::EccSecgP256k1 {
        let reading = |source| incomplete("reading its public key", source);
        let spki = objects::read_spki(session, public)
            .map_err(|error| reading(token.error(&error, &key_id)))?
            .map_err(|detail| reading(BackendError::MalformedResponse { key: key_id.clone(), detail }))?;
        let key = PublicKey::from_spki_der(&spki)
            .map_err(|source| reading(BackendError::InvalidPublicKey { key: key_id.clone(), source }))?;
        Some(key.address())
    } else {
        None
    };
    if let (true, Some(alias)) = (taken, &request.alias) {
        return Err(incomplete("creating the alias", BackendError::AliasExists { alias: alias.clone() }));
    }
    Ok(KeyInfo { arn: objects::arn(token.serial(), &key_id), key_id, alias: request.alias.clone(), address })
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    /// SoftHSMv2 was reported to return an occasional invalid secp256k1 signature (issue #901): a bad
    /// signature is asked for again, never returned.
    fn invalid_signatures_are_transient(&self) -> bool {
        true
    }

    async fn create_key(&self, request: &CreateKeyRequest) -> Result<KeyInfo, BackendError> {
        request.validate()?;
        if key_pair_templates(&request.key_spec, &[], None).is_none() {
            return Err(BackendError::Unsupported {
                key: NEW_KEY.into(),
                backend: self.name(),
                operation: "create a key of this spec",
                reason: format!(
                    "{} keys are not created on tokens here; ECC_SECG_P256K1 (Ethereum), ECC_NIST_P256/P384/P521 and RSA_2048/3072/4096 are",
                    request.key_spec
                ),
            });
        }
        let request = request.clone();
        self.token.run_exclusive(NEW_KEY, move |token, session| create(token, session, &request)).await
    }

    async fn public_key(&self, key: &KeyRef) -> Result<PublicKeyResponse, BackendError> {
        let key = key.clone();
        let name = key.to_string();
        let handles = Arc::clone(&self.handles);
        self.token
            .run(&name, move |token, session| {
                let object = objects::private_key(token, session, &key)?;
                let (metadata, _) = metadata_of(token, session, &key, &object)?;
                match metadata.as_ref().map_or(StoredState::Enabled, |metadata| metadata.state) {
                    StoredState::Disabled => return Err(BackendError::Disabled { key: key.to_string() }),
                    StoredState::PendingDeletion => return Err(BackendError::PendingDeletion { key: key.to_string() }),
                    StoredState::Enabled => {}
                }
                let malformed = |detail: String| BackendError::MalformedResponse { key: key.to_string(), detail };
                let public = objects::public_key_object(token, session, key.as_str(), &object)?
                    .ok_or_else(|| malformed("the token holds no public-key object with its CKA_ID".into()))?;
                let spki_der = objects::read_spki(session, public)
                    .map_err(|error| token.error(&error, key.as_str()))?
                    .map_err(malformed)?;
                remember(&handles, &objects::lookup(&key, token.serial()), &object);
                Ok(PublicKeyResponse {
                    key_id: objects::arn(token.serial(), &object.key_id()),
                    key_spec: object.spec.clone(),
                    key_usage: object.usage(metadata.as_ref()),
                    spki_der,
                })
            })
            .await
    }

    async fn sign_digest(&self, key: &KeyRef, digest: &[u8; 32]) -> Result<Vec<u8>, BackendError> {
        let lookup = objects::lookup(key, self.token.serial());
        if lookup == Lookup::Nowhere {
            return Err(BackendError::NotFound { key: key.to_string() });
        }
        let by_id = match &lookup {
            Lookup::Id(id) => Some(id.clone()),
            _ => None,
        };
        let (reference, digest) = (key.clone(), *digest);
        let handles = Arc::clone(&self.handles);
        let fixed = self
            .token
            .run(key.as_str(), move |token, session| {
                signing::sign(token, session, &reference, &lookup, &handles, &digest)
            })
            .await?;
        match EcdsaSignature::from_fixed_bytes(&fixed) {
            Ok(signature) => Ok(signature.to_der().as_bytes().to_vec()),
            Err(source) => {
                // Not the cached handle's fault, most likely; but a handle that now names another object
                // would sign like this every time: the next signature looks the key up afresh.
                forget(&self.handles, by_id.as_ref());
                tracing::warn!(key = %key, token = %self.token.label(), error = %source, "the token returned an unusable signature; discarded");
                Err(BackendError::InvalidSignature { key: key.to_string(), source })
            }
        }
    }

    async fn describe_key(&self, key: &KeyRef) -> Result<KeyDescription, BackendError> {
        let key = key.clone();
        let name = key.to_string();
        self.token
            .run(&name, move |token, session| {
                let object = objects::private_key(token, session, &key)?;
                let (metadata, _) = metadata_of(token, session, &key, &object)?;
                Ok(describe(token.serial(), &object, metadata.as_ref()))
            })
            .await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyDescription>, BackendError> {
        let filter = filter.clone();
        let handles = Arc::clone(&self.handles);
        self.token
            .run_exclusive("(every key)", move |token, session| {
                let fail = |error: Error| token.error(&error, "(every key)");
                let mut found: HashMap<String, Vec<(ObjectHandle, Vec<u8>)>> = HashMap::new();
                for (handle, key_id, value) in objects::all_metadata(session).map_err(fail)? {
                    found.entry(key_id).or_default().push((handle, value));
                }
                let mut records: HashMap<String, (Vec<ObjectHandle>, Metadata)> = HashMap::new();
                for (key_id, found) in found {
                    match metadata::newest(&found) {
                        Ok(Some((handle, metadata, stale))) => {
                            // What a write cut short left: this request may write, so it cleans up.
                            for object in stale {
                                match session.destroy_object(object) {
                                    Ok(()) => tracing::info!(key_id = %key_id, "destroyed a superseded metadata object"),
                                    Err(error) => tracing::warn!(key_id = %key_id, error = %error, "could not destroy a superseded metadata object"),
                                }
                            }
                            records.insert(key_id, (vec![handle], metadata));
                        }
                        Ok(None) => {}
                        Err(detail) => tracing::warn!(key_id = %key_id, detail = %detail, "ignoring the metadata objects of a key"),
                    }
                }
                let now = SystemTime::now();
                let mut keys = Vec::new();
                for handle in objects::find_private_keys_all(session).map_err(fail)? {
                    let object = objects::read_key(session, handle).map_err(fail)?;
                    if object.id.is_empty() {
                        tracing::debug!(token = %token.label(), "skipping a private key without CKA_ID");
                        continue;
                    }
                    let record = records.get(&object.key_id());
                    if let Some((record_objects, metadata)) = record
                        && metadata.deletion_due(now)
                    {
                        destroy(token, session, &object, record_objects)?;
                        forget(&handles, Some(&object.id));
                        tracing::info!(key_id = %object.key_id(), token = %token.label(), "destroyed a key whose deletion was due");
                        continue;
                    }
                    let metadata = record.map(|(_, metadata)| metadata);
                    if filter.matches(&metadata.map(Metadata::tags).unwrap_or_default()) {
                        keys.push(describe(token.serial(), &object, metadata));
                    }
                }
                keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
                Ok(keys)
            })
            .await
    }

    async fn set_alias(&self, alias: &str, key: &KeyRef) -> Result<(), BackendError> {
        validate_alias(alias)?;
        let label = alias.strip_prefix("alias/").unwrap_or(alias).to_owned();
        let key = key.clone();
        let name = key.to_string();
        self.token
            .run_exclusive(&name, move |token, session| {
                let target = objects::private_key(token, session, &key)?;
                let holders = objects::find_private_keys(session, &Lookup::Label(label.clone()))
                    .map_err(|error| token.error(&error, key.as_str()))?;
                let alias = KeyRef::new(format!("alias/{label}"))?;
                for holder in holders.into_iter().filter(|holder| *holder != target.handle) {
                    let object = objects::read_key(session, holder).map_err(|error| token.error(&error, key.as_str()))?;
                    relabel(token, session, &alias, &object, "")?;
                }
                relabel(token, session, &key, &target, &label)?;
                tracing::info!(alias = %label, key_id = %target.key_id(), token = %token.label(), "pointed an alias at a key");
                Ok(())
            })
            .await
    }

    async fn disable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.set_state(key, "disable a key", |metadata| metadata.state = StoredState::Disabled).await
    }

    async fn enable_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.set_state(key, "enable a key", |metadata| metadata.state = StoredState::Enabled).await
    }

    /// Marks the key pending deletion (it can no longer sign: `CKA_SIGN` false). PKCS#11 can only destroy
    /// at once, so the key's objects are destroyed by the first [`list_keys`](KeyBackend::list_keys)
    /// after the waiting period.
    async fn schedule_key_deletion(&self, key: &KeyRef, pending_days: u32) -> Result<(), BackendError> {
        if !(7..=30).contains(&pending_days) {
            return Err(BackendError::InvalidArgument {
                message: format!("the deletion waiting period must be 7 to 30 days, not {pending_days}"),
            });
        }
        let now = SystemTime::now();
        self.set_state(key, "schedule a key's deletion", move |metadata| metadata.schedule_deletion(now, pending_days))
            .await
    }
}

/// Destroys a key's private and public objects and the objects holding its record.
fn destroy(token: &Token, session: &Session, object: &KeyObject, records: &[ObjectHandle]) -> Result<(), BackendError> {
    let name = object.key_id();
    let fail = |error: Error| token.error(&error, &name);
    if let Some(public) = objects::public_key_object(token, session, &name, object)? {
        session.destroy_object(public).map_err(fail)?;
    }
    session.destroy_object(object.handle).map_err(fail)?;
    for record in records {
        session.destroy_object(*record).map_err(fail)?;
    }
    Ok(())
}
