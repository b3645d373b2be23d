//! Property tests: random keys and digests signed with k256 and handed over as a KMS would (DER, high
//! or low s) always come out as a verified Ethereum signature of the signer's address; encodings round
//! trip; mutated DER is rejected or is the canonical encoding of what it parses to; a precomputed key
//! gives the same signatures and errors as the plain path.

use ethkms_core::k256::ecdsa::{Signature as K256Signature, SigningKey, VerifyingKey};
use ethkms_core::{Address, EcdsaSignature, ErrorKind, PrecomputedKey, PublicKey, eip191_hash_message, keccak256};
use proptest::prelude::*;

fn signing_key() -> impl Strategy<Value = SigningKey> {
    any::<[u8; 32]>().prop_filter_map("not a valid scalar", |bytes| SigningKey::from_slice(&bytes).ok())
}

fn public_key(signing_key: &SigningKey) -> PublicKey {
    PublicKey::from_affine(*signing_key.verifying_key().as_affine())
}

/// The k256 signature and its high-s twin, as KMS returns either.
fn both_forms(signing_key: &SigningKey, digest: &[u8; 32]) -> (K256Signature, K256Signature) {
    let (low, _) = signing_key.sign_prehash_recoverable(digest).unwrap();
    let (r, s) = low.split_scalars();
    let high = K256Signature::from_scalars(r, -*s).unwrap();
    (low, high)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { index: usize, mask: u8 },
    Insert { index: usize, byte: u8 },
    Delete { index: usize },
    Truncate { length: usize },
    Append { byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(index, mask)| Mutation::Flip { index, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(index, byte)| Mutation::Insert { index, byte }),
        any::<usize>().prop_map(|index| Mutation::Delete { index }),
        any::<usize>().prop_map(|length| Mutation::Truncate { length }),
        any::<u8>().prop_map(|byte| Mutation::Append { byte }),
    ]
}

fn apply(der: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut out = der.to_vec();
    match *mutation {
        Mutation::Flip { index, mask } => out[index % der.len()] ^= mask,
        Mutation::Insert { index, byte } => out.insert(index % (der.len() + 1), byte),
        Mutation::Delete { index } => {
            out.remove(index % der.len());
        }
        Mutation::Truncate { length } => out.truncate(length % der.len()),
        Mutation::Append { byte } => out.push(byte),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn kms_der_always_yields_the_signers_address(key in signing_key(), digest in any::<[u8; 32]>()) {
        let public = public_key(&key);
        let (low, high) = both_forms(&key, &digest);
        let (_, expected_id) = key.sign_prehash_recoverable(&digest).unwrap();
        let from_low = ethkms_core::Signature::from_kms_der(low.to_der().as_bytes(), &digest, &public).unwrap();
        let from_high = ethkms_core::Signature::from_kms_der(high.to_der().as_bytes(), &digest, &public).unwrap();
        prop_assert_eq!(from_low, from_high);
        prop_assert_eq!(from_low.y_parity(), expected_id.is_y_odd());
        prop_assert_eq!(from_low.s(), <[u8; 32]>::from(low.s().to_bytes()));
        prop_assert_eq!(from_low.recover_address(&digest).unwrap(), public.address());
        let round_trip = ethkms_core::Signature::from_bytes(&from_low.to_bytes()).unwrap();
        prop_assert_eq!(round_trip, from_low);
    }

    #[test]
    fn another_digest_or_key_never_converts(
        key in signing_key(), other in signing_key(), digest in any::<[u8; 32]>(), other_digest in any::<[u8; 32]>()
    ) {
        prop_assume!(digest != other_digest && key != other);
        let (low, high) = both_forms(&key, &digest);
        let (low_der, high_der) = (low.to_der(), high.to_der());
        for der in [&low_der, &high_der] {
            let wrong_digest = ethkms_core::Signature::from_kms_der(der.as_bytes(), &other_digest, &public_key(&key));
            prop_assert_eq!(wrong_digest.unwrap_err().kind(), ErrorKind::VerificationFailed);
            let wrong_key = ethkms_core::Signature::from_kms_der(der.as_bytes(), &digest, &public_key(&other));
            prop_assert_eq!(wrong_key.unwrap_err().kind(), ErrorKind::VerificationFailed);
        }
    }

    #[test]
    fn precomputed_keys_give_the_same_signatures_and_errors(
        key in signing_key(), other in signing_key(), digest in any::<[u8; 32]>(), other_digest in any::<[u8; 32]>()
    ) {
        let signer = PrecomputedKey::new(public_key(&key));
        let stranger = PrecomputedKey::new(public_key(&other));
        let (low, high) = both_forms(&key, &digest);
        for der in [low.to_der(), high.to_der()] {
            for (digest, precomputed) in [(&digest, &signer), (&other_digest, &signer), (&digest, &stranger)] {
                let plain = ethkms_core::Signature::from_kms_der(der.as_bytes(), digest, precomputed.public_key());
                let fast = ethkms_core::Signature::from_kms_der_precomputed(der.as_bytes(), digest, precomputed);
                prop_assert_eq!(plain, fast);
            }
        }
    }

    #[test]
    fn der_round_trips(key in signing_key(), digest in any::<[u8; 32]>()) {
        let (low, high) = both_forms(&key, &digest);
        for signature in [low, high] {
            let der = signature.to_der();
            let parsed = EcdsaSignature::from_der(der.as_bytes()).unwrap();
            let reencoded = parsed.to_der();
            prop_assert_eq!(reencoded.as_bytes(), der.as_bytes());
            prop_assert_eq!(parsed.to_fixed_bytes(), <[u8; 64]>::from(signature.to_bytes()));
        }
    }

    #[test]
    fn mutated_der_is_rejected_or_canonical(
        key in signing_key(), digest in any::<[u8; 32]>(), high_s in any::<bool>(), mutation in mutation()
    ) {
        let (low, high) = both_forms(&key, &digest);
        let original = if high_s { high } else { low };
        let der = original.to_der();
        let mutated = apply(der.as_bytes(), &mutation);
        let ours = EcdsaSignature::from_der(&mutated);
        // k256's DER decoder (the `der` crate) is strict too: the two must agree.
        prop_assert_eq!(ours.is_ok(), K256Signature::from_der(&mutated).is_ok(), "{:02x?}", mutated);
        if let Ok(parsed) = ours {
            // Whatever is accepted is the one canonical encoding of what it parses to…
            let reencoded = parsed.to_der();
            prop_assert_eq!(reencoded.as_bytes(), &mutated[..]);
            let same_value = parsed.to_fixed_bytes() == <[u8; 64]>::from(original.to_bytes());
            // …so the same (r, s) only ever comes from the same bytes, and another (r, s) does not verify.
            prop_assert_eq!(same_value, mutated == der.as_bytes());
            if !same_value {
                prop_assert!(parsed.verify_prehash(&public_key(&key), &digest).is_err());
            }
        }
    }

    #[test]
    fn spki_round_trips_both_point_encodings(key in signing_key()) {
        let public = public_key(&key);
        prop_assert_eq!(PublicKey::from_spki_der(&public.to_spki_der()).unwrap(), public);
        // A compressed-point SPKI: same algorithm identifier, 33-byte BIT STRING.
        let mut compressed = vec![0x30, 0x36, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
            0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a, 0x03, 0x22, 0x00];
        compressed.extend_from_slice(&public.to_compressed());
        prop_assert_eq!(PublicKey::from_spki_der(&compressed).unwrap(), public);
        let verifying = VerifyingKey::from_sec1_bytes(&public.to_uncompressed()).unwrap();
        prop_assert_eq!(&verifying, key.verifying_key());
        let uncompressed = public.to_uncompressed();
        prop_assert_eq!(public.address(), Address::from_uncompressed_point(&uncompressed));
        let (address, hash) = (public.address(), keccak256(&uncompressed[1..]));
        prop_assert_eq!(&address.as_bytes()[..], &hash[12..]);
    }

    #[test]
    fn checksum_text_round_trips(bytes in any::<[u8; 20]>()) {
        let address = Address(bytes);
        let text = address.to_string();
        prop_assert_eq!(text.parse::<Address>().unwrap(), address);
        prop_assert_eq!(text.to_lowercase().parse::<Address>().unwrap(), address);
    }

    #[test]
    fn eip191_is_keccak_of_the_prefixed_message(message in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut prefixed = format!("\x19Ethereum Signed Message:\n{}", message.len()).into_bytes();
        prefixed.extend_from_slice(&message);
        prop_assert_eq!(eip191_hash_message(&message), keccak256(&prefixed));
    }
}

/// The EIP-155 example key (private key 0x4646…46) has the address given in EIP-155.
#[test]
fn eip155_example_key_address() {
    let key = SigningKey::from_slice(&[0x46; 32]).unwrap();
    assert_eq!(public_key(&key).address().to_string(), "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F");
}

/// Foreign key types named in the error, as a KMS returns them for other key specs.
#[test]
fn other_key_types_are_named() {
    use ethkms_core::{Curve, KeyAlgorithm};
    // ECC_NIST_P256: id-ecPublicKey with prime256v1 and a 65-byte point (the point need not be parsed).
    let mut p256 = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    p256.extend_from_slice(&[0x11; 64]);
    let error = PublicKey::from_spki_der(&p256).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnsupportedCurve(Curve::P256));
    assert!(error.to_string().contains("ECC_NIST_P256"), "{error}");
    // RSA: rsaEncryption with NULL parameters and a (tiny, fake) key BIT STRING.
    let rsa = [
        0x30, 0x14, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x03,
        0x03, 0x00, 0x30, 0x00,
    ];
    let error = PublicKey::from_spki_der(&rsa).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::UnsupportedAlgorithm(KeyAlgorithm::Rsa));
    assert!(error.to_string().contains("RSA"), "{error}");
    // Malformed DER: truncated.
    let error = PublicKey::from_spki_der(&p256[..40]).unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Spki(_)), "{error:?}");
    // Implicit curve parameters (NULL) instead of a named curve.
    let implicit = [
        0x30, 0x14, 0x30, 0x0b, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x05, 0x00, 0x03, 0x05, 0x00,
        0x04, 0x01, 0x02, 0x03,
    ];
    assert_eq!(PublicKey::from_spki_der(&implicit).unwrap_err().kind(), ErrorKind::CurveNotNamed);
}
