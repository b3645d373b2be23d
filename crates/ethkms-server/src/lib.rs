#![doc = include_str!("../README.md")]

#[cfg(feature = "service")]
pub mod config;
pub mod policy;
pub mod rpc;
#[cfg(feature = "service")]
pub mod service;
