#![doc = include_str!("../README.md")]

pub mod audit;
pub mod iam;
mod manager;
pub mod units;

pub use ethkms_eth::NodeUrl;
pub use manager::{BackendSettings, ChainSettings, Wallet, WalletManager};

/// The AWS KMS backend.
pub use ethkms_aws as aws;
/// Key backends: the trait, handles, the in-memory backend.
pub use ethkms_backend as backend;
/// The `no_std` core: parsing, verification, addresses.
pub use ethkms_core as core;
/// The alloy signer and chain helpers.
pub use ethkms_eth as eth;
/// The PKCS#11 backend (HSMs).
pub use ethkms_pkcs11 as pkcs11;
