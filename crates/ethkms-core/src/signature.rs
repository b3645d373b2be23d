//! ECDSA signatures as KMS `Sign` returns them: a DER `SEQUENCE { r INTEGER, s INTEGER }`, parsed
//! strictly, plus the fixed-width `r ‖ s` (IEEE P1363) form and verification.
//!
//! The parser accepts exactly DER: a SEQUENCE of two INTEGERs with minimal short- or long-form lengths,
//! minimal positive integer encodings, `0 < r, s < n`, and nothing after the SEQUENCE. Every rejection
//! says what was wrong and at which byte.

use core::fmt;

use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::ops::{LinearCombination, Reduce};
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::scalar::IsHigh;
use k256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

use crate::error::{Component, Error, ErrorKind};
use crate::hex::Hex;
use crate::inverse::invert_public;
use crate::key::PublicKey;

/// DER tag of a SEQUENCE.
pub(crate) const SEQUENCE: u8 = 0x30;
/// DER tag of an INTEGER.
pub(crate) const INTEGER: u8 = 0x02;

/// The longest DER encoding of a secp256k1 ECDSA signature: `2 + 2 × (2 + 33)` bytes.
pub const MAX_DER_LEN: usize = 72;

/// An ECDSA signature `(r, s)` over secp256k1 with `0 < r, s < n`, high or low s.
///
/// This is the signature as a KMS returns it, before Ethereum's rules apply. Turn it into an
/// Ethereum [`Signature`](crate::Signature) with [`to_ethereum`](Self::to_ethereum).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EcdsaSignature {
    r: Scalar,
    s: Scalar,
}

impl EcdsaSignature {
    /// Parses a strict DER signature.
    ///
    /// ```
    /// use ethkms_core::{EcdsaSignature, ErrorKind, Component};
    ///
    /// let der = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
    /// let signature = EcdsaSignature::from_der(&der)?;
    /// assert_eq!(signature.s_bytes()[31], 2);
    ///
    /// // A redundant leading zero in s is BER, not DER:
    /// let ber = [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x02];
    /// let error = EcdsaSignature::from_der(&ber).unwrap_err();
    /// assert_eq!(error.kind(), ErrorKind::NonMinimalInteger(Component::S));
    /// assert_eq!(error.position(), Some(7));
    /// # Ok::<(), ethkms_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// Any departure from DER, or a scalar outside `1..n`, as the [`ErrorKind`] that names it, at the
    /// byte offset where it was found.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader { bytes: der, position: 0 };
        let content_length = reader.header(SEQUENCE)?;
        let content_end = reader.position + content_length;
        let mut content = Reader { bytes: der.get(..content_end).unwrap_or(der), position: reader.position };
        let r = content.integer(Component::R)?;
        let s = content.integer(Component::S)?;
        if content.position != content_end {
            return Err(Error::at(ErrorKind::ExtraElement, content.position));
        }
        if content_end != der.len() {
            return Err(Error::at(ErrorKind::TrailingData, content_end));
        }
        Ok(Self { r, s })
    }

    /// Parses the fixed-width IEEE P1363 form `r ‖ s`, 32 big-endian bytes each.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidLength`] unless the input is 64 bytes; [`ErrorKind::ZeroScalar`] or
    /// [`ErrorKind::ScalarOutOfRange`] for a scalar outside `1..n`.
    pub fn from_fixed_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (r, s) = bytes
            .split_first_chunk::<32>()
            .and_then(|(r, rest)| Some((r, <&[u8; 32]>::try_from(rest).ok()?)))
            .ok_or(Error::new(ErrorKind::InvalidLength { expected: 64, found: bytes.len() }))?;
        Self::from_scalars(r, s)
    }

    /// Builds a signature from big-endian `r` and `s`.
    ///
    /// # Errors
    /// [`ErrorKind::ZeroScalar`] or [`ErrorKind::ScalarOutOfRange`] for a scalar outside `1..n`.
    pub fn from_scalars(r: &[u8; 32], s: &[u8; 32]) -> Result<Self, Error> {
        let r = scalar_from_bytes(r, Component::R).map_err(|kind| Error::at(kind, 0))?;
        let s = scalar_from_bytes(s, Component::S).map_err(|kind| Error::at(kind, 32))?;
        Ok(Self { r, s })
    }

    /// A signature from scalars already known to be in `1..n`.
    pub(crate) const fn from_valid_scalars(r: Scalar, s: Scalar) -> Self {
        Self { r, s }
    }

    pub(crate) const fn r(&self) -> &Scalar {
        &self.r
    }

    pub(crate) const fn s(&self) -> &Scalar {
        &self.s
    }

    /// `r`, 32 bytes big-endian.
    #[must_use]
    pub fn r_bytes(&self) -> [u8; 32] {
        self.r.to_bytes().into()
    }

    /// `s`, 32 bytes big-endian.
    #[must_use]
    pub fn s_bytes(&self) -> [u8; 32] {
        self.s.to_bytes().into()
    }

    /// The fixed-width form `r ‖ s`.
    #[must_use]
    pub fn to_fixed_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let (r, s) = out.split_at_mut(32);
        r.copy_from_slice(&self.r_bytes());
        s.copy_from_slice(&self.s_bytes());
        out
    }

    /// The DER encoding, as KMS would return it.
    #[must_use]
    pub fn to_der(&self) -> DerSignature {
        let (r, r_length) = integer_content(&self.r_bytes());
        let (s, s_length) = integer_content(&self.s_bytes());
        let mut bytes = [0u8; MAX_DER_LEN];
        let total = 2 + r_length + 2 + s_length;
        let header = [SEQUENCE, length_byte(total)];
        let r_header = [INTEGER, length_byte(r_length)];
        let s_header = [INTEGER, length_byte(s_length)];
        let parts: [&[u8]; 5] = [&header, &r_header, &r[33 - r_length..], &s_header, &s[33 - s_length..]];
        for (slot, byte) in bytes.iter_mut().zip(parts.iter().flat_map(|part| part.iter())) {
            *slot = *byte;
        }
        DerSignature { bytes, length: length_byte(2 + total) }
    }

    /// Whether `s` is in the lower half of the group order (`s <= n/2`), as Ethereum requires.
    #[must_use]
    pub fn is_low_s(&self) -> bool {
        !bool::from(self.s.is_high())
    }

    /// The same signature with `s` replaced by `n - s` if it was high. Both verify; Ethereum accepts
    /// only the low one.
    #[must_use]
    pub fn normalize_s(&self) -> Self {
        if self.is_low_s() { *self } else { Self { r: self.r, s: -self.s } }
    }

    /// Verifies the signature against `key` for the 32-byte message `digest` (standard ECDSA, either s).
    ///
    /// # Errors
    /// [`ErrorKind::VerificationFailed`] if it does not verify.
    pub fn verify_prehash(&self, key: &PublicKey, digest: &[u8; 32]) -> Result<(), Error> {
        self.nonce_point_by(digest, lincomb(key)).map(|_| ())
    }

    /// Turns this signature into an Ethereum signature for `digest` under `key`.
    ///
    /// `s` is normalised to the low half, then the nonce point `R = u1·G + u2·Q` is computed exactly as
    /// verification does (one double-scalar multiplication). `x(R) mod n == r` *is* the verification;
    /// the parity of `y(R)` is the recovery id. So the result has been verified before it is returned,
    /// and a signature that does not verify is an error, never output.
    ///
    /// # Errors
    /// [`ErrorKind::VerificationFailed`] if the signature is not for `digest` under `key`;
    /// [`ErrorKind::UnrepresentableRecoveryId`] if `x(R) >= n` (probability about 2⁻¹²⁸; Ethereum's
    /// `v` cannot express it).
    pub fn to_ethereum(&self, key: &PublicKey, digest: &[u8; 32]) -> Result<crate::Signature, Error> {
        self.ethereum_by(digest, lincomb(key))
    }

    /// [`EcdsaSignature::to_ethereum`] with `R = u1·G + u2·Q` computed by `combine(u1, u2)`.
    pub(crate) fn ethereum_by(
        &self,
        digest: &[u8; 32],
        combine: impl FnOnce(&Scalar, &Scalar) -> AffinePoint,
    ) -> Result<crate::Signature, Error> {
        let normalized = self.normalize_s();
        let nonce_point = normalized.nonce_point_by(digest, combine)?;
        // x(R) mod n == r holds; x(R) == r as bytes holds exactly when x(R) < n.
        if nonce_point.x() != normalized.r.to_bytes() {
            return Err(Error::new(ErrorKind::UnrepresentableRecoveryId));
        }
        Ok(crate::Signature::from_verified(normalized, bool::from(nonce_point.y_is_odd())))
    }

    /// `R = (z/s)·G + (r/s)·Q`, computed by `combine(z/s, r/s)` (affine), checked to satisfy `x(R) mod n == r`.
    pub(crate) fn nonce_point_by(
        &self,
        digest: &[u8; 32],
        combine: impl FnOnce(&Scalar, &Scalar) -> AffinePoint,
    ) -> Result<AffinePoint, Error> {
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*digest));
        let s_inverse = invert_public(&self.s).ok_or(Error::new(ErrorKind::VerificationFailed))?;
        let u1 = z * s_inverse;
        let u2 = self.r * s_inverse;
        let point = combine(&u1, &u2);
        let x_mod_n = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
        if point == AffinePoint::IDENTITY || x_mod_n != self.r {
            return Err(Error::new(ErrorKind::VerificationFailed));
        }
        Ok(point)
    }
}

/// `u1·G + u2·Q` by k256's constant-time double-scalar multiplication.
fn lincomb(key: &PublicKey) -> impl FnOnce(&Scalar, &Scalar) -> AffinePoint {
    let q = ProjectivePoint::from(*key.as_affine());
    move |u1, u2| ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, u1, &q, u2).to_affine()
}

impl fmt::Debug for EcdsaSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcdsaSignature").field("r", &Hex(&self.r_bytes())).field("s", &Hex(&self.s_bytes())).finish()
    }
}

/// A DER-encoded signature held without allocation; at most [`MAX_DER_LEN`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DerSignature {
    bytes: [u8; MAX_DER_LEN],
    length: u8,
}

impl DerSignature {
    /// The encoding.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.length)).unwrap_or(&self.bytes)
    }
}

impl AsRef<[u8]> for DerSignature {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for DerSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DerSignature").field(&Hex(self.as_bytes())).finish()
    }
}

/// A scalar from big-endian bytes, in `1..n`.
pub(crate) fn scalar_from_bytes(bytes: &[u8; 32], component: Component) -> Result<Scalar, ErrorKind> {
    let scalar: Option<Scalar> = Scalar::from_repr(FieldBytes::from(*bytes)).into();
    let scalar = scalar.ok_or(ErrorKind::ScalarOutOfRange(component))?;
    if bool::from(scalar.is_zero()) {
        return Err(ErrorKind::ZeroScalar(component));
    }
    Ok(scalar)
}

/// The minimal DER INTEGER content of a positive 32-byte big-endian value, right-aligned in 33 bytes,
/// and its length.
fn integer_content(value: &[u8; 32]) -> ([u8; 33], usize) {
    let mut content = [0u8; 33];
    content[1..].copy_from_slice(value);
    let leading_zeros = value.iter().take_while(|&&byte| byte == 0).count().min(31);
    let first = value[leading_zeros];
    // A set high bit would read as negative: keep one zero byte in front of it.
    let length = 32 - leading_zeros + usize::from(first & 0x80 != 0);
    (content, length)
}

/// A short-form DER length; every length in a secp256k1 signature is below 128.
fn length_byte(length: usize) -> u8 {
    u8::try_from(length).unwrap_or(u8::MAX)
}

/// A cursor over DER input that reports positions.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let byte = *self.bytes.get(self.position).ok_or(Error::at(ErrorKind::Truncated, self.position))?;
        self.position += 1;
        Ok(byte)
    }

    /// Reads a tag, which must be `expected`, and a minimal definite length that fits in what remains.
    fn header(&mut self, expected: u8) -> Result<usize, Error> {
        let tag_position = self.position;
        let tag = self.byte()?;
        if tag != expected {
            return Err(Error::at(ErrorKind::UnexpectedTag { expected, found: tag }, tag_position));
        }
        let length_position = self.position;
        let first = self.byte()?;
        let length = match first {
            0x00..=0x7f => usize::from(first),
            0x80 => return Err(Error::at(ErrorKind::IndefiniteLength, length_position)),
            _ => {
                let count = usize::from(first & 0x7f);
                let mut length: usize = 0;
                for index in 0..count {
                    let byte = self.byte()?;
                    if index == 0 && byte == 0 {
                        return Err(Error::at(ErrorKind::NonMinimalLength, length_position));
                    }
                    length = length
                        .checked_mul(256)
                        .and_then(|shifted| shifted.checked_add(usize::from(byte)))
                        .ok_or(Error::at(ErrorKind::Truncated, length_position))?;
                }
                if length < 0x80 {
                    return Err(Error::at(ErrorKind::NonMinimalLength, length_position));
                }
                length
            }
        };
        if length > self.bytes.len() - self.position {
            return Err(Error::at(ErrorKind::Truncated, length_position));
        }
        Ok(length)
    }

    /// Reads a minimal positive INTEGER in `1..n`.
    fn integer(&mut self, component: Component) -> Result<Scalar, Error> {
        let length = self.header(INTEGER)?;
        let start = self.position;
        let content = self.bytes.get(start..start + length).ok_or(Error::at(ErrorKind::Truncated, start))?;
        self.position += length;
        let magnitude = match content {
            [] => return Err(Error::at(ErrorKind::EmptyInteger(component), start)),
            [first, ..] if first & 0x80 != 0 => {
                return Err(Error::at(ErrorKind::NegativeInteger(component), start));
            }
            [0, second, ..] if second & 0x80 == 0 => {
                return Err(Error::at(ErrorKind::NonMinimalInteger(component), start));
            }
            [0, rest @ ..] if !rest.is_empty() => rest,
            all => all,
        };
        let mut bytes = [0u8; 32];
        let offset =
            32usize.checked_sub(magnitude.len()).ok_or(Error::at(ErrorKind::IntegerTooLarge(component), start))?;
        bytes[offset..].copy_from_slice(magnitude);
        scalar_from_bytes(&bytes, component).map_err(|kind| Error::at(kind, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(der: &[u8]) -> Result<EcdsaSignature, (ErrorKind, Option<usize>)> {
        EcdsaSignature::from_der(der).map_err(|error| (error.kind(), error.position()))
    }

    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xba, 0xae,
        0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
    ];

    #[test]
    fn minimal_signature_parses() {
        let signature = parse(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f]).unwrap();
        assert_eq!(signature.r_bytes()[31], 1);
        assert_eq!(signature.s_bytes()[31], 0x7f);
        assert_eq!(signature.to_der().as_bytes(), &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f]);
    }

    #[test]
    fn high_bit_needs_a_zero_byte() {
        let der = [0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01];
        let signature = parse(&der).unwrap();
        assert_eq!(signature.r_bytes()[31], 0x80);
        assert_eq!(signature.to_der().as_bytes(), &der);
        assert_eq!(
            parse(&[0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x01]),
            Err((ErrorKind::NegativeInteger(Component::R), Some(4)))
        );
    }

    #[test]
    fn structural_errors_are_named_with_positions() {
        use ErrorKind::*;
        let cases: &[(&[u8], ErrorKind, usize)] = &[
            (&[], Truncated, 0),
            (&[0x31, 0x06], UnexpectedTag { expected: SEQUENCE, found: 0x31 }, 0),
            (&[0x30, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00, 0x00], IndefiniteLength, 1),
            (&[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], NonMinimalLength, 1),
            (&[0x30, 0x82, 0x00, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], NonMinimalLength, 1),
            (&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01], Truncated, 1),
            (&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00], TrailingData, 8),
            (&[0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x05, 0x00], ExtraElement, 8),
            (&[0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01], EmptyInteger(Component::R), 4),
            (&[0x30, 0x06, 0x02, 0x01, 0x01, 0x03, 0x01, 0x01], UnexpectedTag { expected: INTEGER, found: 0x03 }, 5),
            (&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01], ZeroScalar(Component::R), 4),
            (&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00], ZeroScalar(Component::S), 7),
            (&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x01], NonMinimalInteger(Component::S), 7),
            (&[0x30, 0x06, 0x02, 0x07, 0x01, 0x02, 0x01, 0x01], Truncated, 3),
            (&[0x30, 0x06, 0x02, 0x03, 0x01, 0x02, 0x01, 0x01], UnexpectedTag { expected: INTEGER, found: 0x01 }, 7),
            (&[0x30, 0x89, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Truncated, 1),
        ];
        for &(der, kind, position) in cases {
            assert_eq!(parse(der), Err((kind, Some(position))), "input {der:02x?}");
        }
    }

    /// `SEQUENCE { INTEGER r_content, INTEGER s_content }` with short-form lengths.
    fn sequence(r_content: &[u8], s_content: &[u8]) -> Vec<u8> {
        let mut der = std::vec![SEQUENCE, length_byte(4 + r_content.len() + s_content.len())];
        der.extend_from_slice(&[INTEGER, length_byte(r_content.len())]);
        der.extend_from_slice(r_content);
        der.extend_from_slice(&[INTEGER, length_byte(s_content.len())]);
        der.extend_from_slice(s_content);
        der
    }

    #[test]
    fn scalars_must_be_below_n() {
        let mut n_with_sign_byte = std::vec![0u8];
        n_with_sign_byte.extend_from_slice(&N);
        assert_eq!(
            parse(&sequence(&n_with_sign_byte, &[1])),
            Err((ErrorKind::ScalarOutOfRange(Component::R), Some(4)))
        );
        assert_eq!(
            parse(&sequence(&[1], &n_with_sign_byte)),
            Err((ErrorKind::ScalarOutOfRange(Component::S), Some(7)))
        );
        assert_eq!(parse(&sequence(&[1; 33], &[1])), Err((ErrorKind::IntegerTooLarge(Component::R), Some(4))));
        let mut n_minus_one = n_with_sign_byte.clone();
        n_minus_one[32] -= 1;
        let signature = parse(&sequence(&n_minus_one, &n_minus_one)).unwrap();
        assert_eq!(signature.to_der().as_bytes(), &sequence(&n_minus_one, &n_minus_one)[..]);
        assert_eq!(signature.to_der().as_bytes().len(), MAX_DER_LEN);
    }

    #[test]
    fn normalize_s_flips_only_high_values() {
        let mut high = N;
        high[31] -= 1; // n - 1 is high
        let signature = EcdsaSignature::from_scalars(&[1; 32], &high).unwrap();
        assert!(!signature.is_low_s());
        let normalized = signature.normalize_s();
        assert!(normalized.is_low_s());
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(normalized.s_bytes(), one);
        assert_eq!(normalized.normalize_s(), normalized);
    }

    #[test]
    fn fixed_width_form_checks_length_and_range() {
        assert_eq!(
            EcdsaSignature::from_fixed_bytes(&[1; 63]).unwrap_err().kind(),
            ErrorKind::InvalidLength { expected: 64, found: 63 }
        );
        let mut bytes = [1u8; 64];
        bytes[32..].copy_from_slice(&N);
        let error = EcdsaSignature::from_fixed_bytes(&bytes).unwrap_err();
        assert_eq!((error.kind(), error.position()), (ErrorKind::ScalarOutOfRange(Component::S), Some(32)));
        let signature = EcdsaSignature::from_fixed_bytes(&[1; 64]).unwrap();
        assert_eq!(signature.to_fixed_bytes(), [1; 64]);
        assert_eq!(EcdsaSignature::from_der(signature.to_der().as_bytes()).unwrap(), signature);
    }
}
