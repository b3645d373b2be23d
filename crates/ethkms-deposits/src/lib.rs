#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod address;
pub mod contracts;
pub mod scan;
pub mod sweep;

pub use address::{DepositAddresses, MAX_REFERENCE_CHARS, Reference, ReferenceError};
pub use scan::{Asset, Deposit, DepositId, Follower, ScanError, ScannedBlock, Seen, scan_block};
pub use sweep::{Holding, HoldingError, SweepBatch, SweepCosts, SweepError, read_holding};
