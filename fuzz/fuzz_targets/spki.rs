//! SubjectPublicKeyInfo parsing: never panics, and any key it accepts re-encodes and parses to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = ethkms_core::PublicKey::from_spki_der(data) {
        assert_eq!(ethkms_core::PublicKey::from_spki_der(&key.to_spki_der()), Ok(key));
    }
});
