//! Inverses of public values: scalars modulo the group order `n` (a signature's `s`, and `r` to recover a
//! key) and field elements modulo `p` (the `Z` of a sum of precomputed multiples, to make it affine), by
//! variable-time divsteps ([`divsteps`], libsecp256k1's algorithm) in ≈ 1 µs here, against ≈ 6.5 µs for
//! k256 0.13's variable-time scalar inversion (Stein's binary algorithm) and ≈ 5 µs for its constant-time
//! field exponentiation. Only for values that are not secret: how long it takes depends on the value.
//!
//! Every inverse is checked by one multiplication (`value · inverse = 1`, ≈ 15 ns); should a check ever
//! fail, k256 inverts instead, so that a fault in this module could cost time but never a wrong answer
//! (debug builds, and so every test of the crate, assert that it never does).

#[cfg(feature = "alloc")]
use k256::FieldElement;
use k256::Scalar;
use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::ops::Invert;

mod divsteps;

use divsteps::Modulus;

/// The order `n` of secp256k1's group, big-endian.
const ORDER_BYTES: [u8; 32] = hex32("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141");
/// The prime `p` of secp256k1's field, big-endian.
#[cfg(feature = "alloc")]
const PRIME_BYTES: [u8; 32] = hex32("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F");

static ORDER: Modulus = Modulus::new(&ORDER_BYTES);
#[cfg(feature = "alloc")]
static PRIME: Modulus = Modulus::new(&PRIME_BYTES);

/// 32 bytes from 64 hexadecimal digits (upper case), at compile time.
#[allow(clippy::panic, reason = "evaluated at compile time only: a bad digit fails the build")]
const fn hex32(digits: &str) -> [u8; 32] {
    const fn nibble(digit: u8) -> u8 {
        match digit {
            b'0'..=b'9' => digit - b'0',
            b'A'..=b'F' => digit - b'A' + 10,
            _ => panic!("not an upper-case hexadecimal digit"),
        }
    }
    let digits = digits.as_bytes();
    assert!(digits.len() == 64, "64 hexadecimal digits");
    let mut bytes = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        bytes[i] = nibble(digits[2 * i]) << 4 | nibble(digits[2 * i + 1]);
        i += 1;
    }
    bytes
}

/// `value⁻¹ mod n`, or `None` for zero (the only scalar without an inverse).
pub(crate) fn invert_public(value: &Scalar) -> Option<Scalar> {
    if bool::from(value.is_zero()) {
        return None;
    }
    let inverse: Option<Scalar> = divsteps::invert(&value.to_repr().into(), &ORDER)
        .and_then(|bytes| Scalar::from_repr(bytes.into()).into())
        .filter(|inverse| *inverse * value == Scalar::ONE);
    debug_assert!(inverse.is_some(), "the divsteps failed to invert a scalar");
    inverse.or_else(|| value.invert_vartime().into())
}

/// `value⁻¹ mod p`, or `None` for zero. For the sums of precomputed multiples.
#[cfg(feature = "alloc")]
pub(crate) fn invert_field_public(value: &FieldElement) -> Option<FieldElement> {
    let value = value.normalize();
    if bool::from(value.is_zero()) {
        return None;
    }
    let one = FieldElement::ONE.to_bytes();
    let inverse: Option<FieldElement> = divsteps::invert(&value.to_bytes().into(), &PRIME)
        .and_then(|bytes| FieldElement::from_bytes(&bytes.into()).into())
        .filter(|inverse: &FieldElement| (*inverse * value).normalize().to_bytes() == one);
    debug_assert!(inverse.is_some(), "the divsteps failed to invert a field element");
    inverse.or_else(|| value.invert().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(bytes: [u8; 32]) -> Scalar {
        Option::from(Scalar::from_repr(bytes.into())).unwrap()
    }

    /// `modulus − k` as big-endian bytes, for a small `k`.
    fn minus(modulus: [u8; 32], k: u8) -> [u8; 32] {
        let mut bytes = modulus;
        bytes[31] -= k;
        bytes
    }

    /// Edge values below either modulus: small numbers, powers of two, numbers just below the modulus.
    fn edges(modulus: [u8; 32]) -> impl Iterator<Item = [u8; 32]> {
        let small = (1..=300u16).map(|k| {
            let mut bytes = [0u8; 32];
            bytes[30..].copy_from_slice(&k.to_be_bytes());
            bytes
        });
        let powers = (0..256).map(|bit| {
            let mut bytes = [0u8; 32];
            bytes[31 - bit / 8] = 1 << (bit % 8);
            bytes
        });
        let high = (1..=40).map(move |k| minus(modulus, k));
        small.chain(powers).chain(high).chain([[0x7f; 32], [0x55; 32], [0xaa; 32]])
    }

    /// The divsteps' own inverse of `value` modulo `n`, not through the checked API (whose fallback would
    /// hide a wrong one).
    fn divsteps_scalar(value: &Scalar) -> Option<Scalar> {
        divsteps::invert(&value.to_repr().into(), &ORDER).map(scalar)
    }

    fn divsteps_field(value: &FieldElement) -> Option<[u8; 32]> {
        divsteps::invert(&value.normalize().to_bytes().into(), &PRIME)
    }

    #[test]
    fn the_moduli_are_k256s() {
        assert_eq!(minus(ORDER_BYTES, 1), <[u8; 32]>::from((Scalar::ZERO - Scalar::ONE).to_repr()));
        let p_minus_one = (FieldElement::ZERO - FieldElement::ONE).normalize().to_bytes();
        assert_eq!(minus(PRIME_BYTES, 1), <[u8; 32]>::from(p_minus_one));
    }

    #[test]
    fn the_moduli_inverses_modulo_2_62_are_right() {
        for modulus in [ORDER_BYTES, PRIME_BYTES] {
            let low = u64::from_be_bytes(modulus[24..].try_into().unwrap());
            assert_eq!(low.wrapping_mul(Modulus::new(&modulus).inverse_62()) & (u64::MAX >> 2), 1);
        }
    }

    #[test]
    fn divsteps_invert_edge_scalars_as_k256_does() {
        for bytes in edges(ORDER_BYTES) {
            let value = scalar(bytes);
            let expected: Option<Scalar> = value.invert_vartime().into();
            assert_eq!(divsteps_scalar(&value), expected, "{bytes:02x?}");
            assert_eq!(invert_public(&value), expected);
        }
        assert_eq!(invert_public(&Scalar::ZERO), None);
    }

    #[test]
    fn divsteps_invert_edge_field_elements_as_k256_does() {
        for bytes in edges(PRIME_BYTES) {
            let value = FieldElement::from_bytes(&bytes.into()).unwrap();
            let expected = value.invert().unwrap().to_bytes();
            assert_eq!(divsteps_field(&value), Some(expected.into()), "{bytes:02x?}");
            assert_eq!(invert_field_public(&value).unwrap().to_bytes(), expected);
        }
        assert_eq!(invert_field_public(&FieldElement::ZERO), None);
        // Not normalized: p + 0 is zero all the same.
        let p_minus_one = FieldElement::from_bytes(&minus(PRIME_BYTES, 1).into()).unwrap();
        assert_eq!(invert_field_public(&(p_minus_one + FieldElement::ONE)), None);
        // Not normalized and not zero: p + 1 is one.
        let one = p_minus_one + FieldElement::from_u64(2);
        assert_eq!(invert_field_public(&one).unwrap().to_bytes(), FieldElement::ONE.to_bytes());
    }

    proptest::proptest! {
        #[test]
        fn divsteps_invert_random_scalars_as_k256_does(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let value = <Scalar as k256::elliptic_curve::ops::Reduce<k256::U256>>::reduce_bytes(&bytes.into());
            proptest::prop_assume!(!bool::from(value.is_zero()));
            let expected: Option<Scalar> = value.invert().into();
            proptest::prop_assert_eq!(divsteps_scalar(&value), expected);
            proptest::prop_assert_eq!(invert_public(&value), expected);
        }

        #[test]
        fn divsteps_invert_random_field_elements_as_k256_does(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let value: Option<FieldElement> = FieldElement::from_bytes(&bytes.into()).into();
            proptest::prop_assume!(value.is_some_and(|value| !bool::from(value.is_zero())));
            let value = value.unwrap();
            let expected = value.invert().unwrap().to_bytes();
            proptest::prop_assert_eq!(divsteps_field(&value), Some(expected.into()));
            proptest::prop_assert_eq!(invert_field_public(&value).unwrap().to_bytes(), expected);
        }
    }
}
