//! Verification for a key that signs many times: multiples of the key and of the generator, computed
//! once, turn the double-scalar multiplication of every verification into about 66 point additions.
//!
//! Verifying `(r, s)` computes the nonce point `R = u1·G + u2·Q`. [`EcdsaSignature::to_ethereum`] does it
//! with k256's constant-time `lincomb`: about 256 doublings and 130 additions, with lookup tables built per
//! call (≈ 70 µs on a 2020s server core). Everything a verification handles is public — the key, the
//! digest, the signature — so it may take variable time; and a handle signs with one key again and again,
//! so multiples of that key can be computed once. A [`PrecomputedKey`] holds, for `P = Q` and (shared by
//! every key, computed on first use) `P = G`, the points `j · 256^i · P` for every byte position
//! `i` (0 to 31) and `j` from 1 to 128, plus `2^256 · P` (33 × 128 + 1 affine points, about 340 KB).
//! A scalar written in signed base-256 digits (each in −127 to 128, with a final carry) then costs one
//! mixed addition per non-zero digit; the verification is 2 × 33 additions, one inversion modulo `n` and
//! one field inversion (`cargo bench -p ethkms-core --bench parity`). Both inversions are variable-time
//! divsteps (`crate::inverse`); for the field one the sum is kept in coordinates of our own ([`sum`]).
//!
//! The result is the same point `R`, so everything after is unchanged: `x(R) mod n == r` is the
//! verification and the parity of `y(R)` is the recovery id. Tests compare both paths on random and
//! edge-case scalars, on every Wycheproof vector, and a fuzz target compares them on arbitrary input.
//!
//! Needs the `alloc` feature.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::group::Curve;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use once_cell::race::OnceBox;
use sum::{Affine, Sum};

use crate::error::Error;
use crate::ethereum::Signature;
use crate::key::PublicKey;
use crate::signature::EcdsaSignature;

mod sum;

/// Byte positions of a 256-bit scalar; one more window holds the final carry of the signed digits.
const BYTES: usize = 32;
/// The multiples kept per byte position: digits run from −127 to 128, so `1 · P` to `128 · P`.
const MULTIPLES: usize = 128;

/// The multiples of the generator, computed on first use and shared by every [`PrecomputedKey`].
static GENERATOR: OnceBox<Multiples> = OnceBox::new();

/// A public key with multiples of it computed once, for fast verification of its many signatures.
///
/// Verifies and converts exactly as [`EcdsaSignature::to_ethereum`] does, same results and same errors, in
/// about a quarter of the time (see the module documentation in the source). Building one takes about 2 ms
/// and 340 KB; the generator's multiples are built once per process, on first use. Worth it for a key
/// that signs more than a few dozen times; for one signature use the plain functions.
///
/// ```
/// use ethkms_core::{PrecomputedKey, PublicKey, Signature, eip191_hash_message};
/// use ethkms_core::k256::ecdsa::{SigningKey, signature::hazmat::PrehashSigner};
///
/// let signing_key = SigningKey::from_slice(&[7; 32]).expect("valid scalar");
/// let key = PublicKey::from_affine(*signing_key.verifying_key().as_affine());
/// let precomputed = PrecomputedKey::new(key);
///
/// let digest = eip191_hash_message(b"hello");
/// let (kms_signature, _): (ethkms_core::k256::ecdsa::Signature, _) = signing_key.sign_prehash(&digest).expect("signs");
/// let der = kms_signature.to_der();
///
/// let fast = Signature::from_kms_der_precomputed(der.as_bytes(), &digest, &precomputed)?;
/// assert_eq!(fast, Signature::from_kms_der(der.as_bytes(), &digest, &key)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
pub struct PrecomputedKey {
    key: PublicKey,
    multiples: Multiples,
}

impl PrecomputedKey {
    /// Computes the multiples of `key` (and, the first time in a process, those of the generator).
    #[must_use]
    pub fn new(key: PublicKey) -> Self {
        generator();
        let multiples = Multiples::new(ProjectivePoint::from(*key.as_affine()));
        Self { key, multiples }
    }

    /// The public key.
    #[must_use]
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// `u1·G + u2·Q`.
    pub(crate) fn combine(&self, u1: &Scalar, u2: &Scalar) -> AffinePoint {
        let mut sum = Sum::IDENTITY;
        generator().add_multiple(&mut sum, u1);
        self.multiples.add_multiple(&mut sum, u2);
        sum.to_affine()
    }
}

impl fmt::Debug for PrecomputedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrecomputedKey").field("address", &self.key.address()).finish_non_exhaustive()
    }
}

impl EcdsaSignature {
    /// [`EcdsaSignature::verify_prehash`] with the multiples of `key` precomputed.
    ///
    /// # Errors
    /// [`crate::ErrorKind::VerificationFailed`] if it does not verify.
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn verify_prehash_precomputed(&self, key: &PrecomputedKey, digest: &[u8; 32]) -> Result<(), Error> {
        self.nonce_point_by(digest, |u1, u2| key.combine(u1, u2)).map(|_| ())
    }

    /// [`EcdsaSignature::to_ethereum`] with the multiples of `key` precomputed: the same signature or the
    /// same error.
    ///
    /// # Errors
    /// As [`EcdsaSignature::to_ethereum`].
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn to_ethereum_precomputed(&self, key: &PrecomputedKey, digest: &[u8; 32]) -> Result<Signature, Error> {
        self.ethereum_by(digest, |u1, u2| key.combine(u1, u2))
    }
}

impl Signature {
    /// [`Signature::from_kms_der`] with the multiples of `key` precomputed: the same signature or the same
    /// error.
    ///
    /// # Errors
    /// As [`Signature::from_kms_der`].
    #[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
    pub fn from_kms_der_precomputed(der: &[u8], digest: &[u8; 32], key: &PrecomputedKey) -> Result<Self, Error> {
        EcdsaSignature::from_der(der)?.to_ethereum_precomputed(key, digest)
    }
}

/// The generator's multiples, built on first use.
fn generator() -> &'static Multiples {
    GENERATOR.get_or_init(|| Box::new(Multiples::new(ProjectivePoint::GENERATOR)))
}

/// `j · 256^i · P` at `i · MULTIPLES + j - 1` for `i` in `0..BYTES` and `j` in `1..=MULTIPLES`, then
/// `2^256 · P` (the carry out of the top byte).
struct Multiples {
    points: Box<[Affine]>,
}

impl Multiples {
    fn new(point: ProjectivePoint) -> Self {
        let mut projective = Vec::with_capacity(BYTES * MULTIPLES + 1);
        let mut base = point;
        for _ in 0..BYTES {
            let mut multiple = base;
            for _ in 0..MULTIPLES {
                projective.push(multiple);
                multiple += base;
            }
            for _ in 0..8 {
                base = base.double();
            }
        }
        projective.push(base);
        // One field inversion for all of them (Montgomery's trick). None is the identity: P has prime
        // order n, and no j · 256^i with j ≤ 128 is a multiple of n.
        let mut points = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut points);
        let points: Box<[Affine]> = points.iter().filter_map(Affine::new).collect();
        // No point was the identity (see above), so none was left out and the indices hold.
        debug_assert_eq!(points.len(), BYTES * MULTIPLES + 1);
        Self { points }
    }

    /// Adds `scalar · P` to `sum`: one mixed addition per non-zero signed digit.
    fn add_multiple(&self, sum: &mut Sum, scalar: &Scalar) {
        let digits = signed_digits(scalar);
        for (position, digit) in digits.iter().take(BYTES).enumerate() {
            let magnitude = usize::from(digit.unsigned_abs());
            if magnitude == 0 {
                continue;
            }
            // In bounds: position < BYTES and 1 ≤ magnitude ≤ MULTIPLES.
            let Some(point) = self.points.get(position * MULTIPLES + magnitude - 1) else { continue };
            if *digit > 0 {
                sum.add(point);
            } else {
                sum.sub(point);
            }
        }
        if digits[BYTES] != 0 {
            if let Some(carry) = self.points.last() {
                sum.add(carry);
            }
        }
    }
}

/// `scalar = Σ digits[i] · 256^i` with every digit in −127..=128 (the last, the carry, 0 or 1).
fn signed_digits(scalar: &Scalar) -> [i16; BYTES + 1] {
    let big_endian = scalar.to_repr();
    let mut digits = [0i16; BYTES + 1];
    let mut carry = 0i16;
    for (digit, byte) in digits.iter_mut().zip(big_endian.iter().rev()) {
        let value = i16::from(*byte) + carry;
        (*digit, carry) = if value > 128 { (value - 256, 1) } else { (value, 0) };
    }
    digits[BYTES] = carry;
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::U256;
    use k256::elliptic_curve::ops::{LinearCombination, Reduce};

    fn scalar(bytes: [u8; 32]) -> Scalar {
        <Scalar as Reduce<U256>>::reduce_bytes(&bytes.into())
    }

    /// Scalars whose digits carry, don't, and sit on every boundary.
    fn edge_scalars() -> Vec<Scalar> {
        let mut scalars = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, -Scalar::ONE - Scalar::ONE];
        for byte in [0x00, 0x01, 0x7f, 0x80, 0x81, 0xfe, 0xff] {
            scalars.push(scalar([byte; 32]));
            let mut single = [0u8; 32];
            single[31] = byte;
            scalars.push(scalar(single));
            let mut top = [0u8; 32];
            top[0] = byte;
            scalars.push(scalar(top));
        }
        scalars
    }

    #[test]
    fn digits_add_up_to_the_scalar_and_stay_in_range() {
        for value in edge_scalars() {
            let digits = signed_digits(&value);
            let mut sum = Scalar::ZERO;
            let mut power = Scalar::ONE;
            for digit in digits {
                assert!((-127..=128).contains(&digit), "{digit}");
                let magnitude = Scalar::from(u64::from(digit.unsigned_abs()));
                sum += if digit < 0 { -(magnitude * power) } else { magnitude * power };
                power *= Scalar::from(256u64);
            }
            assert_eq!(sum, value);
            assert!(digits[BYTES] == 0 || digits[BYTES] == 1);
        }
    }

    #[test]
    fn the_sums_equal_lincomb_on_edge_scalars() {
        let key = ProjectivePoint::GENERATOR * scalar([0x5a; 32]);
        let precomputed = PrecomputedKey::new(PublicKey::from_affine(key.to_affine()));
        for u1 in edge_scalars() {
            for u2 in edge_scalars() {
                let expected = ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &u1, &key, &u2);
                assert_eq!(precomputed.combine(&u1, &u2), expected.to_affine());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_sums_equal_lincomb_on_random_scalars(
            key in proptest::prelude::any::<[u8; 32]>(),
            u1 in proptest::prelude::any::<[u8; 32]>(),
            u2 in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let key = ProjectivePoint::GENERATOR * scalar(key);
            proptest::prop_assume!(key != ProjectivePoint::IDENTITY);
            let precomputed = PrecomputedKey::new(PublicKey::from_affine(key.to_affine()));
            let (u1, u2) = (scalar(u1), scalar(u2));
            let expected = ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &u1, &key, &u2);
            proptest::prop_assert_eq!(precomputed.combine(&u1, &u2), expected.to_affine());
        }
    }

    #[test]
    fn the_carry_point_is_two_to_the_256_times_p() {
        let two_to_the_128 = Scalar::from_u128(1 << 127) * Scalar::from(2u64);
        let expected = ProjectivePoint::GENERATOR * (two_to_the_128 * two_to_the_128);
        let mut carry = Sum::IDENTITY;
        carry.add(generator().points.last().unwrap());
        assert_eq!(carry.to_affine(), expected.to_affine());
        assert_eq!(generator().points.len(), BYTES * MULTIPLES + 1);
    }
}
