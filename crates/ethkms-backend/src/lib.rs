#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
#[cfg(feature = "contract")]
pub mod contract;
mod error;
mod handle;
mod memory;
mod types;

pub use backend::{KeyBackend, secp256k1_public_key};
pub use error::BackendError;
pub use handle::{KeyHandle, Keyring, RetryPolicy};
pub use memory::{Faults, MemoryBackend, RequestCounts};
pub use types::{
    CreateKeyRequest, KeyDescription, KeyFilter, KeyInfo, KeyRef, KeySpec, KeyState, KeyUsage, PublicKeyResponse, Tag,
    validate_alias,
};

/// The core layer this crate builds on, re-exported.
pub use ethkms_core;
