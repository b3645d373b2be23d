//! The token's objects as the key model sees them: a key is a private-key object named by `CKA_ID`
//! (its key id) and `CKA_LABEL` (its alias, without `alias/`), with a public-key object of the same
//! `CKA_ID` and, for keys this crate created, a [metadata](crate::metadata) data object.
//!
//! Key ids are `CKA_ID` in hexadecimal — as a UUID (`8-4-4-4-12`) when it is 16 bytes, which is what this
//! crate creates — and key ARNs are `arn:ethkms:pkcs11::TOKEN-SERIAL:key/ID`.

use std::fmt::Write as _;

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ethkms_backend::{BackendError, KeyRef, KeySpec, KeyUsage};

use crate::metadata::{APPLICATION, Metadata};
use crate::spki;
use crate::token::Token;

/// How a reference names a key on this token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// By `CKA_ID`.
    Id(Vec<u8>),
    /// By `CKA_LABEL`.
    Label(String),
    /// It names no key here (another token's ARN, a key id that is not hexadecimal).
    Nowhere,
}

/// How `key` names a key on the token whose serial is `serial`.
pub(crate) fn lookup(key: &KeyRef, serial: &str) -> Lookup {
    if key.as_str().starts_with("arn:") {
        let parts: Vec<&str> = key.as_str().splitn(6, ':').collect();
        if !matches!(parts.as_slice(), [_, "ethkms", "pkcs11", "", account, _] if *account == arn_account(serial)) {
            return Lookup::Nowhere;
        }
    }
    if let Some(alias) = key.alias_name() {
        return Lookup::Label(alias.strip_prefix("alias/").unwrap_or(alias).to_owned());
    }
    key.key_id().and_then(parse_key_id).map_or(Lookup::Nowhere, Lookup::Id)
}

/// The key id of a `CKA_ID`: a UUID for 16 bytes, else plain lowercase hexadecimal.
pub(crate) fn key_id(id: &[u8]) -> String {
    let mut text = String::with_capacity(id.len() * 2 + 4);
    for (index, byte) in id.iter().enumerate() {
        if id.len() == 16 && matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The `CKA_ID` a key id names, if it is hexadecimal (dashes ignored).
pub(crate) fn parse_key_id(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|&byte| byte != b'-').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// The account part of this token's ARNs: its serial number, with anything but letters, digits, `-` and
/// `_` replaced by `_`.
pub(crate) fn arn_account(serial: &str) -> String {
    let account: String =
        serial.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if account.is_empty() { "token".to_owned() } else { account }
}

/// The ARN of key `key_id` on the token whose serial is `serial`.
pub(crate) fn arn(serial: &str, key_id: &str) -> String {
    format!("arn:ethkms:pkcs11::{}:key/{key_id}", arn_account(serial))
}

/// A private key and what the model needs to know of it.
#[derive(Clone, Debug)]
pub(crate) struct KeyObject {
    /// Its handle.
    pub(crate) handle: ObjectHandle,
    /// `CKA_ID`.
    pub(crate) id: Vec<u8>,
    /// `CKA_LABEL`, empty when it has none.
    pub(crate) label: String,
    /// Its type and curve or size.
    pub(crate) spec: KeySpec,
    /// `CKA_SIGN`.
    pub(crate) sign: bool,
    /// `CKA_DECRYPT`.
    decrypt: bool,
    /// `CKA_DERIVE`.
    derive: bool,
    /// `CKA_KEY_TYPE`.
    key_type: Option<KeyType>,
    /// `CKA_EC_PARAMS` (EC keys).
    params: Option<Vec<u8>>,
    /// `CKA_MODULUS` (RSA keys).
    modulus: Option<Vec<u8>>,
}

impl KeyObject {
    /// What the key may be used for, as far as its attributes say; a key whose signing this crate switched
    /// off (disabled, pending deletion) is still a signing key.
    pub(crate) fn usage(&self, metadata: Option<&Metadata>) -> KeyUsage {
        let switched_off = metadata.is_some_and(|metadata| metadata.signing_switched_off);
        if self.sign || switched_off {
            KeyUsage::SignVerify
        } else if self.decrypt {
            KeyUsage::EncryptDecrypt
        } else if self.derive {
            KeyUsage::KeyAgreement
        } else {
            KeyUsage::Other("NONE".into())
        }
    }

    /// Its key id.
    pub(crate) fn key_id(&self) -> String {
        key_id(&self.id)
    }

    /// Its alias (`alias/LABEL`), if it has a label.
    pub(crate) fn alias(&self) -> Option<String> {
        (!self.label.is_empty()).then(|| format!("alias/{}", self.label))
    }
}

/// The private keys `lookup` finds.
///
/// # Errors
/// The token's; `CKR_USER_NOT_LOGGED_IN` when none is found because the session is not logged in.
pub(crate) fn find_private_keys(session: &Session, lookup: &Lookup) -> Result<Vec<ObjectHandle>, Error> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    match lookup {
        Lookup::Id(id) => template.push(Attribute::Id(id.clone())),
        Lookup::Label(label) => template.push(Attribute::Label(label.as_bytes().to_vec())),
        Lookup::Nowhere => return Ok(Vec::new()),
    }
    unless_logged_out(session, session.find_objects(&template)?)
}

/// Every private key on the token.
///
/// # Errors
/// As [`find_private_keys`].
pub(crate) fn find_private_keys_all(session: &Session) -> Result<Vec<ObjectHandle>, Error> {
    unless_logged_out(session, session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?)
}

/// `found`, unless it is empty because the session is not logged in: a token hides private objects from
/// a session that is not, so that empty answer is `CKR_USER_NOT_LOGGED_IN` in disguise.
fn unless_logged_out(session: &Session, found: Vec<ObjectHandle>) -> Result<Vec<ObjectHandle>, Error> {
    if found.is_empty() && !crate::token::logged_in(session)? {
        return Err(Error::Pkcs11(RvError::UserNotLoggedIn, Function::FindObjects));
    }
    Ok(found)
}

/// The one private key `key` names.
///
/// # Errors
/// [`BackendError::NotFound`] when there is none; [`BackendError::AmbiguousKey`] when the reference
/// answers to several (two keys with one label or id); [`BackendError::Unsupported`] for a key found by
/// its label that has no `CKA_ID`.
pub(crate) fn private_key(token: &Token, session: &Session, key: &KeyRef) -> Result<KeyObject, BackendError> {
    let lookup = lookup(key, token.serial());
    let handles = find_private_keys(session, &lookup).map_err(|error| token.error(&error, key.as_str()))?;
    match (handles.as_slice(), &lookup) {
        ([], _) => Err(BackendError::NotFound { key: key.to_string() }),
        ([handle], _) => {
            let object = read_key(session, *handle).map_err(|error| token.error(&error, key.as_str()))?;
            if object.id.is_empty() {
                return Err(without_id(token, key.as_str()));
            }
            Ok(object)
        }
        (more, Lookup::Label(label)) => Err(BackendError::AmbiguousKey {
            key: key.to_string(),
            detail: format!(
                "{} private keys on token `{}` have the label `{label}`; name one by its key id (`ethkms wallet list`), or give each its own label",
                more.len(),
                token.label()
            ),
        }),
        (more, _) => Err(BackendError::AmbiguousKey {
            key: key.to_string(),
            detail: format!(
                "{} private keys on token `{}` have this CKA_ID; give each key pair a CKA_ID of its own",
                more.len(),
                token.label()
            ),
        }),
    }
}

/// Why a key without `CKA_ID` is not used: its public-key object cannot be told from others'.
fn without_id(token: &Token, key: &str) -> BackendError {
    BackendError::Unsupported {
        key: key.to_owned(),
        backend: "pkcs11",
        operation: "use a key without a CKA_ID",
        reason: format!(
            "on token `{}` its public-key object is found by CKA_ID; give the key pair one (pkcs11-tool --id)",
            token.label()
        ),
    }
}

/// The attributes of the private key `handle`.
pub(crate) fn read_key(session: &Session, handle: ObjectHandle) -> Result<KeyObject, Error> {
    let wanted = [
        AttributeType::Id,
        AttributeType::Label,
        AttributeType::KeyType,
        AttributeType::Sign,
        AttributeType::Decrypt,
        AttributeType::Derive,
        AttributeType::EcParams,
        AttributeType::Modulus,
    ];
    let mut key = KeyObject {
        handle,
        id: Vec::new(),
        label: String::new(),
        spec: KeySpec::Other("UNKNOWN".into()),
        sign: false,
        decrypt: false,
        derive: false,
        key_type: None,
        params: None,
        modulus: None,
    };
    for attribute in session.get_attributes(handle, &wanted)? {
        match attribute {
            Attribute::Id(id) => key.id = id,
            Attribute::Label(label) => key.label = String::from_utf8_lossy(&label).into_owned(),
            Attribute::KeyType(found) => key.key_type = Some(found),
            Attribute::Sign(sign) => key.sign = sign,
            Attribute::Decrypt(decrypt) => key.decrypt = decrypt,
            Attribute::Derive(derive) => key.derive = derive,
            Attribute::EcParams(found) => key.params = Some(found),
            Attribute::Modulus(modulus) => key.modulus = Some(modulus),
            _ => {}
        }
    }
    let modulus_bits = key.modulus.as_deref().map_or(0, significant_bits);
    key.spec = match (key.key_type, &key.params) {
        (Some(found), Some(params)) if found == KeyType::EC => spki::ec_key_spec(params),
        (Some(found), _) if found == KeyType::RSA => spki::rsa_key_spec(modulus_bits),
        (Some(found), _) => KeySpec::Other(format!("{found}").to_uppercase().replace(' ', "_")),
        (None, _) => KeySpec::Other("UNKNOWN".into()),
    };
    Ok(key)
}

/// The size in bits of a big-endian unsigned integer.
fn significant_bits(magnitude: &[u8]) -> usize {
    let first = magnitude.iter().position(|&byte| byte != 0).unwrap_or(magnitude.len());
    magnitude[first..].first().map_or(0, |&top| (magnitude.len() - first - 1) * 8 + (8 - top.leading_zeros() as usize))
}

/// The public-key object of the private key `object` (referred to as `key`), if the token holds one: the
/// one public key with its `CKA_ID`, of its type and curve (or modulus).
///
/// # Errors
/// [`BackendError::AmbiguousKey`] when several public keys have its `CKA_ID`;
/// [`BackendError::MalformedResponse`] when the one that has it is of another type or curve;
/// [`BackendError::Unsupported`] when the key has no `CKA_ID`; the token's errors.
pub(crate) fn public_key_object(
    token: &Token,
    session: &Session,
    key: &str,
    object: &KeyObject,
) -> Result<Option<ObjectHandle>, BackendError> {
    if object.id.is_empty() {
        return Err(without_id(token, key));
    }
    let fail = |error: Error| token.error(&error, key);
    let template = [Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(object.id.clone())];
    let handle = match session.find_objects(&template).map_err(fail)?.as_slice() {
        [] => return Ok(None),
        [handle] => *handle,
        more => {
            return Err(BackendError::AmbiguousKey {
                key: key.to_owned(),
                detail: format!(
                    "{} public-key objects on token `{}` have its CKA_ID ({}); remove those that are not its own",
                    more.len(),
                    token.label(),
                    object.key_id()
                ),
            });
        }
    };
    let (mut key_type, mut params, mut modulus) = (None, None, None);
    let wanted = [AttributeType::KeyType, AttributeType::EcParams, AttributeType::Modulus];
    for attribute in session.get_attributes(handle, &wanted).map_err(fail)? {
        match attribute {
            Attribute::KeyType(found) => key_type = Some(found),
            Attribute::EcParams(found) => params = Some(found),
            Attribute::Modulus(found) => modulus = Some(found),
            _ => {}
        }
    }
    let mismatch = if key_type != object.key_type {
        Some("CKA_KEY_TYPE")
    } else if object.key_type == Some(KeyType::EC) && params != object.params {
        Some("CKA_EC_PARAMS")
    } else if object.key_type == Some(KeyType::RSA) && object.modulus.is_some() && modulus != object.modulus {
        Some("CKA_MODULUS")
    } else {
        None
    };
    match mismatch {
        Some(attribute) => Err(BackendError::MalformedResponse {
            key: key.to_owned(),
            detail: format!(
                "the public-key object with its CKA_ID on token `{}` is not its public key ({attribute} differs from the private key's)",
                token.label()
            ),
        }),
        None => Ok(Some(handle)),
    }
}

/// The DER SubjectPublicKeyInfo of the public-key object `handle`.
///
/// # Errors
/// A description of what the object lacks or holds that is not a public key.
pub(crate) fn read_spki(session: &Session, handle: ObjectHandle) -> Result<Result<Vec<u8>, String>, Error> {
    let wanted = [
        AttributeType::KeyType,
        AttributeType::EcParams,
        AttributeType::EcPoint,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
    ];
    let (mut key_type, mut params, mut point, mut modulus, mut exponent) = (None, None, None, None, None);
    for attribute in session.get_attributes(handle, &wanted)? {
        match attribute {
            Attribute::KeyType(found) => key_type = Some(found),
            Attribute::EcParams(found) => params = Some(found),
            Attribute::EcPoint(found) => point = Some(found),
            Attribute::Modulus(found) => modulus = Some(found),
            Attribute::PublicExponent(found) => exponent = Some(found),
            _ => {}
        }
    }
    Ok(match (key_type, params, point, modulus, exponent) {
        (Some(found), Some(params), Some(point), _, _) if found == KeyType::EC => {
            spki::ec_point(&point, &params).map(|point| spki::ec_spki(&params, point))
        }
        (Some(found), _, _, Some(modulus), Some(exponent)) if found == KeyType::RSA => {
            Ok(spki::rsa_spki(&modulus, &exponent))
        }
        (Some(found), ..) => Err(format!("its public-key object ({found}) lacks the attributes of its key")),
        (None, ..) => Err("its public-key object has no CKA_KEY_TYPE".into()),
    })
}

/// The template of the data object that holds the metadata of key `key_id`.
fn metadata_template(key_id: &str) -> [Attribute; 3] {
    [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(APPLICATION.to_vec()),
        Attribute::Label(key_id.as_bytes().to_vec()),
    ]
}

/// The metadata objects of key `key_id` and what each holds (undecoded): normally one, none for a key
/// this crate did not create, more when a write was cut short ([`metadata::newest`](crate::metadata::newest)
/// picks one).
pub(crate) fn read_metadata(session: &Session, key_id: &str) -> Result<Vec<(ObjectHandle, Vec<u8>)>, Error> {
    let mut records = Vec::new();
    for handle in session.find_objects(&metadata_template(key_id))? {
        let value =
            session.get_attributes(handle, &[AttributeType::Value])?.into_iter().find_map(
                |attribute| match attribute {
                    Attribute::Value(value) => Some(value),
                    _ => None,
                },
            );
        records.push((handle, value.unwrap_or_default()));
    }
    Ok(records)
}

/// Every metadata object on the token: (its key id, what it holds).
pub(crate) fn all_metadata(session: &Session) -> Result<Vec<(ObjectHandle, String, Vec<u8>)>, Error> {
    let template = [Attribute::Class(ObjectClass::DATA), Attribute::Application(APPLICATION.to_vec())];
    let mut records = Vec::new();
    for handle in session.find_objects(&template)? {
        let (mut label, mut value) = (String::new(), Vec::new());
        for attribute in session.get_attributes(handle, &[AttributeType::Label, AttributeType::Value])? {
            match attribute {
                Attribute::Label(found) => label = String::from_utf8_lossy(&found).into_owned(),
                Attribute::Value(found) => value = found,
                _ => {}
            }
        }
        records.push((handle, label, value));
    }
    Ok(records)
}

/// Writes the metadata of key `key_id` into a new private token object, then destroys the ones it
/// replaces (`replaced`): tokens such as SoftHSM2 do not let a data object's `CKA_VALUE` change.
pub(crate) fn write_metadata(
    session: &Session,
    key_id: &str,
    replaced: &[ObjectHandle],
    metadata: &Metadata,
) -> Result<(), Error> {
    let mut template = metadata_template(key_id).to_vec();
    template.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Value(metadata.encode()),
    ]);
    crate::token::patiently(|| session.create_object(&template))?;
    for replaced in replaced {
        session.destroy_object(*replaced)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_uuids_for_16_bytes_and_hex_otherwise() {
        let id: Vec<u8> = (0..16).collect();
        assert_eq!(key_id(&id), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(parse_key_id(&key_id(&id)), Some(id));
        assert_eq!(key_id(&[1]), "01");
        assert_eq!(parse_key_id("01"), Some(vec![1]));
        assert_eq!(parse_key_id("0A"), Some(vec![10]));
        for bad in ["", "-", "1", "xyz0", "0g", "ü0"] {
            assert_eq!(parse_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn references_name_a_key_on_this_token_only() {
        let serial = "4a195bac7e21426a";
        let key = |text: &str| KeyRef::new(text).unwrap();
        let id = "00010203-0405-0607-0809-0a0b0c0d0e0f";
        let bytes: Vec<u8> = (0..16).collect();
        assert_eq!(lookup(&key(id), serial), Lookup::Id(bytes.clone()));
        assert_eq!(lookup(&key(&arn(serial, id)), serial), Lookup::Id(bytes));
        assert_eq!(lookup(&key("alias/hot/eu"), serial), Lookup::Label("hot/eu".into()));
        assert_eq!(lookup(&key("arn:ethkms:pkcs11::4a195bac7e21426a:alias/hot"), serial), Lookup::Label("hot".into()));
        assert_eq!(lookup(&key(&arn("another", id)), serial), Lookup::Nowhere);
        assert_eq!(lookup(&key(&format!("arn:aws:kms:us-east-1:1:key/{id}")), serial), Lookup::Nowhere);
        assert_eq!(lookup(&key("1234abcd-12ab-34cd-56ef-1234567890ag"), serial), Lookup::Nowhere);
        assert_eq!(arn_account("A1 b:2"), "A1_b_2");
        assert_eq!(arn_account(""), "token");
    }

    #[test]
    fn modulus_sizes_count_significant_bits() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0]), 16);
        assert_eq!(significant_bits(&[0x01]), 1);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0xff; 256]), 2048);
    }
}
