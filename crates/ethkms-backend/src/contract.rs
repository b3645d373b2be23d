//! The contract every [`KeyBackend`] meets, as a test suite that runs against any backend: the
//! in-memory one in this crate's tests, AWS KMS (on LocalStack) in ethkms-aws's.
//!
//! [`contract_tests!`](crate::contract_tests) expands to one `#[tokio::test]` per check, given an async
//! factory that returns `Some(backend)`, or `None` to skip (a factory must not return `None` in CI).
//! Names are made unique per run, so the suite can run again and again against one long-lived service.
//! Every check panics when the backend breaks the contract: these are tests.
//!
//! The helpers the workspace's own tests share (finding live services, unique names, LocalStack, anvil)
//! are in its unpublished test-support crate (`tests/support`), not here.

#![allow(clippy::missing_panics_doc)]

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use ethkms_core::{EcdsaSignature, Signature, keccak256};

use crate::{
    BackendError, CreateKeyRequest, KeyBackend, KeyFilter, KeyHandle, KeyRef, KeySpec, KeyState, Keyring, Tag,
};

/// A string unique to this call, for the suite's aliases and tag values.
fn unique(prefix: &str) -> String {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{prefix}-{random:016x}")
}

fn key_ref(text: &str) -> KeyRef {
    KeyRef::new(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// Creating a key with an alias and tags returns its id, ARN and address, and describe and list agree.
pub async fn create_with_alias_and_tags(backend: Arc<dyn KeyBackend>) {
    let alias = format!("alias/{}", unique("contract-create"));
    let run = unique("run");
    let request = CreateKeyRequest::new()
        .description("ethkms contract test")
        .alias(alias.clone())
        .tag("ethkms-contract", run.clone())
        .tag("purpose", "deposit");
    let info = backend.create_key(&request).await.expect("create_key");
    assert!(!info.key_id.is_empty());
    assert!(info.arn.starts_with("arn:") && info.arn.ends_with(&info.key_id), "{}", info.arn);
    assert_eq!(info.alias.as_deref(), Some(alias.as_str()));
    let address = info.address.expect("a secp256k1 key has an address");

    let description = backend.describe_key(&key_ref(&info.key_id)).await.expect("describe_key");
    assert_eq!(description.key_id, info.key_id);
    assert_eq!(description.arn, info.arn);
    assert_eq!(description.state, KeyState::Enabled);
    assert_eq!(description.key_spec, KeySpec::EccSecgP256k1);
    assert_eq!(description.description.as_deref(), Some("ethkms contract test"));

    let listed = backend.list_keys(&KeyFilter::all().tag("ethkms-contract", run)).await.expect("list_keys");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key_id, info.key_id);
    assert!(listed[0].aliases.contains(&alias), "{:?}", listed[0].aliases);
    assert!(listed[0].tags.contains(&Tag::new("purpose", "deposit")), "{:?}", listed[0].tags);

    let handle = KeyHandle::open(backend, key_ref(&alias)).await.expect("open by alias");
    assert_eq!(handle.address(), address);
}

/// Key id, key ARN, alias name and alias ARN all name the same key, with the same address every time.
pub async fn resolves_every_reference_form(backend: Arc<dyn KeyBackend>) {
    let alias = format!("alias/{}", unique("contract-forms"));
    let info = backend.create_key(&CreateKeyRequest::new().alias(alias.clone())).await.expect("create_key");
    let arn_prefix = info.arn.trim_end_matches(&format!("key/{}", info.key_id)).to_owned();
    let alias_arn = format!("{arn_prefix}{alias}");
    let expected = info.address.expect("address");
    for reference in [info.key_id.as_str(), info.arn.as_str(), alias.as_str(), alias_arn.as_str()] {
        let handle = KeyHandle::open(Arc::clone(&backend), key_ref(reference))
            .await
            .unwrap_or_else(|error| panic!("open {reference}: {error}"));
        assert_eq!(handle.address(), expected, "{reference}");
        let description = backend.describe_key(&key_ref(reference)).await.expect("describe");
        assert_eq!(description.key_id, info.key_id, "{reference}");
        let digest = keccak256(reference.as_bytes());
        let signature = handle.sign_digest(&digest).await.expect("sign");
        assert_eq!(signature.recover_address(&digest).expect("recovers"), expected, "{reference}");
    }
    // Separate handles and keyrings, one after another: the address never changes.
    let keyring = Keyring::new(Arc::clone(&backend));
    for _ in 0..3 {
        assert_eq!(keyring.address(&key_ref(&info.key_id)).await.expect("address"), expected);
        let handle = KeyHandle::open(Arc::clone(&backend), key_ref(&alias)).await.expect("open");
        assert_eq!(handle.address(), expected);
    }
}

/// 200 random digests signed by the backend: each DER signature, high-s or not, becomes a verified
/// Ethereum signature of the key's address, and both high and low s are seen (as KMS returns them).
pub async fn signs_random_digests(backend: Arc<dyn KeyBackend>) {
    let info = backend.create_key(&CreateKeyRequest::new()).await.expect("create_key");
    let key = key_ref(&info.key_id);
    let handle = KeyHandle::open(Arc::clone(&backend), key.clone()).await.expect("open");
    let address = info.address.expect("address");
    let (mut high, mut low) = (0, 0);
    for index in 0..200u32 {
        let digest = keccak256(format!("{}-{index}", unique("digest")).as_bytes());
        let der = backend.sign_digest(&key, &digest).await.expect("sign_digest");
        let raw = EcdsaSignature::from_der(&der).expect("strict DER");
        if raw.is_low_s() {
            low += 1;
        } else {
            high += 1;
        }
        let signature = Signature::from_kms_der(&der, &digest, handle.public_key()).expect("verifies");
        assert_eq!(signature.recover_address(&digest).expect("recovers"), address);
        assert!(signature.to_ecdsa().is_low_s());
        if index % 10 == 0 {
            let through_handle = handle.sign_digest(&digest).await.expect("handle signs");
            assert_eq!(through_handle.recover_address(&digest).expect("recovers"), address);
        }
    }
    assert!(high > 0 && low > 0, "expected both high-s and low-s signatures, got {high} high and {low} low");
}

/// Listing by tag finds exactly the keys with that tag, across pages.
pub async fn lists_by_tag(backend: Arc<dyn KeyBackend>) {
    let batch = unique("batch");
    let mut created = Vec::new();
    for index in 0..3 {
        let request = CreateKeyRequest::new().tag("ethkms-batch", batch.clone()).tag("index", index.to_string());
        created.push(backend.create_key(&request).await.expect("create_key").key_id);
    }
    // A key in another batch must not be listed.
    backend.create_key(&CreateKeyRequest::new().tag("ethkms-batch", unique("other"))).await.expect("create_key");
    let mut listed: Vec<String> = backend
        .list_keys(&KeyFilter::all().tag("ethkms-batch", batch.clone()))
        .await
        .expect("list_keys")
        .into_iter()
        .map(|description| description.key_id)
        .collect();
    listed.sort();
    created.sort();
    assert_eq!(listed, created);
    let one = backend.list_keys(&KeyFilter::all().tag("ethkms-batch", batch).tag("index", "1")).await.expect("list");
    assert_eq!(one.len(), 1);
    assert!(backend.list_keys(&KeyFilter::all()).await.expect("list all").len() >= 4);
}

/// Every way a key can be unusable gives its own error variant, naming the key.
pub async fn errors_name_the_key(backend: Arc<dyn KeyBackend>) {
    let open = |reference: String| {
        let backend = Arc::clone(&backend);
        async move { KeyHandle::open_with_retry(backend, key_ref(&reference), crate::RetryPolicy::none()).await }
    };

    let unknown = "1234abcd-12ab-34cd-56ef-1234567890ab".to_owned();
    let error = open(unknown.clone()).await.expect_err("unknown key");
    assert!(matches!(&error, BackendError::NotFound { key } if *key == unknown), "{error:?}");
    let unknown_alias = format!("alias/{}", unique("missing"));
    let error = open(unknown_alias.clone()).await.expect_err("unknown alias");
    assert!(matches!(&error, BackendError::NotFound { key } if *key == unknown_alias), "{error:?}");

    for spec in [KeySpec::Rsa2048, KeySpec::EccNistP256] {
        let info = backend.create_key(&CreateKeyRequest::new().key_spec(spec.clone())).await.expect("create");
        assert_eq!(info.address, None);
        let error = open(info.key_id.clone()).await.expect_err("wrong spec");
        assert!(
            matches!(&error, BackendError::WrongKeySpec { key, spec: found } if *key == info.key_id && *found == spec),
            "{error:?}"
        );
        assert!(error.to_string().contains(spec.as_str()), "{error}");
    }

    let disabled = backend.create_key(&CreateKeyRequest::new()).await.expect("create");
    let handle = open(disabled.key_id.clone()).await.expect("open before disabling");
    backend.disable_key(&key_ref(&disabled.key_id)).await.expect("disable");
    // AWS KMS refuses GetPublicKey for a disabled key; LocalStack answers it. Either way the key
    // must not sign, and the error must say why and name the key.
    let error = match open(disabled.key_id.clone()).await {
        Err(error) => error,
        Ok(reopened) => reopened.sign_digest(&[7; 32]).await.expect_err("a disabled key signed"),
    };
    assert!(matches!(&error, BackendError::Disabled { key } if key.contains(&disabled.key_id)), "{error:?}");
    let error = handle.sign_digest(&[7; 32]).await.expect_err("an open handle cannot sign with a disabled key");
    assert!(matches!(error, BackendError::Disabled { .. }), "{error:?}");
    let description = backend.describe_key(&key_ref(&disabled.key_id)).await.expect("describe");
    assert_eq!(description.state, KeyState::Disabled);
    backend.enable_key(&key_ref(&disabled.key_id)).await.expect("enable");
    assert!(handle.sign_digest(&[7; 32]).await.is_ok(), "signs again once enabled");

    let doomed = backend.create_key(&CreateKeyRequest::new()).await.expect("create");
    backend.schedule_key_deletion(&key_ref(&doomed.key_id), 7).await.expect("schedule deletion");
    let error = open(doomed.key_id.clone()).await.expect_err("pending deletion");
    assert!(matches!(&error, BackendError::PendingDeletion { key } if *key == doomed.key_id), "{error:?}");
    let error = backend.sign_digest(&key_ref(&doomed.key_id), &[7; 32]).await.expect_err("sign");
    assert!(matches!(error, BackendError::PendingDeletion { .. }), "{error:?}");
    let description = backend.describe_key(&key_ref(&doomed.key_id)).await.expect("describe");
    assert_eq!(description.state, KeyState::PendingDeletion);
}

/// Creating a key whose alias is taken fails with [`BackendError::Incomplete`] naming the new key,
/// which exists; and moving an alias makes it name the new key.
pub async fn alias_failures_leave_no_orphan(backend: Arc<dyn KeyBackend>) {
    let alias = format!("alias/{}", unique("contract-taken"));
    let first = backend.create_key(&CreateKeyRequest::new().alias(alias.clone())).await.expect("create");
    let error = backend.create_key(&CreateKeyRequest::new().alias(alias.clone())).await.expect_err("alias taken");
    let BackendError::Incomplete { key_id, source, .. } = &error else { panic!("expected Incomplete, got {error:?}") };
    assert!(matches!(**source, BackendError::AliasExists { .. }), "{source:?}");
    assert!(error.to_string().contains(key_id.as_str()));
    let orphan = backend.describe_key(&key_ref(key_id)).await.expect("the named key exists");
    assert_eq!(orphan.state, KeyState::Enabled);

    backend.set_alias(&alias, &key_ref(key_id)).await.expect("move the alias");
    let moved = backend.describe_key(&key_ref(&alias)).await.expect("describe by alias");
    assert_eq!(&moved.key_id, key_id);
    assert_ne!(moved.key_id, first.key_id);
}

/// Defines one `#[tokio::test]` per contract check for a backend made by `$factory`, an async
/// expression of type `Option<Arc<dyn KeyBackend>>` (`None` skips the test).
#[macro_export]
macro_rules! contract_tests {
    ($factory:expr) => {
        $crate::contract_tests!(@each $factory;
            create_with_alias_and_tags,
            resolves_every_reference_form,
            signs_random_digests,
            lists_by_tag,
            errors_name_the_key,
            alias_failures_leave_no_orphan,
        );
    };
    (@each $factory:expr; $($check:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend: ::core::option::Option<::std::sync::Arc<dyn $crate::KeyBackend>> = $factory.await;
                if let ::core::option::Option::Some(backend) = backend {
                    $crate::contract::$check(backend).await;
                }
            }
        )+
    };
}
