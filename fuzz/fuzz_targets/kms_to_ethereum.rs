//! The whole KMS path: SPKI + digest + DER signature → Ethereum signature. Never panics, anything
//! accepted is verified by k256 and recovers to the key's address, and a `PrecomputedKey` gives the same
//! signature or the same error as the plain path (its multiples are kept for the last key whose signature
//! was accepted).
//!
//! Input layout: one byte `n`, then `n` bytes of SubjectPublicKeyInfo, 32 bytes of digest, and the DER
//! signature in the rest.
#![no_main]

use std::sync::Mutex;

use ethkms_core::{PrecomputedKey, PublicKey};
use k256::ecdsa::{Signature as K256Signature, VerifyingKey, signature::hazmat::PrehashVerifier};

/// The last key's multiples: building them takes milliseconds, and inputs mostly share a few keys.
static PRECOMPUTED: Mutex<Option<PrecomputedKey>> = Mutex::new(None);

/// The conversion with `key`'s multiples precomputed, when they are kept already or `build` says they are
/// worth building (the plain path accepted the signature): building them for every mutated key would slow
/// the target a hundredfold.
fn precomputed(
    key: PublicKey,
    der: &[u8],
    digest: &[u8; 32],
    build: bool,
) -> Option<Result<ethkms_core::Signature, ethkms_core::Error>> {
    let mut last = PRECOMPUTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.as_ref().is_none_or(|precomputed| *precomputed.public_key() != key) {
        if !build {
            return None;
        }
        *last = Some(PrecomputedKey::new(key));
    }
    let precomputed = last.as_ref().expect("just set");
    Some(ethkms_core::Signature::from_kms_der_precomputed(der, digest, precomputed))
}

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
    let plain = ethkms_core::Signature::from_kms_der(der, digest, &key);
    if let Some(fast) = precomputed(key, der, digest, plain.is_ok()) {
        assert_eq!(plain, fast, "the precomputed path disagrees");
    }
    if let Ok(signature) = plain {
        let verifying_key = VerifyingKey::from_sec1_bytes(&key.to_uncompressed()).expect("a parsed key is valid");
        let k256_signature = K256Signature::from_scalars(signature.r(), signature.s()).expect("valid scalars");
        verifying_key.verify_prehash(digest, &k256_signature).expect("accepted signature must verify");
        assert_eq!(signature.recover_address(digest), Ok(key.address()));
    }
});
