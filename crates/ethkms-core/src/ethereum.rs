//! Ethereum signatures: low-s `(r, s)` with a y-parity bit, their 65-byte `r ‖ s ‖ v` form, and
//! address recovery.

use core::fmt;

use k256::elliptic_curve::ops::{LinearCombination, Reduce};
use k256::elliptic_curve::point::DecompressPoint;
use k256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

use crate::address::Address;
use crate::error::{Error, ErrorKind};
use crate::hex::Hex;
use crate::inverse::invert_public;
use crate::key::PublicKey;
use crate::signature::EcdsaSignature;

/// An Ethereum ECDSA signature: `r`, a low `s`, and the parity of the nonce point's y coordinate.
///
/// Those made by this crate ([`EcdsaSignature::to_ethereum`], [`Signature::from_kms_der`]) have been
/// verified against the signing key before they are returned.
///
/// ```
/// use ethkms_core::{EcdsaSignature, PublicKey, Signature, eip191_hash_message};
/// use ethkms_core::k256::ecdsa::{SigningKey, signature::hazmat::PrehashSigner};
///
/// let signing_key = SigningKey::from_slice(&[7; 32]).expect("valid scalar");
/// let key = PublicKey::from_affine(*signing_key.verifying_key().as_affine());
/// let digest = eip191_hash_message(b"hello");
///
/// // What a KMS returns: a DER signature, high or low s.
/// let (kms_signature, _): (ethkms_core::k256::ecdsa::Signature, _) = signing_key.sign_prehash(&digest).expect("signs");
/// let der = kms_signature.to_der();
///
/// let signature = Signature::from_kms_der(der.as_bytes(), &digest, &key)?;
/// assert_eq!(signature.recover_address(&digest)?, key.address());
/// assert_eq!(signature.to_bytes().len(), 65);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    r: Scalar,
    s: Scalar,
    y_parity: bool,
}

impl Signature {
    /// Converts a DER signature from KMS `Sign` (`MessageType=DIGEST`, `ECDSA_SHA_256`) over `digest`
    /// into a verified Ethereum signature for `key`: strict DER parsing, then
    /// [`EcdsaSignature::to_ethereum`].
    ///
    /// # Errors
    /// A DER error with its position, [`ErrorKind::VerificationFailed`] if the signature is not by
    /// `key` over `digest`, or [`ErrorKind::UnrepresentableRecoveryId`].
    pub fn from_kms_der(der: &[u8], digest: &[u8; 32], key: &PublicKey) -> Result<Self, Error> {
        EcdsaSignature::from_der(der)?.to_ethereum(key, digest)
    }

    /// Builds a signature from its parts, as found in a transaction or a 65-byte signature.
    ///
    /// # Errors
    /// [`ErrorKind::ZeroScalar`] or [`ErrorKind::ScalarOutOfRange`] for a scalar outside `1..n`, and
    /// [`ErrorKind::HighS`] for an `s` above `n/2` (EIP-2).
    pub fn from_parts(r: &[u8; 32], s: &[u8; 32], y_parity: bool) -> Result<Self, Error> {
        let ecdsa = EcdsaSignature::from_scalars(r, s)?;
        if !ecdsa.is_low_s() {
            return Err(Error::at(ErrorKind::HighS, 32));
        }
        Ok(Self { r: *ecdsa.r(), s: *ecdsa.s(), y_parity })
    }

    /// Parses the 65-byte `r ‖ s ‖ v` form, with `v` one of 27, 28 (`personal_sign`, `eth_sign`) or
    /// 0, 1 (the bare parity).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidLength`] unless 65 bytes, [`ErrorKind::InvalidRecoveryId`] for another `v`,
    /// and the errors of [`from_parts`](Self::from_parts).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; 65] =
            bytes.try_into().map_err(|_| Error::new(ErrorKind::InvalidLength { expected: 65, found: bytes.len() }))?;
        let (r, s, v) = (&bytes[..32], &bytes[32..64], bytes[64]);
        let y_parity = match v {
            0 | 27 => false,
            1 | 28 => true,
            other => return Err(Error::at(ErrorKind::InvalidRecoveryId(other), 64)),
        };
        let mut r_bytes = [0u8; 32];
        let mut s_bytes = [0u8; 32];
        r_bytes.copy_from_slice(r);
        s_bytes.copy_from_slice(s);
        Self::from_parts(&r_bytes, &s_bytes, y_parity)
    }

    pub(crate) fn from_verified(signature: EcdsaSignature, y_parity: bool) -> Self {
        Self { r: *signature.r(), s: *signature.s(), y_parity }
    }

    /// `r`, 32 bytes big-endian.
    #[must_use]
    pub fn r(&self) -> [u8; 32] {
        self.r.to_bytes().into()
    }

    /// `s`, 32 bytes big-endian; always in the lower half of the group order.
    #[must_use]
    pub fn s(&self) -> [u8; 32] {
        self.s.to_bytes().into()
    }

    /// The parity of the nonce point's y coordinate: the `yParity` of typed transactions.
    #[must_use]
    pub const fn y_parity(&self) -> bool {
        self.y_parity
    }

    /// `27 + y_parity`, the `v` of `personal_sign` and of pre-EIP-155 legacy transactions.
    #[must_use]
    pub const fn v(&self) -> u8 {
        27 + self.y_parity as u8
    }

    /// The 65-byte `r ‖ s ‖ v` form with `v` = 27 or 28, as `personal_sign`, ethers, eth-account and
    /// `cast wallet sign` print it.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(&self.r());
        out[32..64].copy_from_slice(&self.s());
        out[64] = self.v();
        out
    }

    /// The signature as a plain ECDSA `(r, s)` pair.
    #[must_use]
    pub fn to_ecdsa(&self) -> EcdsaSignature {
        EcdsaSignature::from_valid_scalars(self.r, self.s)
    }

    /// Recovers the public key that made this signature over `digest`:
    /// `Q = r⁻¹ · (s·R − z·G)` with `R` the point whose x is `r` and whose y has this parity.
    ///
    /// # Errors
    /// [`ErrorKind::RecoveryFailed`] if no point has x = `r`, or the recovered point is the identity.
    pub fn recover_public_key(&self, digest: &[u8; 32]) -> Result<PublicKey, Error> {
        let nonce_point: Option<AffinePoint> =
            AffinePoint::decompress(&self.r.to_bytes(), u8::from(self.y_parity).into()).into();
        let nonce_point = nonce_point.ok_or(Error::new(ErrorKind::RecoveryFailed))?;
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*digest));
        let r_inverse = invert_public(&self.r).ok_or(Error::new(ErrorKind::RecoveryFailed))?;
        let u1 = -(z * r_inverse);
        let u2 = self.s * r_inverse;
        let key = ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &u1, &nonce_point.into(), &u2).to_affine();
        if key == AffinePoint::IDENTITY {
            return Err(Error::new(ErrorKind::RecoveryFailed));
        }
        Ok(PublicKey::from_affine(key))
    }

    /// Recovers the address that made this signature over `digest`, as `ecrecover` does.
    ///
    /// # Errors
    /// As [`recover_public_key`](Self::recover_public_key).
    pub fn recover_address(&self, digest: &[u8; 32]) -> Result<Address, Error> {
        self.recover_public_key(digest).map(|key| key.address())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("r", &Hex(&self.r()))
            .field("s", &Hex(&self.s()))
            .field("y_parity", &self.y_parity)
            .finish()
    }
}
