//! secp256k1 public keys from a SubjectPublicKeyInfo (what KMS `GetPublicKey` returns) or SEC1 bytes.
//!
//! The SubjectPublicKeyInfo is decoded as DER, field by field: no fixed byte offsets. Anything that is
//! not an `id-ecPublicKey` on the named curve secp256k1 is rejected with an error that names what it is,
//! so a KMS `ECC_NIST_P256` or `RSA_2048` key reads as such rather than as "bad bytes".

use core::fmt;

use der::Decode;
use der::asn1::ObjectIdentifier;
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::{AffinePoint, EncodedPoint};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::address::Address;
use crate::error::{Error, ErrorKind};

/// `id-ecPublicKey` (RFC 5480).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// The named curve `secp256k1` (SEC 2), KMS key spec `ECC_SECG_P256K1`.
pub const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");

/// Length of the DER SubjectPublicKeyInfo of an uncompressed secp256k1 key, as KMS returns it.
pub const SPKI_DER_LEN: usize = 88;

/// The algorithm of a public key that is not an elliptic-curve key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// `rsaEncryption` (KMS `RSA_2048`, `RSA_3072`, `RSA_4096`).
    Rsa,
    /// `id-RSASSA-PSS`.
    RsaPss,
    /// `id-Ed25519` (KMS `ECC_NIST_EDWARDS25519`).
    Ed25519,
    /// `id-Ed448`.
    Ed448,
    /// ML-DSA (KMS `ML_DSA_44`, `ML_DSA_65`, `ML_DSA_87`).
    MlDsa,
    /// Any other algorithm, by object identifier.
    Other(ObjectIdentifier),
}

impl KeyAlgorithm {
    fn from_oid(oid: ObjectIdentifier) -> Self {
        const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
        const RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
        const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
        const ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");
        const ML_DSA_44: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17");
        const ML_DSA_65: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");
        const ML_DSA_87: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19");
        match oid {
            RSA => Self::Rsa,
            RSA_PSS => Self::RsaPss,
            ED25519 => Self::Ed25519,
            ED448 => Self::Ed448,
            ML_DSA_44 | ML_DSA_65 | ML_DSA_87 => Self::MlDsa,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa => f.write_str("RSA (KMS RSA_2048/3072/4096)"),
            Self::RsaPss => f.write_str("RSA-PSS"),
            Self::Ed25519 => f.write_str("Ed25519 (KMS ECC_NIST_EDWARDS25519)"),
            Self::Ed448 => f.write_str("Ed448"),
            Self::MlDsa => f.write_str("ML-DSA (KMS ML_DSA_*)"),
            Self::Other(oid) => write!(f, "algorithm {oid}"),
        }
    }
}

/// The named curve of an elliptic-curve key that is not secp256k1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Curve {
    /// NIST P-256 / prime256v1 (KMS `ECC_NIST_P256`).
    P256,
    /// NIST P-384 / secp384r1 (KMS `ECC_NIST_P384`).
    P384,
    /// NIST P-521 / secp521r1 (KMS `ECC_NIST_P521`).
    P521,
    /// SM2 (KMS `SM2`, China Regions).
    Sm2,
    /// Any other curve, by object identifier.
    Other(ObjectIdentifier),
}

impl Curve {
    fn from_oid(oid: ObjectIdentifier) -> Self {
        const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
        const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
        const SM2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
        match oid {
            P256 => Self::P256,
            P384 => Self::P384,
            P521 => Self::P521,
            SM2 => Self::Sm2,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::P256 => f.write_str("P-256 (KMS ECC_NIST_P256)"),
            Self::P384 => f.write_str("P-384 (KMS ECC_NIST_P384)"),
            Self::P521 => f.write_str("P-521 (KMS ECC_NIST_P521)"),
            Self::Sm2 => f.write_str("SM2 (KMS SM2)"),
            Self::Other(oid) => write!(f, "{oid}"),
        }
    }
}

/// A secp256k1 public key, with its Ethereum address computed once.
///
/// ```
/// use ethkms_core::PublicKey;
/// use ethkms_core::k256::AffinePoint;
///
/// // The key of private key 1 (the generator), as KMS GetPublicKey would return it.
/// let spki = PublicKey::from_affine(AffinePoint::GENERATOR).to_spki_der();
/// let key = PublicKey::from_spki_der(&spki)?;
/// assert_eq!(key.address().to_string(), "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
/// # Ok::<(), ethkms_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    point: AffinePoint,
    address: Address,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo: `id-ecPublicKey`, named curve secp256k1, and an
    /// uncompressed or compressed point that lies on the curve.
    ///
    /// # Errors
    /// [`ErrorKind::Spki`] for malformed DER (with its position), [`ErrorKind::UnsupportedAlgorithm`]
    /// or [`ErrorKind::UnsupportedCurve`] naming the key type found, [`ErrorKind::CurveNotNamed`], or
    /// [`ErrorKind::InvalidPoint`].
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)?;
        check_algorithm(&spki.algorithm)?;
        let point = spki.subject_public_key.as_bytes().ok_or(Error::new(ErrorKind::InvalidPoint))?;
        Self::from_sec1_bytes(point)
    }

    /// Parses a SEC1 point: `04 ‖ x ‖ y` (65 bytes) or `02|03 ‖ x` (33 bytes). The identity, hybrid
    /// and compact encodings are rejected.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidPoint`] if the bytes are not such an encoding of a point on secp256k1.
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let well_formed = matches!((bytes.first(), bytes.len()), (Some(0x04), 65) | (Some(0x02 | 0x03), 33));
        if !well_formed {
            return Err(Error::new(ErrorKind::InvalidPoint));
        }
        let encoded = EncodedPoint::from_bytes(bytes).map_err(|_| Error::new(ErrorKind::InvalidPoint))?;
        let point: Option<AffinePoint> = AffinePoint::from_encoded_point(&encoded).into();
        point.map(Self::from_affine).ok_or(Error::new(ErrorKind::InvalidPoint))
    }

    /// Wraps a k256 point. The identity has no address; use [`from_sec1_bytes`](Self::from_sec1_bytes)
    /// for untrusted input.
    #[must_use]
    pub fn from_affine(point: AffinePoint) -> Self {
        let uncompressed = point.to_encoded_point(false);
        let address = Address::from_uncompressed_point(uncompressed.as_bytes());
        Self { point, address }
    }

    /// The Ethereum address: the last 20 bytes of keccak-256 of the uncompressed point's `x ‖ y`.
    #[must_use]
    pub const fn address(&self) -> Address {
        self.address
    }

    /// The point, for use with k256.
    #[must_use]
    pub const fn as_affine(&self) -> &AffinePoint {
        &self.point
    }

    /// The 65-byte SEC1 uncompressed encoding `04 ‖ x ‖ y`.
    #[must_use]
    pub fn to_uncompressed(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out.copy_from_slice(self.point.to_encoded_point(false).as_bytes());
        out
    }

    /// The 33-byte SEC1 compressed encoding `02|03 ‖ x`.
    #[must_use]
    pub fn to_compressed(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out.copy_from_slice(self.point.to_encoded_point(true).as_bytes());
        out
    }

    /// The DER SubjectPublicKeyInfo with the uncompressed point, byte for byte what KMS
    /// `GetPublicKey` returns for an `ECC_SECG_P256K1` key.
    #[must_use]
    pub fn to_spki_der(&self) -> [u8; SPKI_DER_LEN] {
        let mut out = [0u8; SPKI_DER_LEN];
        let (header, point) = out.split_at_mut(SPKI_HEADER.len());
        header.copy_from_slice(&SPKI_HEADER);
        point.copy_from_slice(&self.to_uncompressed());
        out
    }
}

/// The DER that precedes the 65-byte point in an uncompressed secp256k1 SubjectPublicKeyInfo:
/// `SEQUENCE { SEQUENCE { id-ecPublicKey, secp256k1 }, BIT STRING (0 unused bits) ...`.
/// Used only to *encode*; a unit test checks it against the `spki` encoder.
const SPKI_HEADER: [u8; 23] = [
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00,
    0x0a, 0x03, 0x42, 0x00,
];

fn check_algorithm(algorithm: &AlgorithmIdentifierRef<'_>) -> Result<(), Error> {
    if algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(Error::new(ErrorKind::UnsupportedAlgorithm(KeyAlgorithm::from_oid(algorithm.oid))));
    }
    let curve = algorithm
        .parameters
        .and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok())
        .ok_or(Error::new(ErrorKind::CurveNotNamed))?;
    if curve != SECP256K1 {
        return Err(Error::new(ErrorKind::UnsupportedCurve(Curve::from_oid(curve))));
    }
    Ok(())
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("address", &self.address)
            .field("compressed", &crate::hex::Hex(&self.to_compressed()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn spki_header_matches_the_der_encoder() {
        let key = PublicKey::from_affine(AffinePoint::GENERATOR);
        let uncompressed = key.to_uncompressed();
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(der::asn1::AnyRef::from(&SECP256K1)),
            },
            subject_public_key: der::asn1::BitStringRef::from_bytes(&uncompressed).unwrap(),
        };
        let mut buf = [0u8; 128];
        let encoded = spki.encode_to_slice(&mut buf).unwrap();
        assert_eq!(encoded, &key.to_spki_der()[..]);
    }

    #[test]
    fn compressed_and_uncompressed_agree() {
        let key = PublicKey::from_affine(AffinePoint::GENERATOR);
        let from_compressed = PublicKey::from_sec1_bytes(&key.to_compressed()).unwrap();
        assert_eq!(from_compressed, key);
    }

    #[test]
    fn rejects_identity_hybrid_and_off_curve_points() {
        let key = PublicKey::from_affine(AffinePoint::GENERATOR);
        let mut hybrid = key.to_uncompressed();
        hybrid[0] = 0x06;
        let mut off_curve = key.to_uncompressed();
        off_curve[64] ^= 1;
        for bad in [&[0u8][..], &hybrid, &off_curve, &key.to_uncompressed()[..64], &[]] {
            assert_eq!(PublicKey::from_sec1_bytes(bad).unwrap_err().kind(), ErrorKind::InvalidPoint);
        }
    }
}
