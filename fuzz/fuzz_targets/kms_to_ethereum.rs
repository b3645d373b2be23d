//! The whole KMS path: SPKI + digest + DER signature → Ethereum signature. Never panics, and anything
//! accepted is verified by k256 and recovers to the key's address.
//!
//! Input layout: one byte `n`, then `n` bytes of SubjectPublicKeyInfo, 32 bytes of digest, and the DER
//! signature in the rest.
#![no_main]

use k256::ecdsa::{Signature as K256Signature, VerifyingKey, signature::hazmat::PrehashVerifier};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&spki_length, rest)) = data.split_first() else {
        return;
    };
    let Some((spki, rest)) = rest.split_at_checked(usize::from(spki_length)) else {
        return;
    };
    let Some((digest, der)) = rest.split_first_chunk::<32>() else {
        return;
    };
    let Ok(key) = ethkms_core::PublicKey::from_spki_der(spki) else {
        return;
    };
    if let Ok(signature) = ethkms_core::Signature::from_kms_der(der, digest, &key) {
        let verifying_key = VerifyingKey::from_sec1_bytes(&key.to_uncompressed()).expect("a parsed key is valid");
        let k256_signature = K256Signature::from_scalars(signature.r(), signature.s()).expect("valid scalars");
        verifying_key.verify_prehash(digest, &k256_signature).expect("accepted signature must verify");
        assert_eq!(signature.recover_address(digest), Ok(key.address()));
    }
});
