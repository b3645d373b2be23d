//! `Pkcs11Backend` against a real token: the SoftHSM2 token `cargo xtask services up` creates (it exports
//! `ETHKMS_TEST_PKCS11_MODULE`, `_TOKEN`, `_PIN` and `SOFTHSM2_CONF`). In CI a missing token fails these
//! tests; elsewhere they say they were skipped.
//!
//! Besides the backend contract: the private key cannot be read or wrapped out of the token; keys made by
//! other tools are usable; signatures verify on the token itself (`C_Verify`, an independent verifier);
//! many signatures at once over a few sessions; and the login's failures (a wrong PIN, no such token, no
//! module) are typed errors that never show the PIN.

use std::sync::Arc;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ethkms_backend::{BackendError, CreateKeyRequest, KeyBackend, KeyHandle, KeySpec, KeyUsage};
use ethkms_core::keccak256;
use ethkms_pkcs11::{CallPlacement, PinSource, Pkcs11Backend, Pkcs11Config, exclusive_writes};
use ethkms_test_support::pkcs11::{PIN_VARIABLE, softhsm};

mod common;

use common::{hex, key_ref, object, raw_session};

ethkms_backend::contract_tests!(ethkms_test_support::pkcs11::pkcs11_backend());

fn boolean(session: &Session, handle: ObjectHandle, attribute: AttributeType) -> Option<bool> {
    session.get_attributes(handle, &[attribute]).unwrap().into_iter().find_map(|found| match found {
        Attribute::Sensitive(value)
        | Attribute::Extractable(value)
        | Attribute::NeverExtractable(value)
        | Attribute::AlwaysSensitive(value)
        | Attribute::Token(value)
        | Attribute::Sign(value)
        | Attribute::Decrypt(value)
        | Attribute::Derive(value) => Some(value),
        _ => None,
    })
}

/// The private key never leaves the token: its value is not readable, it is sensitive and not
/// extractable (and never was), and wrapping it with a key of our own is refused.
#[tokio::test]
async fn the_private_key_cannot_be_read_or_wrapped() {
    let Some(hsm) = softhsm() else { return };
    let backend = hsm.backend().await;
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let session = raw_session(&hsm);
    let private = object(&session, ObjectClass::PRIVATE_KEY, &info.key_id);

    for (attribute, expected) in [
        (AttributeType::Token, true),
        (AttributeType::Sensitive, true),
        (AttributeType::AlwaysSensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::NeverExtractable, true),
        (AttributeType::Sign, true),
        (AttributeType::Decrypt, false),
        (AttributeType::Derive, false),
    ] {
        assert_eq!(boolean(&session, private, attribute), Some(expected), "{attribute:?}");
    }
    // C_GetAttributeValue answers CKR_ATTRIBUTE_SENSITIVE for CKA_VALUE; cryptoki then leaves it out.
    let value = session.get_attributes(private, &[AttributeType::Value]).unwrap();
    assert!(value.is_empty(), "CKA_VALUE of the private key was readable: {} attribute(s)", value.len());

    // A wrapping key of our own (a session object), allowed to wrap anything extractable.
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Wrap(true), Attribute::Encrypt(true)],
        )
        .unwrap();
    let error = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, private).unwrap_err();
    assert!(
        matches!(error, Error::Pkcs11(RvError::KeyUnextractable | RvError::KeyNotWrappable, _)),
        "C_WrapKey of the private key: {error}"
    );
    // And the extractable attribute cannot be turned back on.
    let error = session.update_attributes(private, &[Attribute::Extractable(true)]).unwrap_err();
    assert!(matches!(error, Error::Pkcs11(RvError::AttributeReadOnly | RvError::ActionProhibited, _)), "{error}");
}

/// A key made by another tool (here: directly through PKCS#11, as `pkcs11-tool --keypairgen --id 01
/// --label …` would) is found by label and by id, and its signatures verify on the token itself.
#[tokio::test]
async fn keys_made_elsewhere_sign_and_the_token_verifies_them() {
    let Some(hsm) = softhsm() else { return };
    let session = raw_session(&hsm);
    let id = session.generate_random_vec(4).unwrap();
    let label = ethkms_test_support::unique("elsewhere");
    let params = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
    let (public, private) = exclusive_writes(|| {
        session.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(params),
                Attribute::Verify(true),
                Attribute::Id(id.clone()),
                Attribute::Label(label.clone().into_bytes()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Id(id.clone()),
                Attribute::Label(label.clone().into_bytes()),
            ],
        )
    })
    .unwrap();
    let backend = hsm.backend().await;
    let by_alias = KeyHandle::open(Arc::clone(&backend), key_ref(&format!("alias/{label}"))).await.unwrap();
    let key_id = hex(&id);
    let by_id = KeyHandle::open(Arc::clone(&backend), key_ref(&key_id)).await.unwrap();
    assert_eq!(by_alias.address(), by_id.address());
    let description = backend.describe_key(&key_ref(&key_id)).await.unwrap();
    assert_eq!(description.aliases, [format!("alias/{label}")]);
    assert_eq!((description.key_spec, description.key_usage), (KeySpec::EccSecgP256k1, KeyUsage::SignVerify));

    for index in 0..20u8 {
        let digest = keccak256(&[index]);
        let signature = by_alias.sign_digest(&digest).await.unwrap();
        assert_eq!(signature.recover_address(&digest).unwrap(), by_alias.address());
        // r ‖ s, low-s as Ethereum wants it: the token accepts it as its own key's signature.
        let fixed = signature.to_ecdsa().to_fixed_bytes();
        session.verify(&Mechanism::Ecdsa, public, &digest, &fixed).unwrap();
        let mut tampered = fixed;
        tampered[63] ^= 1;
        assert!(session.verify(&Mechanism::Ecdsa, public, &digest, &tampered).is_err());
    }
    exclusive_writes(|| session.destroy_object(private).and_then(|()| session.destroy_object(public))).unwrap();
    let error = by_id.sign_digest(&[1; 32]).await.unwrap_err();
    assert!(matches!(&error, BackendError::NotFound { key } if key.ends_with(&key_id)), "a destroyed key: {error:?}");
}

/// A secp256k1 key that may only derive, a P-256 key, and a key type the backend does not create, are
/// typed errors; enabling (even after disabling) does not make the derive-only key a signing key.
#[tokio::test]
async fn keys_that_cannot_sign_are_refused_by_kind() {
    let Some(hsm) = softhsm() else { return };
    let session = raw_session(&hsm);
    let id = session.generate_random_vec(16).unwrap();
    exclusive_writes(|| {
        session.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
                Attribute::Id(id.clone()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(false),
                Attribute::Decrypt(false),
                Attribute::Derive(true),
                Attribute::Id(id.clone()),
            ],
        )
    })
    .unwrap();
    let backend = hsm.backend().await;
    let key_id = [&id[..4], &id[4..6], &id[6..8], &id[8..10], &id[10..]].map(hex).join("-");
    let error = KeyHandle::open(Arc::clone(&backend), key_ref(&key_id)).await.unwrap_err();
    assert!(
        matches!(&error, BackendError::WrongKeyUsage { key, usage: KeyUsage::KeyAgreement } if key == &key_id),
        "{error:?}"
    );
    // Asked to sign anyway, the token refuses and the error says why.
    let error = backend.sign_digest(&key_ref(&key_id), &[1; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::WrongKeyUsage { .. }), "{error:?}");
    // Its CKA_SIGN was not switched off by the backend: enabling it is refused, before and after disabling.
    let private = object(&session, ObjectClass::PRIVATE_KEY, &key_id);
    for disable_first in [false, true] {
        if disable_first {
            backend.disable_key(&key_ref(&key_id)).await.unwrap();
        }
        let error = backend.enable_key(&key_ref(&key_id)).await.unwrap_err();
        assert!(
            matches!(&error, BackendError::Unsupported { operation: "enable a key", .. })
                && error.to_string().contains("not switched off by ethkms"),
            "{error:?}"
        );
        assert_eq!(boolean(&session, private, AttributeType::Sign), Some(false), "disabled first: {disable_first}");
    }
    let description = backend.describe_key(&key_ref(&key_id)).await.unwrap();
    assert_eq!(description.key_usage, KeyUsage::KeyAgreement, "a disabled derive-only key is still no signing key");

    // A P-256 key is refused by its curve before the token is asked to sign (SoftHSM2 would sign).
    let p256 = backend.create_key(&CreateKeyRequest::new().key_spec(KeySpec::EccNistP256)).await.unwrap();
    for reference in [p256.key_id.clone(), p256.arn.clone()] {
        let error = backend.sign_digest(&key_ref(&reference), &[1; 32]).await.unwrap_err();
        assert!(
            matches!(&error, BackendError::WrongKeySpec { key, spec: KeySpec::EccNistP256 } if *key == reference),
            "{error:?}"
        );
    }

    let error = backend.create_key(&CreateKeyRequest::new().key_spec(KeySpec::SymmetricDefault)).await.unwrap_err();
    assert!(matches!(error, BackendError::Unsupported { .. }), "{error:?}");
    assert!(error.to_string().contains("SYMMETRIC_DEFAULT") && !error.to_string().contains('\n'), "{error}");
    assert!(
        session
            .get_attributes(object(&session, ObjectClass::PRIVATE_KEY, &key_id), &[AttributeType::KeyType])
            .unwrap()
            .contains(&Attribute::KeyType(KeyType::EC))
    );
}

/// 200 signatures, 64 at a time, over 3 sessions: each verified, from the one key; with the calls in each
/// placement (Tokio's blocking threads, the default; `block_in_place`; inline).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_signatures_at_once_share_a_few_sessions() {
    let Some(hsm) = softhsm() else { return };
    for placement in CallPlacement::ALL {
        let config = hsm.config().max_sessions(3).calls(placement);
        let backend: Arc<dyn KeyBackend> = Arc::new(Pkcs11Backend::connect(config).await.unwrap());
        let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
        let handle = KeyHandle::open(Arc::clone(&backend), key_ref(&info.key_id)).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let mut verified = 0;
        for index in 0..200u32 {
            let signer = handle.clone();
            tasks.spawn(async move {
                let digest = keccak256(&index.to_be_bytes());
                (digest, signer.sign_digest(&digest).await)
            });
            while tasks.len() >= 64 || (index == 199 && !tasks.is_empty()) {
                let (digest, signature) = tasks.join_next().await.unwrap().unwrap();
                assert_eq!(signature.unwrap().recover_address(&digest).unwrap(), handle.address(), "{placement}");
                verified += 1;
            }
        }
        assert_eq!(verified, 200);
        let debug = format!("{backend:?}");
        assert!(debug.contains(&hsm.token) && !debug.contains(&std::env::var(PIN_VARIABLE).unwrap()), "{debug}");
    }
}

/// On a current-thread runtime, where `block_in_place` is not allowed, every placement signs (in place
/// falls back to the blocking threads; inline blocks the runtime's one thread for the call).
#[tokio::test(flavor = "current_thread")]
async fn every_placement_signs_on_a_current_thread_runtime() {
    let Some(hsm) = softhsm() else { return };
    for placement in CallPlacement::ALL {
        let backend: Arc<dyn KeyBackend> =
            Arc::new(Pkcs11Backend::connect(hsm.config().calls(placement)).await.unwrap());
        let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
        let handle = KeyHandle::open(Arc::clone(&backend), key_ref(&info.key_id)).await.unwrap();
        let digest = keccak256(placement.name().as_bytes());
        let signature = handle.sign_digest(&digest).await.unwrap();
        assert_eq!(signature.recover_address(&digest).unwrap(), handle.address(), "{placement}");
    }
}

/// Requests whose callers stop waiting keep their session's place in the pool until their calls are done:
/// with one session allowed, however many are cut short, the pool never holds a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_do_not_grow_the_pool() {
    let Some(hsm) = softhsm() else { return };
    let backend = Pkcs11Backend::connect(hsm.config().max_sessions(1)).await.unwrap();
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let key = key_ref(&info.key_id);
    let mut cut_short = 0;
    for index in 0..100u32 {
        let digest = keccak256(&index.to_be_bytes());
        let signing = backend.sign_digest(&key, &digest);
        tokio::pin!(signing);
        if index % 10 == 9 {
            // Now and then one waited for: the session comes back between the cut ones.
            signing.await.unwrap();
            continue;
        }
        // Polled once — its call handed to a blocking thread, or waiting for the session — then dropped.
        // (A timeout of a few microseconds cut none short when the machine was quick: Tokio's timer
        // counts milliseconds.)
        tokio::select! {
            biased;
            _ = &mut signing => {}
            () = std::future::ready(()) => cut_short += 1,
        }
    }
    assert!(cut_short > 0, "no request was cut short");
    // One more, waited for: it runs after every request that was cut short.
    backend.sign_digest(&key, &[7; 32]).await.unwrap();
    let debug = format!("{backend:?}");
    assert!(debug.contains("idle_sessions: 1,") || debug.contains("idle_sessions: 1 "), "{debug}");
}

/// A token label that is not there names the labels that are; a module that is not there names its path.
#[tokio::test]
async fn a_missing_token_or_module_is_a_configuration_error() {
    let Some(hsm) = softhsm() else { return };
    let config = Pkcs11Config::new(&hsm.module, "no-such-token").pin(PinSource::Env(PIN_VARIABLE.into()));
    let error = Pkcs11Backend::connect(config).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, BackendError::Configuration { .. }), "{error:?}");
    assert!(text.contains("`no-such-token`") && text.contains(&format!("`{}`", hsm.token)), "{text}");

    let config = Pkcs11Config::new("/nonexistent/libpkcs11.so", &hsm.token);
    let error = Pkcs11Backend::connect(config).await.unwrap_err();
    assert!(error.to_string().contains("/nonexistent/libpkcs11.so") && !error.to_string().contains('\n'), "{error}");
}

/// A wrong PIN is refused as such, naming where it came from and never what it was; then the right one
/// logs in. On the spare token: the login is per process, and this process is logged in to the other.
#[tokio::test]
async fn a_wrong_pin_is_a_typed_error_that_does_not_show_it() {
    let Some(hsm) = softhsm() else { return };
    // Never set: no PIN at all.
    let variable = "ETHKMS_TEST_WRONG_PIN";
    let wrong = "not-the-pin-93172";
    let directory = std::env::temp_dir().join(ethkms_test_support::unique("ethkms-wrong-pin"));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("pin");
    std::fs::write(&file, format!("{wrong}\n")).unwrap();
    let spare = Pkcs11Config::new(&hsm.module, &hsm.spare_token);
    let error = Pkcs11Backend::connect(spare.clone().pin(PinSource::File(file.clone()))).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(&error, BackendError::PinIncorrect { token, .. } if *token == hsm.spare_token), "{error:?}");
    assert!(text.contains("CKR_PIN_INCORRECT") && text.contains(&file.display().to_string()), "{text}");
    assert!(!text.contains(wrong) && !format!("{error:?}").contains(wrong), "{error:?}");
    let unset = Pkcs11Backend::connect(spare.clone().pin(PinSource::Env(variable.into()))).await.unwrap_err();
    assert!(unset.to_string().contains(variable), "{unset}");

    let backend = Pkcs11Backend::connect(spare.pin(PinSource::Env(PIN_VARIABLE.into()))).await.unwrap();
    assert_eq!(backend.token_label(), hsm.spare_token);
    std::fs::remove_dir_all(directory).unwrap();
}
