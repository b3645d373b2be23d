//! The one error type of this crate: a small `Copy` value with a kind and, where the input was
//! malformed, the byte offset at which it went wrong.

use core::fmt;

use crate::key::{Curve, KeyAlgorithm};

/// What went wrong, and where.
///
/// Errors are plain data (`Copy`, no allocation), so they can cross thread and crate boundaries and be
/// matched on by [`kind`](Self::kind). The [`position`](Self::position) is a byte offset into the input
/// that was being parsed, when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    position: Option<usize>,
}

impl Error {
    /// An error of `kind` with no position.
    #[must_use]
    pub const fn new(kind: ErrorKind) -> Self {
        Self { kind, position: None }
    }

    /// An error of `kind` at byte offset `position` of the input.
    #[must_use]
    pub const fn at(kind: ErrorKind, position: usize) -> Self {
        Self { kind, position: Some(position) }
    }

    /// What went wrong.
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The byte offset in the input where the problem was found, if the error is about an encoding.
    #[must_use]
    pub const fn position(&self) -> Option<usize> {
        self.position
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)?;
        if let Some(position) = self.position {
            write!(f, " (at byte {position})")?;
        }
        Ok(())
    }
}

impl core::error::Error for Error {}

/// Which of the two ECDSA signature scalars an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// The `r` scalar (the x coordinate of the nonce point, reduced mod n).
    R,
    /// The `s` scalar.
    S,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::R => "r",
            Self::S => "s",
        })
    }
}

/// The kinds of [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    // ---- DER structure of an ECDSA signature ----
    /// The input ended inside an element, or a declared length runs past the end of what contains it.
    Truncated,
    /// An element has the wrong tag.
    UnexpectedTag {
        /// The tag DER requires here.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// A BER indefinite length (`0x80`); DER forbids it.
    IndefiniteLength,
    /// A length written in more bytes than needed (long form for a value below 128, or leading zeros).
    NonMinimalLength,
    /// Bytes after the end of the signature's SEQUENCE.
    TrailingData,
    /// Bytes inside the SEQUENCE after the two INTEGERs.
    ExtraElement,
    /// An INTEGER with no content bytes.
    EmptyInteger(Component),
    /// An INTEGER whose first content bit is set, i.e. a negative number.
    NegativeInteger(Component),
    /// An INTEGER with a redundant leading `0x00` byte.
    NonMinimalInteger(Component),
    /// An INTEGER of more than 32 significant bytes.
    IntegerTooLarge(Component),
    /// A scalar that is zero.
    ZeroScalar(Component),
    /// A scalar that is not below the group order n.
    ScalarOutOfRange(Component),
    /// Input of the wrong size for a fixed-width encoding.
    InvalidLength {
        /// The size the encoding has.
        expected: usize,
        /// The size given.
        found: usize,
    },

    // ---- SubjectPublicKeyInfo ----
    /// The SubjectPublicKeyInfo is not valid DER; the kind says how.
    Spki(der::ErrorKind),
    /// The key is not an elliptic-curve key: KMS returns this for RSA, Ed25519 or ML-DSA keys.
    UnsupportedAlgorithm(KeyAlgorithm),
    /// An elliptic-curve key on a curve other than secp256k1 (for instance a KMS `ECC_NIST_P256` key).
    UnsupportedCurve(Curve),
    /// An elliptic-curve key whose parameters are not a named curve (implicit or explicit parameters).
    CurveNotNamed,
    /// The subject public key is not a valid SEC1 point on secp256k1.
    InvalidPoint,

    // ---- signatures as Ethereum sees them ----
    /// The signature does not verify against the public key and digest.
    VerificationFailed,
    /// The signature verifies, but its nonce point has `x >= n`, which Ethereum's one-bit `v` cannot express.
    UnrepresentableRecoveryId,
    /// `s` is in the upper half of the group order; Ethereum (EIP-2) accepts only low-s signatures.
    HighS,
    /// The recovery byte `v` of a 65-byte signature is not 0, 1, 27 or 28.
    InvalidRecoveryId(u8),
    /// No public key can be recovered from this signature and digest.
    RecoveryFailed,

    // ---- addresses ----
    /// Text that is not an address: it needs 40 hexadecimal digits, with or without `0x`.
    InvalidAddress,
    /// A mixed-case address whose capitalisation is not its EIP-55 checksum.
    InvalidChecksum,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated => f.write_str("DER signature is truncated: a length runs past the end of the data"),
            Self::UnexpectedTag { expected, found } => write!(
                f,
                "DER signature has tag 0x{found:02x} where {} (0x{expected:02x}) is required",
                tag_name(expected)
            ),
            Self::IndefiniteLength => f.write_str("DER signature uses an indefinite length, which DER forbids"),
            Self::NonMinimalLength => f.write_str("DER signature has a length encoded in more bytes than needed"),
            Self::TrailingData => f.write_str("DER signature is followed by trailing bytes"),
            Self::ExtraElement => f.write_str("DER signature SEQUENCE has content after its two INTEGERs"),
            Self::EmptyInteger(c) => write!(f, "DER signature INTEGER {c} is empty"),
            Self::NegativeInteger(c) => write!(f, "DER signature INTEGER {c} is negative"),
            Self::NonMinimalInteger(c) => {
                write!(f, "DER signature INTEGER {c} has a redundant leading zero byte")
            }
            Self::IntegerTooLarge(c) => write!(f, "DER signature INTEGER {c} is longer than 32 bytes"),
            Self::ZeroScalar(c) => write!(f, "signature {c} is zero"),
            Self::ScalarOutOfRange(c) => {
                write!(f, "signature {c} is not below the secp256k1 group order")
            }
            Self::InvalidLength { expected, found } => {
                write!(f, "expected {expected} bytes, found {found}")
            }
            Self::Spki(kind) => write!(f, "malformed SubjectPublicKeyInfo: {kind}"),
            Self::UnsupportedAlgorithm(algorithm) => write!(
                f,
                "public key is {algorithm}, not an elliptic-curve key; Ethereum needs an ECC_SECG_P256K1 (secp256k1) key"
            ),
            Self::UnsupportedCurve(curve) => {
                write!(f, "public key is on curve {curve}, not secp256k1; Ethereum needs an ECC_SECG_P256K1 key")
            }
            Self::CurveNotNamed => f.write_str(
                "elliptic-curve key parameters are not a named curve; only namedCurve secp256k1 is accepted",
            ),
            Self::InvalidPoint => {
                f.write_str("public key is not a valid secp256k1 point (SEC1 uncompressed or compressed, on the curve)")
            }
            Self::VerificationFailed => f.write_str("signature does not verify against the public key and digest"),
            Self::UnrepresentableRecoveryId => f.write_str(
                "signature verifies but its nonce point has x >= n, which an Ethereum recovery id cannot express",
            ),
            Self::HighS => f.write_str("signature s is not in the lower half of the group order (EIP-2)"),
            Self::InvalidRecoveryId(v) => {
                write!(f, "recovery byte v is {v}; expected 0, 1, 27 or 28")
            }
            Self::RecoveryFailed => f.write_str("no public key can be recovered from this signature and digest"),
            Self::InvalidAddress => {
                f.write_str("not an address: expected 40 hexadecimal digits, optionally prefixed by 0x")
            }
            Self::InvalidChecksum => f.write_str("mixed-case address does not match its EIP-55 checksum"),
        }
    }
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        crate::signature::SEQUENCE => "SEQUENCE",
        crate::signature::INTEGER => "INTEGER",
        _ => "another tag",
    }
}

impl From<der::Error> for Error {
    fn from(error: der::Error) -> Self {
        let kind = ErrorKind::Spki(error.kind());
        match error.position() {
            Some(position) => Self::at(kind, usize::try_from(u32::from(position)).unwrap_or(usize::MAX)),
            None => Self::new(kind),
        }
    }
}
