#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod errors;

pub use backend::AwsKmsBackend;
pub use config::{AwsKmsConfig, RetryMode, StaticCredentials};

/// The AWS SDK's KMS client crate, re-exported for [`AwsKmsBackend::from_client`].
pub use aws_sdk_kms;
/// The layer below, re-exported so that one dependency is enough.
pub use ethkms_backend;
