#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Nothing a token answers may panic this crate: failures are `BackendError`s.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod backend;
mod config;
mod errors;
mod metadata;
mod objects;
mod signing;
mod spki;
mod token;

pub use backend::Pkcs11Backend;
pub use config::{CallPlacement, DEFAULT_MAX_SESSIONS, DEFAULT_PIN_ENV, PinSource, Pkcs11Config, UnknownPlacement};
pub use token::exclusive_writes;

/// The PKCS#11 client this crate drives, re-exported for callers that inspect a token themselves.
pub use cryptoki;
