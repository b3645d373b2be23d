//! Tokens other tools wrote to, on the SoftHSM2 test token: what the backend refuses rather than guess —
//! a label or `CKA_ID` several keys answer to, a public key that is not the private key's own, a key found
//! by its label that has no `CKA_ID` — and what it settles on its own: the records a write cut short
//! left twice, and a cached key handle whose key was made again under the same `CKA_ID`.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ethkms_backend::{BackendError, CreateKeyRequest, KeyFilter, KeyHandle, KeyUsage};
use ethkms_pkcs11::exclusive_writes;
use ethkms_test_support::pkcs11::softhsm;

mod common;

use common::{hex, key_ref, one_at_a_time, raw_session};

/// `CKA_EC_PARAMS` of secp256k1 and of P-256.
const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A key pair made through PKCS#11 itself, as `pkcs11-tool --keypairgen` would: (public, private).
fn key_pair(session: &Session, params: &[u8], id: Option<&[u8]>, label: Option<&str>, sign: bool) -> [ObjectHandle; 2] {
    let mut public = vec![Attribute::Token(true), Attribute::EcParams(params.to_vec()), Attribute::Verify(true)];
    let mut private =
        vec![Attribute::Token(true), Attribute::Private(true), Attribute::Sensitive(true), Attribute::Sign(sign)];
    for template in [&mut public, &mut private] {
        template.extend(id.map(|id| Attribute::Id(id.to_vec())));
        template.extend(label.map(|label| Attribute::Label(label.as_bytes().to_vec())));
    }
    let (public, private) =
        exclusive_writes(|| session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)).unwrap();
    [public, private]
}

fn destroy(session: &Session, objects: &[ObjectHandle]) {
    for object in objects {
        exclusive_writes(|| session.destroy_object(*object)).unwrap();
    }
}

/// A label two keys have, or a `CKA_ID` two keys have, names neither: `AmbiguousKey`, whatever is asked.
#[tokio::test]
async fn a_label_or_id_of_several_keys_is_ambiguous() {
    let Some(hsm) = softhsm() else { return };
    let _turn = one_at_a_time().await;
    let session = raw_session(&hsm);
    let backend = hsm.backend().await;
    let label = ethkms_test_support::unique("twice");
    let first = key_pair(&session, &SECP256K1, Some(&session.generate_random_vec(4).unwrap()), Some(&label), true);
    let second = key_pair(&session, &SECP256K1, Some(&session.generate_random_vec(4).unwrap()), Some(&label), true);
    let alias = key_ref(&format!("alias/{label}"));
    let error = backend.describe_key(&alias).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(&error, BackendError::AmbiguousKey { key, .. } if *key == alias.to_string()), "{error:?}");
    assert!(text.contains("2 private keys") && text.contains(&format!("`{label}`")) && !text.contains('\n'), "{text}");
    let error = backend.sign_digest(&alias, &[1; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::AmbiguousKey { .. }), "{error:?}");
    destroy(&session, &[first, second].concat());

    let id = session.generate_random_vec(4).unwrap();
    let first = key_pair(&session, &SECP256K1, Some(&id), None, true);
    let second = key_pair(&session, &SECP256K1, Some(&id), None, true);
    let by_id = key_ref(&hex(&id));
    for _ in 0..2 {
        let error = backend.sign_digest(&by_id, &[1; 32]).await.unwrap_err();
        assert!(
            matches!(&error, BackendError::AmbiguousKey { .. }) && error.to_string().contains("CKA_ID"),
            "{error:?}"
        );
    }
    let error = backend.public_key(&by_id).await.unwrap_err();
    assert!(matches!(error, BackendError::AmbiguousKey { .. }), "{error:?}");
    destroy(&session, &[first, second].concat());
}

/// The public key of a key is the one public-key object with its `CKA_ID`, and on its curve.
#[tokio::test]
async fn a_public_key_must_be_the_private_keys_own() {
    let Some(hsm) = softhsm() else { return };
    let _turn = one_at_a_time().await;
    let session = raw_session(&hsm);
    let backend = hsm.backend().await;
    let id = session.generate_random_vec(4).unwrap();
    let key = key_ref(&hex(&id));
    let [public, private] = key_pair(&session, &SECP256K1, Some(&id), None, true);
    let [other_public, other_private] =
        key_pair(&session, &P256, Some(&session.generate_random_vec(4).unwrap()), None, true);
    KeyHandle::open(backend.clone(), key.clone()).await.unwrap();

    // A second public key with its CKA_ID.
    exclusive_writes(|| session.update_attributes(other_public, &[Attribute::Id(id.clone())])).unwrap();
    let error = backend.public_key(&key).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, BackendError::AmbiguousKey { .. }) && text.contains("2 public-key objects"), "{text}");

    // Only the P-256 one left with its CKA_ID: not its public key.
    destroy(&session, &[public]);
    let error = backend.public_key(&key).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, BackendError::MalformedResponse { .. }) && text.contains("CKA_EC_PARAMS"), "{text}");
    destroy(&session, &[other_public, other_private, private]);
}

/// A key found by its label without a `CKA_ID` is refused: its public key could be anyone's.
#[tokio::test]
async fn a_key_without_an_id_is_refused() {
    let Some(hsm) = softhsm() else { return };
    let _turn = one_at_a_time().await;
    let session = raw_session(&hsm);
    let backend = hsm.backend().await;
    let label = ethkms_test_support::unique("no-id");
    let pair = key_pair(&session, &SECP256K1, None, Some(&label), true);
    let alias = key_ref(&format!("alias/{label}"));
    for error in [
        backend.public_key(&alias).await.unwrap_err(),
        backend.sign_digest(&alias, &[1; 32]).await.unwrap_err(),
        backend.describe_key(&alias).await.unwrap_err(),
    ] {
        assert!(
            matches!(&error, BackendError::Unsupported { key, .. } if *key == alias.to_string())
                && error.to_string().contains("CKA_ID"),
            "{error:?}"
        );
    }
    destroy(&session, &pair);
}

/// The metadata object of `key_id` holding `json`, as a write cut short would leave it.
fn record(session: &Session, key_id: &str, json: &str) -> ObjectHandle {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"ethkms".to_vec()),
        Attribute::Label(key_id.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Value(json.as_bytes().to_vec()),
    ];
    exclusive_writes(|| session.create_object(&template)).unwrap()
}

fn records(session: &Session, key_id: &str) -> usize {
    let template = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"ethkms".to_vec()),
        Attribute::Label(key_id.as_bytes().to_vec()),
    ];
    session.find_objects(&template).unwrap().len()
}

/// Two records of one key: the newer one counts, and `list_keys` destroys the older; two of one revision
/// that disagree are refused until one goes.
#[tokio::test]
async fn the_newest_record_counts_and_the_older_is_cleaned_up() {
    let Some(hsm) = softhsm() else { return };
    let _turn = one_at_a_time().await;
    let session = raw_session(&hsm);
    let backend = hsm.backend().await;
    let tag = ethkms_test_support::unique("records");
    let request = CreateKeyRequest::new().description("first").tag("records", &tag);
    let info = backend.create_key(&request).await.unwrap();
    let key = key_ref(&info.key_id);
    let newer = format!(r#"{{"description":"second","tags":[["records","{tag}"]],"revision":3}}"#);
    record(&session, &info.key_id, &newer);
    assert_eq!(records(&session, &info.key_id), 2);
    assert_eq!(backend.describe_key(&key).await.unwrap().description.as_deref(), Some("second"));

    let listed = backend.list_keys(&KeyFilter::all().tag("records", &tag)).await.unwrap();
    assert_eq!(listed.iter().map(|key| key.description.as_deref()).collect::<Vec<_>>(), [Some("second")]);
    assert_eq!(records(&session, &info.key_id), 1, "the older record was destroyed");

    // A rival of the same revision: which is right cannot be told.
    let rival = record(&session, &info.key_id, r#"{"description":"rival","revision":3}"#);
    let error = backend.describe_key(&key).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, BackendError::MalformedResponse { .. }) && text.contains("disagree"), "{text}");
    destroy(&session, &[rival]);
    // Disabling writes revision 4 and replaces the record.
    backend.disable_key(&key).await.unwrap();
    assert_eq!(records(&session, &info.key_id), 1);
    let description = backend.describe_key(&key).await.unwrap();
    assert_eq!((description.description.as_deref(), description.key_usage), (Some("second"), KeyUsage::SignVerify));
    backend.enable_key(&key).await.unwrap();
    KeyHandle::open(backend.clone(), key).await.unwrap().sign_digest(&[3; 32]).await.unwrap();
}

/// A key destroyed and made again under the same `CKA_ID` after its handle was cached: the new key is looked
/// up, and the error is about it (it may not sign), not about the old handle.
#[tokio::test]
async fn a_key_made_again_under_a_cached_id_is_looked_up_afresh() {
    let Some(hsm) = softhsm() else { return };
    let _turn = one_at_a_time().await;
    let session = raw_session(&hsm);
    let backend = hsm.backend().await;
    let id = session.generate_random_vec(4).unwrap();
    let key = key_ref(&hex(&id));
    let first = key_pair(&session, &SECP256K1, Some(&id), None, true);
    KeyHandle::open(backend.clone(), key.clone()).await.unwrap().sign_digest(&[1; 32]).await.unwrap();
    backend.sign_digest(&key, &[2; 32]).await.unwrap();
    destroy(&session, &first);

    let second = key_pair(&session, &SECP256K1, Some(&id), None, false);
    let error = backend.sign_digest(&key, &[3; 32]).await.unwrap_err();
    assert!(matches!(error, BackendError::WrongKeyUsage { .. }), "{error:?}");
    destroy(&session, &second);

    let third = key_pair(&session, &SECP256K1, Some(&id), None, true);
    let handle = KeyHandle::open(backend.clone(), key.clone()).await.unwrap();
    let digest = [4; 32];
    assert_eq!(handle.sign_digest(&digest).await.unwrap().recover_address(&digest).unwrap(), handle.address());
    destroy(&session, &third);
}
