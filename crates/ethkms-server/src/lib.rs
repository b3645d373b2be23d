#![doc = include_str!("../README.md")]

pub mod config;
pub mod policy;
pub mod service;
