//! What the SoftHSM2 tests share: a logged-in session of the test's own on the token (to look at, and
//! meddle with, what the backend made), key references, and `CKA_ID`s in hexadecimal.

#![allow(dead_code)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ethkms_backend::KeyRef;
use ethkms_test_support::pkcs11::{PIN_VARIABLE, SoftHsm};

/// A session of the test's own on the token, logged in: to look at what the backend made.
pub(crate) fn raw_session(hsm: &SoftHsm) -> Session {
    let pkcs11 = Pkcs11::new(&hsm.module).unwrap();
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => panic!("C_Initialize: {error}"),
    }
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|slot| pkcs11.get_token_info(*slot).unwrap().label() == hsm.token)
        .expect("the test token");
    let session = pkcs11.open_rw_session(slot).unwrap();
    let pin = AuthPin::new(std::env::var(PIN_VARIABLE).unwrap().into_boxed_str());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(error) => panic!("C_Login: {error}"),
    }
    session
}

pub(crate) fn key_ref(text: &str) -> KeyRef {
    KeyRef::new(text).unwrap()
}

/// The object of `class` whose `CKA_ID` is the one the key id `key_id` names.
pub(crate) fn object(session: &Session, class: ObjectClass, key_id: &str) -> ObjectHandle {
    let found = session.find_objects(&[Attribute::Class(class), Attribute::Id(hex_id(key_id))]).unwrap();
    assert_eq!(found.len(), 1, "one object of class {class} for {key_id}");
    found[0]
}

/// The `CKA_ID` a key id names.
pub(crate) fn hex_id(key_id: &str) -> Vec<u8> {
    let digits: String = key_id.chars().filter(|c| *c != '-').collect();
    (0..digits.len()).step_by(2).map(|index| u8::from_str_radix(&digits[index..index + 2], 16).unwrap()).collect()
}

/// Bytes in lowercase hexadecimal: the key id of a `CKA_ID` that is not 16 bytes long.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Held by a test of a binary whose tests all meddle with the token through sessions of their own: one at
/// a time, also under `cargo test`'s threads (SoftHSM2 answers `CKR_GENERAL_ERROR`, or even that the user
/// PIN is not initialised, to a login while another session writes the token).
pub(crate) async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TOKEN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TOKEN.lock().await
}
