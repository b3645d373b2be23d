#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod chain;
mod error;
mod signer;
mod url;

pub use error::SignerError;
pub use signer::{KmsSigner, typed_data_hash};
pub use url::{InvalidNodeUrl, NodeUrl, Url, redact_urls};

/// The backend layer, re-exported so that one dependency is enough.
pub use ethkms_backend;
