//! Errors of the Ethereum layer: the backend's, plus what can go wrong with transactions, typed data
//! and the node.

use std::time::Duration;

use alloy_primitives::{B256, ChainId};
use ethkms_backend::BackendError;

/// What went wrong while signing or sending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The key backend failed (not found, disabled, throttled, an invalid signature, …).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A transaction for another chain than the signer's. Refused before any KMS request.
    #[error("the transaction is for chain {transaction}, the signer for chain {signer}; refusing to sign it")]
    ChainIdMismatch {
        /// The signer's chain id.
        signer: ChainId,
        /// The transaction's chain id.
        transaction: ChainId,
    },
    /// A legacy transaction without a chain id, which would be valid on every chain (pre-EIP-155).
    #[error(
        "a legacy transaction without a chain id can be replayed on every chain (pre-EIP-155); give the signer or the \
         transaction a chain id, or use sign_legacy_pre_eip155 to sign one on purpose"
    )]
    ReplayableLegacyTransaction,
    /// An EIP-7702 authorization for another chain than the signer's, or for every chain (chain id 0).
    #[error(
        "the authorization is for chain {authorization}, the signer for chain {signer:?}{}",
        if *authorization == 0 { " (chain id 0 is valid on every chain: use sign_authorization_for_any_chain to mean it)" } else { "" }
    )]
    AuthorizationChainMismatch {
        /// The signer's chain id.
        signer: Option<ChainId>,
        /// The authorization's chain id.
        authorization: u64,
    },
    /// Chain id 0 names no chain: a signer for it would sign EIP-7702 authorizations valid on every chain
    /// (a hostile node answering `eth_chainId` with `0x0`, say). Refused before any KMS request.
    #[error(
        "chain id 0 names no chain (an EIP-7702 authorization for chain 0 is valid on every chain); give the signer \
         the chain's id, or use sign_authorization_for_any_chain to mean every chain"
    )]
    ZeroChainId,
    /// The signer has no chain id but the operation needs one.
    #[error("the signer has no chain id; set one with with_chain_id")]
    MissingChainId,
    /// The typed data (EIP-712) is not valid JSON, or does not match its own types. Found before any
    /// KMS request.
    #[error("invalid EIP-712 typed data: {0}")]
    TypedData(String),
    /// The Ethereum node returned an error or could not be reached (URLs in the text are hidden).
    #[error("Ethereum node: {0}")]
    Rpc(String),
    /// A transaction was not mined in time. It may still be mined later: check the hash.
    #[error(
        "transaction {hash} was not mined within {timeout:?}; it may still be mined: check it before sending again"
    )]
    ReceiptTimeout {
        /// The transaction hash.
        hash: B256,
        /// How long was waited.
        timeout: Duration,
    },
    /// A transaction was mined but reverted.
    #[error("transaction {hash} reverted (receipt status 0) in block {block:?}")]
    Reverted {
        /// The transaction hash.
        hash: B256,
        /// The block it was mined in.
        block: Option<u64>,
    },
    /// An argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<SignerError> for alloy_signer::Error {
    fn from(error: SignerError) -> Self {
        match error {
            SignerError::ChainIdMismatch { signer, transaction } => {
                Self::TransactionChainIdMismatch { signer, tx: transaction }
            }
            other => Self::other(other),
        }
    }
}

/// Back from alloy's error, for what went through alloy's signing traits (a transaction built by
/// `NetworkTransactionBuilder`, say): our own error comes back with its kind, a chain id mismatch as
/// [`SignerError::ChainIdMismatch`], anything else as [`SignerError::InvalidArgument`].
impl From<alloy_signer::Error> for SignerError {
    fn from(error: alloy_signer::Error) -> Self {
        match error {
            alloy_signer::Error::TransactionChainIdMismatch { signer, tx } => {
                Self::ChainIdMismatch { signer, transaction: tx }
            }
            alloy_signer::Error::Other(other) => match other.downcast::<Self>() {
                Ok(ours) => *ours,
                Err(other) => Self::InvalidArgument(other.to_string()),
            },
            other => Self::InvalidArgument(other.to_string()),
        }
    }
}

/// A node error, with any URL in its text (transport errors quote the URL, which may hold an API key)
/// replaced by `<url>`.
impl<E: std::fmt::Display> From<alloy_provider::transport::RpcError<E>> for SignerError {
    fn from(error: alloy_provider::transport::RpcError<E>) -> Self {
        Self::Rpc(crate::url::redact_urls(&error.to_string()))
    }
}
