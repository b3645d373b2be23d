//! Per-signature cost of turning a KMS DER signature into an Ethereum signature, side by side with
//! the usual ways of doing it and with one bare ECDSA verification.
//!
//! - `ethkms_core`: strict DER parse + low-s normalisation + one double-scalar multiplication that
//!   both verifies and yields the parity (`Signature::from_kms_der`).
//! - `ethkms_core_precomputed`: the same with a `PrecomputedKey` (multiples of the key computed once, as a
//!   `KeyHandle` does for a key that signs again).
//! - `recover_v27_then_v28`: the approach of public tutorials: parse, normalise, recover the public key
//!   with v = 27, compare its address, else recover with v = 28.
//! - `trial_recovery`: k256's `RecoveryId::trial_recovery_from_prehash` (what alloy's AWS signer does).
//! - `verify_prehash`: one bare k256 `verify_prehash` on an already-parsed signature: the floor.
//!
//! Every input is a real signature from a distinct key, half of them high-s as KMS returns them.
//! `cargo xtask bench` runs this and prints the ratios.

use criterion::{Criterion, criterion_group, criterion_main};
use ethkms_core::k256::ecdsa::signature::hazmat::PrehashVerifier;
use ethkms_core::k256::ecdsa::{RecoveryId, Signature as K256Signature, SigningKey, VerifyingKey};
use ethkms_core::{Address, PrecomputedKey, PublicKey, Signature};
use std::hint::black_box;

struct Case {
    key: PublicKey,
    precomputed: PrecomputedKey,
    verifying_key: VerifyingKey,
    digest: [u8; 32],
    der: Vec<u8>,
    parsed: K256Signature,
}

fn cases() -> Vec<Case> {
    (1..=64u8)
        .map(|seed| {
            let signing_key = SigningKey::from_slice(&[seed; 32]).expect("valid scalar");
            let digest = ethkms_core::keccak256(&[seed, 0xd1]);
            let (low, _) = signing_key.sign_prehash_recoverable(&digest).expect("signs");
            let (r, s) = low.split_scalars();
            let kms = if seed % 2 == 0 { K256Signature::from_scalars(r, -*s).expect("valid") } else { low };
            Case {
                key: PublicKey::from_affine(*signing_key.verifying_key().as_affine()),
                precomputed: PrecomputedKey::new(PublicKey::from_affine(*signing_key.verifying_key().as_affine())),
                verifying_key: *signing_key.verifying_key(),
                digest,
                der: kms.to_der().as_bytes().to_vec(),
                // k256's verify_prehash accepts only low s: the floor verifies the normalised form.
                parsed: low,
            }
        })
        .collect()
}

fn address_of(key: &VerifyingKey) -> Address {
    Address::from_uncompressed_point(key.to_encoded_point(false).as_bytes())
}

/// Parse with k256, normalise, recover with v = 27 and compare addresses, else v = 28.
fn recover_v27_then_v28(case: &Case) -> Option<(K256Signature, RecoveryId)> {
    let signature = K256Signature::from_der(&case.der).ok()?;
    let signature = signature.normalize_s().unwrap_or(signature);
    let expected = case.key.address();
    for parity in [false, true] {
        let id = RecoveryId::new(parity, false);
        if let Ok(recovered) = VerifyingKey::recover_from_prehash(&case.digest, &signature, id)
            && address_of(&recovered) == expected
        {
            return Some((signature, id));
        }
    }
    None
}

/// Parse with k256, normalise, `RecoveryId::trial_recovery_from_prehash`.
fn trial_recovery(case: &Case) -> Option<(K256Signature, RecoveryId)> {
    let signature = K256Signature::from_der(&case.der).ok()?;
    let signature = signature.normalize_s().unwrap_or(signature);
    let id = RecoveryId::trial_recovery_from_prehash(&case.verifying_key, &case.digest, &signature).ok()?;
    Some((signature, id))
}

fn parity(criterion: &mut Criterion) {
    let cases = cases();
    // All five agree on every case before anything is timed.
    for case in &cases {
        let ours = Signature::from_kms_der(&case.der, &case.digest, &case.key).expect("converts");
        let precomputed = Signature::from_kms_der_precomputed(&case.der, &case.digest, &case.precomputed);
        assert_eq!(precomputed, Ok(ours));
        for (signature, id) in [recover_v27_then_v28(case), trial_recovery(case)].into_iter().flatten() {
            assert_eq!(<[u8; 32]>::from(signature.s().to_bytes()), ours.s());
            assert_eq!(id.is_y_odd(), ours.y_parity());
        }
        case.verifying_key.verify_prehash(&case.digest, &case.parsed).expect("verifies");
    }

    let mut group = criterion.benchmark_group("kms_signature_to_ethereum");
    let mut index = 0;
    let mut next = || {
        index = (index + 1) % cases.len();
        &cases[index]
    };
    group.bench_function("ethkms_core", |b| {
        b.iter(|| {
            let case = next();
            Signature::from_kms_der(black_box(&case.der), &case.digest, &case.key)
        });
    });
    group.bench_function("ethkms_core_precomputed", |b| {
        b.iter(|| {
            let case = next();
            Signature::from_kms_der_precomputed(black_box(&case.der), &case.digest, &case.precomputed)
        });
    });
    group.bench_function("recover_v27_then_v28", |b| {
        b.iter(|| recover_v27_then_v28(black_box(next())));
    });
    group.bench_function("trial_recovery", |b| {
        b.iter(|| trial_recovery(black_box(next())));
    });
    group.bench_function("verify_prehash", |b| {
        b.iter(|| {
            let case = next();
            case.verifying_key.verify_prehash(black_box(&case.digest), black_box(&case.parsed))
        });
    });
    group.finish();
}

criterion_group!(benches, parity);
criterion_main!(benches);
