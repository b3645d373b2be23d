//! The backend keeps its login: when the token logs the process out (here: `C_Logout` through a session of
//! the test's own, as another library of the process could), the next request logs in again and succeeds —
//! signing with a cached key handle, finding a key by its label, listing, creating.
//!
//! A test binary of its own: a PKCS#11 login belongs to the whole process, and logging it out would fail
//! the other tests' own sessions.

use cryptoki::session::SessionState;
use ethkms_backend::{CreateKeyRequest, KeyFilter, KeyHandle};
use ethkms_core::keccak256;
use ethkms_test_support::pkcs11::softhsm;

mod common;

use common::{key_ref, raw_session};

#[tokio::test]
async fn a_lost_login_is_recovered() {
    let Some(hsm) = softhsm() else { return };
    let backend = hsm.backend().await;
    let tag = ethkms_test_support::unique("relogin");
    let alias = format!("alias/{tag}");
    let info = backend.create_key(&CreateKeyRequest::new().alias(&alias).tag("relogin", &tag)).await.unwrap();
    let by_id = key_ref(&info.key_id);
    let handle = KeyHandle::open(backend.clone(), by_id.clone()).await.unwrap();
    handle.sign_digest(&[1; 32]).await.unwrap();

    let session = raw_session(&hsm);
    let logged_in = || matches!(session.get_session_info().unwrap().session_state(), SessionState::RwUser);
    let log_out = || {
        session.logout().unwrap();
        assert!(!logged_in(), "C_Logout did not log the process out");
    };

    // Signing with the cached handle: the token no longer knows it, nor the key, until the login is back.
    log_out();
    let digest = keccak256(b"after C_Logout");
    let signature = backend.sign_digest(&by_id, &digest).await.unwrap();
    let signature = ethkms_core::EcdsaSignature::from_der(&signature).unwrap();
    signature.verify_prehash(handle.public_key(), &digest).unwrap();
    assert!(logged_in(), "the backend logged the process in again");

    // Finding the key by its label: the search comes back empty until then.
    log_out();
    let description = backend.describe_key(&key_ref(&alias)).await.unwrap();
    assert_eq!(description.key_id, info.key_id);

    log_out();
    let listed = backend.list_keys(&KeyFilter::all().tag("relogin", &tag)).await.unwrap();
    assert_eq!(listed.iter().map(|key| key.key_id.as_str()).collect::<Vec<_>>(), [info.key_id.as_str()]);

    log_out();
    let created = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    log_out();
    let other = KeyHandle::open(backend.clone(), key_ref(&created.key_id)).await.unwrap();
    let digest = [9; 32];
    assert_eq!(other.sign_digest(&digest).await.unwrap().recover_address(&digest).unwrap(), other.address());
    assert!(logged_in());
}
