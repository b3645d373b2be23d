//! Signing on the token: `CKM_ECDSA` over the digest with the key's private-key handle — cached by key
//! id, so that a signature is one call — and what the token's refusals mean.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use ethkms_backend::{BackendError, KeyRef, KeySpec};

use crate::backend::metadata_of;
use crate::errors::rv;
use crate::metadata::StoredState;
use crate::objects::{self, KeyObject, Lookup};
use crate::token::Token;

/// Handles of secp256k1 private keys by `CKA_ID`, kept once a reference by key id found exactly one such
/// key: handles are the same in every session of the process. An entry goes when its handle fails or
/// signs something unusable.
pub(crate) type Handles = Arc<Mutex<HashMap<Vec<u8>, ObjectHandle>>>;

/// Keeps the handle of `object`, if `lookup` named it by its key id (which [`objects::private_key`] found
/// on exactly one private key) and it is a secp256k1 key.
pub(crate) fn remember(handles: &Handles, lookup: &Lookup, object: &KeyObject) {
    if let Lookup::Id(id) = lookup
        && *id == object.id
        && object.spec == KeySpec::EccSecgP256k1
    {
        handles.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), object.handle);
    }
}

/// Drops the cached handle of the key whose `CKA_ID` is `id`, if any.
pub(crate) fn forget(handles: &Handles, id: Option<&Vec<u8>>) {
    if let Some(id) = id {
        handles.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// Whether `error` says the token no longer knows a handle.
fn is_handle_error(error: &Error) -> bool {
    matches!(rv(error), Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid))
}

/// The fixed-width `r ‖ s` the key `key` (found through `lookup`) gives `digest`, on `session`.
pub(crate) fn sign(
    token: &Token,
    session: &Session,
    key: &KeyRef,
    lookup: &Lookup,
    handles: &Handles,
    digest: &[u8; 32],
) -> Result<Vec<u8>, BackendError> {
    let by_id = match lookup {
        Lookup::Id(id) => Some(id),
        Lookup::Label(_) | Lookup::Nowhere => None,
    };
    let cached = by_id.and_then(|id| handles.lock().unwrap_or_else(PoisonError::into_inner).get(id).copied());
    let mut handle = match cached {
        Some(handle) => handle,
        None => signing_key(token, session, key, lookup, handles)?,
    };
    let mut result = session.sign(&Mechanism::Ecdsa, handle, digest);
    if cached.is_some() && result.as_ref().is_err_and(is_handle_error) {
        // The key was destroyed (or re-created, or the token logged the process out) since it was cached:
        // look it up again.
        forget(handles, by_id);
        handle = signing_key(token, session, key, lookup, handles)?;
        result = session.sign(&Mechanism::Ecdsa, handle, digest);
    }
    result.map_err(|error| {
        if is_handle_error(&error) {
            forget(handles, by_id);
        }
        refusal(token, session, key, handle, &error)
    })
}

/// The handle of the private key `key` names, if it is a secp256k1 key (by its `CKA_EC_PARAMS`): any other
/// is refused before the token is asked for a signature.
fn signing_key(
    token: &Token,
    session: &Session,
    key: &KeyRef,
    lookup: &Lookup,
    handles: &Handles,
) -> Result<ObjectHandle, BackendError> {
    let object = objects::private_key(token, session, key)?;
    if object.spec != KeySpec::EccSecgP256k1 {
        return Err(BackendError::WrongKeySpec { key: key.to_string(), spec: object.spec });
    }
    remember(handles, lookup, &object);
    Ok(object.handle)
}

/// What the token's refusal to sign with the key `handle` (named `key`) means.
fn refusal(token: &Token, session: &Session, key: &KeyRef, handle: ObjectHandle, error: &Error) -> BackendError {
    let read = || objects::read_key(session, handle).map_err(|error| token.error(&error, key.as_str()));
    match rv(error) {
        Some(RvError::KeyFunctionNotPermitted) => match read() {
            Ok(object) => why_not_signing(token, session, key, &object),
            Err(error) => error,
        },
        Some(RvError::KeyTypeInconsistent) => match read() {
            Ok(object) => BackendError::WrongKeySpec { key: key.to_string(), spec: object.spec },
            Err(error) => error,
        },
        Some(RvError::MechanismInvalid) => BackendError::Unsupported {
            key: key.to_string(),
            backend: "pkcs11",
            operation: "sign",
            reason: format!(
                "token `{}` does not offer CKM_ECDSA (CKR_MECHANISM_INVALID), the raw ECDSA over a digest that ethkms signs with",
                token.label()
            ),
        },
        _ => token.error(error, key.as_str()),
    }
}

/// Why the key `object` may not sign: disabled or pending deletion by this crate, or not a signing key.
fn why_not_signing(token: &Token, session: &Session, key: &KeyRef, object: &KeyObject) -> BackendError {
    match metadata_of(token, session, key, object) {
        Ok((metadata, _)) => match metadata.map_or(StoredState::Enabled, |metadata| metadata.state) {
            StoredState::Disabled => BackendError::Disabled { key: key.to_string() },
            StoredState::PendingDeletion => BackendError::PendingDeletion { key: key.to_string() },
            StoredState::Enabled => BackendError::WrongKeyUsage { key: key.to_string(), usage: object.usage(None) },
        },
        Err(error) => error,
    }
}
