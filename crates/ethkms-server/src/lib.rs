#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "service")]
mod app;
#[cfg(feature = "service")]
pub mod approvals;
#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "service")]
mod deposits;
#[cfg(feature = "service")]
pub mod journal;
#[cfg(feature = "service")]
pub mod limits;
#[cfg(feature = "service")]
mod metrics;
pub mod nonces;
pub mod policy;
#[cfg(feature = "service")]
mod probes;
pub mod rpc;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
mod shared;
#[cfg(feature = "service")]
pub mod webhooks;
pub mod withdrawals;
