#![doc = include_str!("../README.md")]

#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "service")]
pub mod journal;
pub mod nonces;
pub mod policy;
pub mod rpc;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod withdrawals;
