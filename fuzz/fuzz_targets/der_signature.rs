//! Strict DER signature parsing: never panics; agrees with k256's DER decoder on what is valid; and
//! whatever it accepts is the one canonical encoding of the value it parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ours = ethkms_core::EcdsaSignature::from_der(data);
    assert_eq!(ours.is_ok(), k256::ecdsa::Signature::from_der(data).is_ok(), "disagreement on {data:02x?}");
    if let Ok(signature) = ours {
        assert_eq!(signature.to_der().as_bytes(), data);
    }
});
