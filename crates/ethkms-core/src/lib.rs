#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod error;
mod ethereum;
mod hash;
mod hex;
mod inverse;
mod key;
#[cfg(feature = "alloc")]
mod precomputed;
mod signature;

pub use address::{Address, ChecksumAddress};
pub use error::{Component, Error, ErrorKind};
pub use ethereum::Signature;
pub use hash::{eip191_hash_message, keccak256};
pub use key::{Curve, ID_EC_PUBLIC_KEY, KeyAlgorithm, PublicKey, SECP256K1, SPKI_DER_LEN};
#[cfg(feature = "alloc")]
pub use precomputed::PrecomputedKey;
pub use signature::{DerSignature, EcdsaSignature, MAX_DER_LEN};

/// The elliptic-curve library this crate computes with, re-exported so that callers use the same version.
pub use k256;
