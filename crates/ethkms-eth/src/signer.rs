//! `KmsSigner`: an alloy [`Signer`] and [`TxSigner`] whose key lives in a KMS.

use std::fmt;
use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxLegacy};
use alloy_dyn_abi::TypedData;
use alloy_eips::eip7702::{Authorization, SignedAuthorization};
use alloy_network::TxSigner;
use alloy_primitives::{Address, B256, ChainId, Signature, U256};
use alloy_signer::Signer;
use async_trait::async_trait;
use ethkms_backend::{KeyBackend, KeyHandle, KeyRef};

use crate::error::SignerError;

/// An Ethereum signer whose private key never leaves the key service.
///
/// It implements alloy's [`Signer`] (hashes, EIP-191 messages, EIP-712 typed data) and
/// [`TxSigner<Signature>`], so it goes wherever a local signer goes: `EthereumWallet::from(signer)`,
/// `ProviderBuilder::new().wallet(signer)`. Every signature is one KMS `Sign` request, checked by
/// ethkms-core against the key's public key (strict DER, low-s, y-parity) before it is returned.
///
/// Transactions are refused before any KMS request when their chain id differs from the signer's; a
/// legacy transaction without a chain id (replayable everywhere) is signed only through
/// [`sign_legacy_pre_eip155`](Self::sign_legacy_pre_eip155).
///
/// ```
/// use std::sync::Arc;
/// use alloy_signer::Signer;
/// use ethkms_backend::{CreateKeyRequest, KeyBackend, MemoryBackend};
/// use ethkms_eth::KmsSigner;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
/// backend.create_key(&CreateKeyRequest::new().alias("hot")).await?;
/// let signer = KmsSigner::new(backend, "alias/hot".parse()?, Some(1)).await?;
///
/// let signature = signer.sign_message(b"hello").await?;
/// assert_eq!(signature.recover_address_from_msg(b"hello")?, signer.address());
/// let wallet = alloy_network::EthereumWallet::from(signer);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct KmsSigner {
    handle: KeyHandle,
    address: Address,
    chain_id: Option<ChainId>,
}

impl KmsSigner {
    /// Opens `key` on `backend` (one `GetPublicKey`) for chain `chain_id`.
    ///
    /// # Errors
    /// [`SignerError::ZeroChainId`] for chain id 0 (before any request); the backend's errors; a key that is
    /// not a secp256k1 signing key.
    pub async fn new(
        backend: Arc<dyn KeyBackend>,
        key: KeyRef,
        chain_id: Option<ChainId>,
    ) -> Result<Self, SignerError> {
        if chain_id == Some(0) {
            return Err(SignerError::ZeroChainId);
        }
        Ok(Self::from_handle(KeyHandle::open(backend, key).await?, chain_id))
    }

    /// A signer on an opened key handle. A signer given chain id 0 (here or by
    /// [`set_chain_id`](Signer::set_chain_id)) refuses every transaction and authorization with
    /// [`SignerError::ZeroChainId`]: 0 names no chain.
    #[must_use]
    pub fn from_handle(handle: KeyHandle, chain_id: Option<ChainId>) -> Self {
        let address = Address::from(handle.address().0);
        Self { handle, address, chain_id }
    }

    /// The key handle.
    #[must_use]
    pub fn handle(&self) -> &KeyHandle {
        &self.handle
    }

    /// Signs a 32-byte digest as it is: one KMS request, verified before it is returned.
    ///
    /// # Errors
    /// The backend's errors, including [`BackendError::InvalidSignature`](ethkms_backend::BackendError::InvalidSignature).
    pub async fn sign_digest(&self, digest: &B256) -> Result<Signature, SignerError> {
        let signature = self.handle.sign_digest(&digest.0).await?;
        Ok(Signature::from_scalars_and_parity(
            B256::from(signature.r()),
            B256::from(signature.s()),
            signature.y_parity(),
        ))
    }

    /// Signs the JSON of `eth_signTypedData_v4` (EIP-712). The JSON is parsed and hashed first: bad
    /// JSON or a message that does not match its types is an error, and KMS is not asked.
    ///
    /// # Errors
    /// [`SignerError::TypedData`], or the backend's errors.
    pub async fn sign_typed_data_json(&self, json: &str) -> Result<Signature, SignerError> {
        let digest = typed_data_hash(json)?;
        self.sign_digest(&digest).await
    }

    /// Signs an EIP-7702 authorization for the signer's chain.
    ///
    /// # Errors
    /// [`SignerError::AuthorizationChainMismatch`] (before any KMS request) if it is for another chain or
    /// for every chain (0), [`SignerError::ZeroChainId`] if the signer's chain id is 0,
    /// [`SignerError::MissingChainId`], or the backend's errors.
    pub async fn sign_authorization(&self, authorization: Authorization) -> Result<SignedAuthorization, SignerError> {
        let chain_id = self.chain_id.ok_or(SignerError::MissingChainId)?;
        if chain_id == 0 {
            return Err(SignerError::ZeroChainId);
        }
        if authorization.chain_id != U256::from(chain_id) {
            return Err(SignerError::AuthorizationChainMismatch {
                signer: self.chain_id,
                authorization: authorization.chain_id.saturating_to(),
            });
        }
        self.sign_authorization_unchecked(authorization).await
    }

    /// Signs an EIP-7702 authorization with chain id 0, which is valid on every chain: it delegates
    /// the account to `authorization.address` wherever it is presented. Only for that purpose.
    ///
    /// # Errors
    /// [`SignerError::AuthorizationChainMismatch`] unless the chain id is 0; the backend's errors.
    pub async fn sign_authorization_for_any_chain(
        &self,
        authorization: Authorization,
    ) -> Result<SignedAuthorization, SignerError> {
        if !authorization.chain_id.is_zero() {
            return Err(SignerError::AuthorizationChainMismatch {
                signer: self.chain_id,
                authorization: authorization.chain_id.saturating_to(),
            });
        }
        self.sign_authorization_unchecked(authorization).await
    }

    async fn sign_authorization_unchecked(
        &self,
        authorization: Authorization,
    ) -> Result<SignedAuthorization, SignerError> {
        let signature = self.sign_digest(&authorization.signature_hash()).await?;
        Ok(authorization.into_signed(signature))
    }

    /// Signs a legacy transaction *without* EIP-155 replay protection: valid on every chain that
    /// accepts pre-EIP-155 transactions. Only for that purpose (deterministic deployments, say).
    ///
    /// # Errors
    /// [`SignerError::InvalidArgument`] if the transaction has a chain id; the backend's errors.
    pub async fn sign_legacy_pre_eip155(&self, transaction: &mut TxLegacy) -> Result<Signature, SignerError> {
        if transaction.chain_id.is_some() {
            return Err(SignerError::InvalidArgument(
                "sign_legacy_pre_eip155 signs only transactions without a chain id".into(),
            ));
        }
        self.sign_digest(&transaction.signature_hash()).await
    }
}

/// The EIP-712 signing hash of `eth_signTypedData_v4` JSON.
///
/// # Errors
/// [`SignerError::TypedData`] naming what is wrong.
pub fn typed_data_hash(json: &str) -> Result<B256, SignerError> {
    let typed_data: TypedData = serde_json::from_str(json).map_err(|error| {
        SignerError::TypedData(format!(
            "not eth_signTypedData_v4 JSON ({error}); expected an object with types, primaryType, domain and message"
        ))
    })?;
    typed_data
        .eip712_signing_hash()
        .map_err(|error| SignerError::TypedData(format!("the message does not match its types: {error}")))
}

impl fmt::Debug for KmsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsSigner")
            .field("key", &self.handle.key())
            .field("key_id", &self.handle.key_id())
            .field("address", &format_args!("{}", self.address))
            .field("chain_id", &self.chain_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Signer for KmsSigner {
    async fn sign_hash(&self, hash: &B256) -> alloy_signer::Result<Signature> {
        self.sign_digest(hash).await.map_err(Into::into)
    }

    fn address(&self) -> Address {
        self.address
    }

    fn chain_id(&self) -> Option<ChainId> {
        self.chain_id
    }

    fn set_chain_id(&mut self, chain_id: Option<ChainId>) {
        self.chain_id = chain_id;
    }
}

#[async_trait]
impl TxSigner<Signature> for KmsSigner {
    fn address(&self) -> Address {
        self.address
    }

    async fn sign_transaction(
        &self,
        transaction: &mut dyn SignableTransaction<Signature>,
    ) -> alloy_signer::Result<Signature> {
        if self.chain_id == Some(0) {
            return Err(SignerError::ZeroChainId.into());
        }
        if let Some(signer) = self.chain_id {
            // Sets the chain id of a legacy transaction that has none (EIP-155 protection); refuses a
            // transaction for another chain. Either way, before any KMS request.
            if !transaction.set_chain_id_checked(signer) {
                let transaction = transaction.chain_id().unwrap_or_default();
                return Err(SignerError::ChainIdMismatch { signer, transaction }.into());
            }
        } else if transaction.chain_id().is_none() {
            return Err(SignerError::ReplayableLegacyTransaction.into());
        }
        self.sign_hash(&transaction.signature_hash()).await
    }
}

alloy_network::impl_into_wallet!(KmsSigner);
