//! Inverses of public values by Bernstein and Yang's safegcd from `crypto-bigint`: scalars modulo the group
//! order `n` (a signature's `s`, and `r` to recover a key) in ≈ 3 µs here against ≈ 6.5 µs for k256 0.13's
//! variable-time inversion (Stein's binary algorithm), and field elements modulo `p` (the `Z` of a sum of
//! precomputed multiples, to make it affine) in ≈ 3 µs against ≈ 5 µs for k256's constant-time
//! exponentiation. Together a fifth of a verification with precomputed multiples. Only for values that
//! are not secret: how long it takes may depend on the value.

use crypto_bigint::{Odd, U256 as Wide};
use k256::elliptic_curve::PrimeField;
use k256::{FieldElement, Scalar};

/// The order `n` of secp256k1's group.
const ORDER: Odd<Wide> = Odd::<Wide>::from_be_hex("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141");
/// The prime `p` of secp256k1's field.
const PRIME: Odd<Wide> = Odd::<Wide>::from_be_hex("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F");

/// `value` as 32 big-endian bytes.
fn bytes(value: &Wide) -> Option<[u8; 32]> {
    value.to_be_bytes().as_ref().try_into().ok()
}

/// `value⁻¹ mod n`, or `None` for zero (the only scalar without an inverse).
pub(crate) fn invert_public(value: &Scalar) -> Option<Scalar> {
    let wide = Wide::from_be_slice(&value.to_repr());
    let inverse = wide.invert_odd_mod_vartime(&ORDER).into_option()?;
    Scalar::from_repr(bytes(&inverse)?.into()).into()
}

/// `value⁻¹ mod p`, or `None` for zero.
pub(crate) fn invert_field_public(value: &FieldElement) -> Option<FieldElement> {
    let wide = Wide::from_be_slice(&value.to_bytes());
    let inverse = wide.invert_odd_mod_vartime(&PRIME).into_option()?;
    FieldElement::from_bytes(&bytes(&inverse)?.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::ops::Invert;

    fn scalar(bytes: [u8; 32]) -> Scalar {
        Option::from(Scalar::from_repr(bytes.into())).unwrap()
    }

    #[test]
    fn inverses_multiply_to_one_and_match_k256_on_edge_scalars() {
        let n_minus = |k: u8| {
            let mut n = bytes(&ORDER.get()).unwrap();
            n[31] -= k;
            scalar(n)
        };
        let mut top = [0u8; 32];
        top[0] = 0x80;
        for value in
            [Scalar::ONE, Scalar::from(2u64), n_minus(1), n_minus(2), scalar([0xff; 32].map(|b| b >> 1)), scalar(top)]
        {
            let inverse = invert_public(&value).unwrap();
            assert_eq!(inverse * value, Scalar::ONE);
            assert_eq!(Some(inverse), Option::from(value.invert_vartime()));
        }
        assert_eq!(invert_public(&Scalar::ZERO), None);
    }

    #[test]
    fn field_inverses_match_k256_and_zero_has_none() {
        let mut p_minus_one = bytes(&PRIME.get()).unwrap();
        p_minus_one[31] -= 1;
        let p_minus_one = FieldElement::from_bytes(&p_minus_one.into()).unwrap();
        for value in [FieldElement::ONE, FieldElement::from_u64(2), FieldElement::from_u64(7), p_minus_one] {
            let inverse = invert_field_public(&value).unwrap();
            assert_eq!((inverse * value).to_bytes(), FieldElement::ONE.to_bytes());
            assert_eq!(inverse.to_bytes(), value.invert().unwrap().to_bytes());
        }
        assert_eq!(invert_field_public(&FieldElement::ZERO), None);
        // Not normalized: p + 0 is zero all the same.
        assert_eq!(invert_field_public(&(p_minus_one + FieldElement::ONE)), None);
    }

    proptest::proptest! {
        #[test]
        fn inverses_match_k256_on_random_scalars(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let value = <Scalar as k256::elliptic_curve::ops::Reduce<k256::U256>>::reduce_bytes(&bytes.into());
            proptest::prop_assume!(!bool::from(value.is_zero()));
            proptest::prop_assert_eq!(invert_public(&value), Option::from(value.invert()));
        }

        #[test]
        fn field_inverses_match_k256_on_random_elements(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let value: Option<FieldElement> = FieldElement::from_bytes(&bytes.into()).into();
            proptest::prop_assume!(value.is_some_and(|value| !bool::from(value.is_zero())));
            let value = value.unwrap();
            proptest::prop_assert_eq!(invert_field_public(&value).unwrap().to_bytes(), value.invert().unwrap().to_bytes());
        }
    }
}
