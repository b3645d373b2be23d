//! Every Wycheproof ECDSA secp256k1 SHA-256 vector, run through ethkms-core.
//!
//! - `ecdsa_secp256k1_sha256_test.json`: DER signatures. Valid → parsed, verified, and converted to an
//!   Ethereum signature that k256's own recovery maps back to the key. Invalid → rejected by the DER
//!   parser or by verification.
//! - `ecdsa_secp256k1_sha256_bitcoin_test.json`: the same plus the low-s rule, checked with
//!   [`EcdsaSignature::is_low_s`] (what Ethereum's EIP-2 requires of a transaction signature).
//! - `ecdsa_secp256k1_sha256_p1363_test.json`: fixed-width `r ‖ s`.
//!
//! Every case also goes through a [`PrecomputedKey`], which must give the same verdict, the same Ethereum
//! signature and the same error as the plain path.
//!
//! None of the files has `acceptable` cases; the test fails if one appears, so that it is looked at.
//! Valid signatures whose nonce point has `x >= n` verify, but have no Ethereum recovery id: the
//! conversion must reject exactly those with [`ErrorKind::UnrepresentableRecoveryId`], and the test
//! checks independently (with k256's recovery) that no 1-bit recovery id recovers the key for them.

use ethkms_core::k256::ecdsa::{RecoveryId, Signature as K256Signature, VerifyingKey};
use ethkms_core::{EcdsaSignature, Error, ErrorKind, PrecomputedKey, PublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    number_of_tests: usize,
    test_groups: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    public_key_der: String,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    tc_id: usize,
    comment: String,
    msg: String,
    sig: String,
    result: Expected,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Valid,
    Invalid,
    Acceptable,
}

#[derive(Clone, Copy)]
enum Encoding {
    Der,
    DerLowS,
    Fixed,
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn load(name: &str) -> File {
    let path = format!("{}/tests/data/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {path}: {error}"));
    serde_json::from_str(&text).unwrap()
}

/// What ethkms-core concludes about one case.
fn check(encoding: Encoding, key: &PublicKey, digest: &[u8; 32], sig: &[u8]) -> Result<EcdsaSignature, Error> {
    let signature = match encoding {
        Encoding::Der | Encoding::DerLowS => EcdsaSignature::from_der(sig)?,
        Encoding::Fixed => EcdsaSignature::from_fixed_bytes(sig)?,
    };
    if matches!(encoding, Encoding::DerLowS) && !signature.is_low_s() {
        return Err(Error::new(ErrorKind::HighS));
    }
    signature.verify_prehash(key, digest)?;
    Ok(signature)
}

/// The precomputed key reaches the same verdict and the same Ethereum signature (or error) as the plain path.
fn same_with_precomputed(encoding: Encoding, key: &PrecomputedKey, digest: &[u8; 32], sig: &[u8], id: &str) {
    let parsed = match encoding {
        Encoding::Der | Encoding::DerLowS => EcdsaSignature::from_der(sig),
        Encoding::Fixed => EcdsaSignature::from_fixed_bytes(sig),
    };
    if let Ok(signature) = parsed {
        let (plain, fast) =
            (signature.verify_prehash(key.public_key(), digest), signature.verify_prehash_precomputed(key, digest));
        assert_eq!(plain, fast, "{id}: the precomputed verification disagrees");
        let (plain, fast) =
            (signature.to_ethereum(key.public_key(), digest), signature.to_ethereum_precomputed(key, digest));
        assert_eq!(plain, fast, "{id}: the precomputed conversion disagrees");
    }
}

#[derive(Default, Debug)]
struct Tally {
    valid: usize,
    invalid: usize,
    unrepresentable: usize,
}

fn run(name: &str, encoding: Encoding) -> Tally {
    let file = load(name);
    let mut tally = Tally::default();
    let mut seen = 0;
    for group in &file.test_groups {
        let key = PublicKey::from_spki_der(&hex(&group.public_key_der)).unwrap();
        let verifying_key = VerifyingKey::from_sec1_bytes(&key.to_uncompressed()).unwrap();
        let precomputed = PrecomputedKey::new(key);
        for case in &group.tests {
            seen += 1;
            let digest: [u8; 32] = Sha256::digest(hex(&case.msg)).into();
            let sig = hex(&case.sig);
            let id = format!("{name} #{} ({})", case.tc_id, case.comment);
            let outcome = check(encoding, &key, &digest, &sig);
            same_with_precomputed(encoding, &precomputed, &digest, &sig, &id);
            match case.result {
                Expected::Valid => {
                    let signature = outcome.unwrap_or_else(|error| panic!("{id}: valid but rejected: {error}"));
                    tally.valid += 1;
                    match signature.to_ethereum(&key, &digest) {
                        Ok(ethereum) => {
                            assert!(ethereum.to_ecdsa().is_low_s(), "{id}: not normalised");
                            assert_eq!(ethereum.recover_address(&digest).unwrap(), key.address(), "{id}");
                            // Independent check: k256's own recovery with our parity bit gives the key.
                            let k256_signature = K256Signature::from_scalars(ethereum.r(), ethereum.s()).unwrap();
                            let recovery_id = RecoveryId::new(ethereum.y_parity(), false);
                            let recovered =
                                VerifyingKey::recover_from_prehash(&digest, &k256_signature, recovery_id).unwrap();
                            assert_eq!(recovered, verifying_key, "{id}: k256 disagrees on the parity");
                        }
                        Err(error) => {
                            assert_eq!(error.kind(), ErrorKind::UnrepresentableRecoveryId, "{id}: {error}");
                            let normalized = signature.normalize_s();
                            let k256_signature =
                                K256Signature::from_scalars(normalized.r_bytes(), normalized.s_bytes()).unwrap();
                            for parity in [false, true] {
                                let recovered = VerifyingKey::recover_from_prehash(
                                    &digest,
                                    &k256_signature,
                                    RecoveryId::new(parity, false),
                                );
                                assert_ne!(recovered.ok(), Some(verifying_key), "{id}: a 1-bit id would do");
                            }
                            tally.unrepresentable += 1;
                        }
                    }
                }
                Expected::Invalid => {
                    assert!(outcome.is_err(), "{id}: invalid but accepted");
                    if let Ok(signature) = EcdsaSignature::from_der(&sig) {
                        assert!(
                            signature.to_ethereum(&key, &digest).is_err() || matches!(encoding, Encoding::DerLowS),
                            "{id}: invalid but converted"
                        );
                    }
                    tally.invalid += 1;
                }
                Expected::Acceptable => {
                    panic!("{id}: 'acceptable' case: decide and document how it is handled")
                }
            }
        }
    }
    assert_eq!(seen, file.number_of_tests, "{name}: not every case was run");
    eprintln!("{name}: {tally:?}");
    tally
}

#[test]
fn der_vectors() {
    let tally = run("ecdsa_secp256k1_sha256_test.json", Encoding::Der);
    assert_eq!((tally.valid, tally.invalid, tally.unrepresentable), (168, 308, 2));
}

#[test]
fn der_low_s_vectors() {
    let tally = run("ecdsa_secp256k1_sha256_bitcoin_test.json", Encoding::DerLowS);
    assert_eq!((tally.valid, tally.invalid, tally.unrepresentable), (162, 301, 1));
}

#[test]
fn fixed_width_vectors() {
    let tally = run("ecdsa_secp256k1_sha256_p1363_test.json", Encoding::Fixed);
    assert_eq!((tally.valid, tally.invalid, tally.unrepresentable), (167, 85, 2));
}

/// The DER file's malformed encodings must be rejected by the parser itself with a position, not
/// merely fail verification: every case whose signature k256's own DER decoder refuses.
#[test]
fn der_encoding_errors_carry_positions() {
    let file = load("ecdsa_secp256k1_sha256_test.json");
    let mut rejected = 0;
    for case in file.test_groups.iter().flat_map(|group| &group.tests) {
        let sig = hex(&case.sig);
        if K256Signature::from_der(&sig).is_err() {
            let error = EcdsaSignature::from_der(&sig)
                .expect_err(&format!("#{} ({}): k256 rejects the DER, we accept it", case.tc_id, case.comment));
            assert!(error.position().is_some(), "#{}: {error} has no position", case.tc_id);
            rejected += 1;
        }
    }
    assert!(rejected > 100, "only {rejected} malformed encodings found");
}
