//! `WalletManager`: one object that holds a key backend and a chain connection and does what a wallet
//! service does: create wallets, read balances, sign and send.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use alloy_eips::eip2718::Encodable2718;
use alloy_network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy_primitives::{Address, Bytes, ChainId, Signature, U256};
use alloy_provider::{DynProvider, Provider, ProviderBuilder};
use alloy_rpc_types_eth::{TransactionReceipt, TransactionRequest};
use alloy_signer::Signer;
use ethkms_aws::{AwsKmsBackend, AwsKmsConfig, StaticCredentials};
use ethkms_backend::{CreateKeyRequest, KeyBackend, KeyRef, Keyring, MemoryBackend};
use ethkms_eth::{KmsSigner, NodeUrl, SignerError, chain};

/// Where the keys live.
#[derive(Clone, Debug)]
pub enum BackendSettings {
    /// AWS KMS (or LocalStack): the standard AWS configuration with these overrides.
    Aws(AwsKmsConfig),
    /// A PKCS#11 token (an HSM; SoftHSM2 in tests): the module, the token's label and where the PIN comes
    /// from.
    Pkcs11(ethkms_pkcs11::Pkcs11Config),
    /// Keys in this process's memory, gone when it exits: for tests and trying things out.
    Memory {
        /// A seed for reproducible keys; random if `None`.
        seed: Option<u64>,
    },
}

impl BackendSettings {
    /// AWS KMS configured from the environment only.
    #[must_use]
    pub fn aws_from_env() -> Self {
        Self::Aws(AwsKmsConfig::default())
    }

    /// AWS KMS at `endpoint` with static credentials: LocalStack, for instance.
    #[must_use]
    pub fn aws_endpoint(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        credentials: StaticCredentials,
    ) -> Self {
        Self::Aws(AwsKmsConfig::with_endpoint(endpoint, region, credentials))
    }

    /// Builds the backend.
    ///
    /// # Errors
    /// [`SignerError::Backend`] if the AWS configuration is incomplete (no region), or the PKCS#11 token
    /// cannot be reached or refuses the login.
    pub async fn connect(self) -> Result<Arc<dyn KeyBackend>, SignerError> {
        Ok(match self {
            Self::Aws(config) => Arc::new(AwsKmsBackend::new(config).await?),
            Self::Pkcs11(config) => Arc::new(ethkms_pkcs11::Pkcs11Backend::connect(config).await?),
            Self::Memory { seed: Some(seed) } => Arc::new(MemoryBackend::with_seed(seed)),
            Self::Memory { seed: None } => Arc::new(MemoryBackend::new()),
        })
    }
}

/// The Ethereum node to talk to. Its `Debug` shows the node's scheme, host and port, never the API key
/// a provider's URL carries (see [`NodeUrl`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSettings {
    /// The node's JSON-RPC URL (`http://` or `https://`).
    pub rpc_url: NodeUrl,
    /// The chain id; asked from the node when `None`.
    pub chain_id: Option<ChainId>,
    /// How long to wait for a transaction to be mined.
    pub receipt_timeout: Duration,
    /// How long one request to the node may take before it fails (a node that never answers must not
    /// stall the caller).
    pub request_timeout: Duration,
}

impl ChainSettings {
    /// A node at `rpc_url`, its chain id asked from it, receipts awaited for 120 s, each request at most
    /// 30 s.
    #[must_use]
    pub fn new(rpc_url: NodeUrl) -> Self {
        Self {
            rpc_url,
            chain_id: None,
            receipt_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A newly created wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wallet {
    /// Its Ethereum address.
    pub address: Address,
    /// The KMS key id.
    pub key_id: String,
    /// The KMS key ARN.
    pub arn: String,
    /// The alias that names it, if one was asked for.
    pub alias: Option<String>,
}

/// Wallets whose keys live in a key backend, on one chain.
///
/// ```
/// use ethkms::{BackendSettings, ChainSettings, WalletManager};
/// use ethkms::backend::CreateKeyRequest;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let manager = WalletManager::new(
///     BackendSettings::Memory { seed: Some(7) },
///     ChainSettings { chain_id: Some(1), ..ChainSettings::new("http://127.0.0.1:8545".parse()?) },
/// )
/// .await?;
/// let wallet = manager.create_wallet(CreateKeyRequest::new().alias("hot-wallet")).await?;
/// let signature = manager.sign_message(&"alias/hot-wallet".parse()?, b"hello").await?;
/// assert_eq!(signature.recover_address_from_msg(b"hello")?, wallet.address);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct WalletManager {
    keyring: Keyring,
    chain: ChainSettings,
    provider: DynProvider,
}

impl WalletManager {
    /// Connects to the key backend and prepares the node connection (nothing is sent to the node yet).
    ///
    /// # Errors
    /// [`SignerError::Backend`] for backend configuration problems.
    pub async fn new(backend: BackendSettings, chain: ChainSettings) -> Result<Self, SignerError> {
        let backend = backend.connect().await?;
        Self::with_backend(backend, chain)
    }

    /// A manager over a backend you built.
    ///
    /// # Errors
    /// None today; kept fallible for connection settings to come.
    pub fn with_backend(backend: Arc<dyn KeyBackend>, chain: ChainSettings) -> Result<Self, SignerError> {
        let url = chain.rpc_url.expose().clone();
        let timeout = chain.request_timeout;
        // A client that cannot be built with the timeout (no TLS backend) is the default one.
        let provider = ProviderBuilder::new()
            .with_reqwest(url, |builder| builder.timeout(timeout).build().unwrap_or_default())
            .erased();
        Ok(Self { keyring: Keyring::new(backend), chain, provider })
    }

    /// The key backend.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn KeyBackend> {
        self.keyring.backend()
    }

    /// The node connection (without a wallet).
    #[must_use]
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Creates a wallet: a new secp256k1 key in the backend, with the request's alias and tags.
    ///
    /// # Errors
    /// The backend's errors.
    pub async fn create_wallet(&self, request: CreateKeyRequest) -> Result<Wallet, SignerError> {
        let info = self.backend().create_key(&request).await?;
        let address = info.address.map(|address| Address::from(address.0)).ok_or_else(|| {
            SignerError::InvalidArgument(format!("key {} is not a secp256k1 key and has no address", info.key_id))
        })?;
        Ok(Wallet { address, key_id: info.key_id, arn: info.arn, alias: info.alias })
    }

    /// The address of `key`.
    ///
    /// # Errors
    /// The backend's errors.
    pub async fn address(&self, key: &KeyRef) -> Result<Address, SignerError> {
        Ok(Address::from(self.keyring.address(key).await?.0))
    }

    /// The chain id: the configured one, else the node's.
    ///
    /// # Errors
    /// [`SignerError::Rpc`] if it has to be asked and the node cannot answer.
    pub async fn chain_id(&self) -> Result<ChainId, SignerError> {
        match self.chain.chain_id {
            Some(chain_id) => Ok(chain_id),
            None => Ok(self.provider.get_chain_id().await?),
        }
    }

    /// A signer for `key` on this chain, usable anywhere alloy takes one.
    ///
    /// # Errors
    /// The backend's errors; [`SignerError::Rpc`] if the chain id has to be asked and cannot be.
    pub async fn signer(&self, key: &KeyRef) -> Result<KmsSigner, SignerError> {
        let handle = self.keyring.handle(key).await?;
        Ok(KmsSigner::from_handle(handle, Some(self.chain_id().await?)))
    }

    /// The ether balance of `key`'s address.
    ///
    /// # Errors
    /// The backend's errors, [`SignerError::Rpc`].
    pub async fn balance(&self, key: &KeyRef) -> Result<chain::Balance, SignerError> {
        chain::balance(&self.provider, self.address(key).await?).await
    }

    /// Signs an EIP-191 personal message with `key`.
    ///
    /// # Errors
    /// The backend's errors.
    pub async fn sign_message(&self, key: &KeyRef, message: &[u8]) -> Result<Signature, SignerError> {
        let handle = self.keyring.handle(key).await?;
        let digest = alloy_primitives::B256::from(ethkms_core::eip191_hash_message(message));
        KmsSigner::from_handle(handle, self.chain.chain_id).sign_digest(&digest).await
    }

    /// Signs `eth_signTypedData_v4` JSON with `key`.
    ///
    /// # Errors
    /// [`SignerError::TypedData`] before any KMS request for bad JSON; the backend's errors.
    pub async fn sign_typed_data(&self, key: &KeyRef, json: &str) -> Result<Signature, SignerError> {
        let handle = self.keyring.handle(key).await?;
        KmsSigner::from_handle(handle, self.chain.chain_id).sign_typed_data_json(json).await
    }

    /// Completes `request` from the node where fields are missing (nonce, gas, fees, chain id), signs
    /// it with `key` and returns the raw EIP-2718 transaction, ready for `eth_sendRawTransaction`.
    ///
    /// # Errors
    /// The backend's errors, with their kind (a throttled or disabled key is not the caller's mistake);
    /// [`SignerError::Rpc`]; [`SignerError::ChainIdMismatch`] before any KMS request for a transaction for
    /// another chain; [`SignerError::InvalidArgument`] for a request that cannot make a transaction.
    pub async fn sign_transaction(&self, key: &KeyRef, request: TransactionRequest) -> Result<Bytes, SignerError> {
        let signer = self.signer(key).await?;
        let from = Signer::address(&signer);
        let mut request = request.with_from(from);
        if request.chain_id.is_none() {
            request.set_chain_id(self.chain_id().await?);
        }
        let request = chain::fill_request(&self.provider, request).await?;
        let wallet = EthereumWallet::from(signer);
        let envelope =
            NetworkTransactionBuilder::<Ethereum>::build(request, &wallet).await.map_err(|error| match error {
                alloy_network::TransactionBuilderError::Signer(signer_error) => SignerError::from(signer_error),
                other => SignerError::InvalidArgument(format!("cannot build the transaction: {other}")),
            })?;
        Ok(envelope.encoded_2718().into())
    }

    /// Sends `value` wei from `key` to `to` and waits for the receipt.
    ///
    /// # Errors
    /// As [`sign_transaction`](Self::sign_transaction), plus [`SignerError::ReceiptTimeout`] and
    /// [`SignerError::Reverted`].
    pub async fn send(&self, key: &KeyRef, to: Address, value: U256) -> Result<TransactionReceipt, SignerError> {
        self.send_request(key, TransactionRequest::default().with_to(to).with_value(value)).await
    }

    /// Transfers `amount` (smallest unit) of ERC-20 `token` from `key` to `to` and waits for the receipt.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_token(
        &self,
        key: &KeyRef,
        token: Address,
        to: Address,
        amount: U256,
    ) -> Result<TransactionReceipt, SignerError> {
        self.send_request(key, chain::token_transfer_request(token, to, amount)).await
    }

    /// Signs `request` with `key`, sends it and waits for a successful receipt.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_request(
        &self,
        key: &KeyRef,
        request: TransactionRequest,
    ) -> Result<TransactionReceipt, SignerError> {
        let raw = self.sign_transaction(key, request).await?;
        chain::send_raw_and_wait(&self.provider, &raw, self.chain.receipt_timeout).await
    }
}

impl fmt::Debug for WalletManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletManager")
            .field("keyring", &self.keyring)
            .field("rpc_url", &self.chain.rpc_url)
            .field("chain_id", &self.chain.chain_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ethkms_backend::BackendError;

    /// A key failing at signing time keeps its error: a disabled key is not a network problem.
    #[tokio::test]
    async fn signing_errors_keep_their_kind() {
        let manager = WalletManager::new(
            BackendSettings::Memory { seed: Some(3) },
            ChainSettings { chain_id: Some(1), ..ChainSettings::new("http://127.0.0.1:9".parse().unwrap()) },
        )
        .await
        .unwrap();
        let wallet = manager.create_wallet(CreateKeyRequest::new()).await.unwrap();
        let key: KeyRef = wallet.key_id.parse().unwrap();
        manager.sign_message(&key, b"before").await.unwrap();
        manager.backend().disable_key(&key).await.unwrap();
        let error = manager.sign_message(&key, b"after").await.unwrap_err();
        assert!(matches!(error, SignerError::Backend(BackendError::Disabled { .. })), "{error:?}");
        // Through alloy's transaction builder too: the kind survives the round trip through its error.
        let request = TransactionRequest::default()
            .with_to(Address::ZERO)
            .with_nonce(0)
            .with_gas_limit(21_000)
            .with_max_fee_per_gas(2)
            .with_max_priority_fee_per_gas(1)
            .with_chain_id(1);
        let error = manager.sign_transaction(&key, request).await.unwrap_err();
        assert!(matches!(error, SignerError::Backend(BackendError::Disabled { .. })), "{error:?}");
    }

    /// Neither `Debug` nor the errors show what a provider's URL hides.
    #[tokio::test]
    async fn the_node_url_secret_never_shows() {
        let url: NodeUrl = "http://user:SECRET@127.0.0.1:9/v3/SECRET?key=SECRET".parse().unwrap();
        let chain = ChainSettings { chain_id: None, ..ChainSettings::new(url) };
        assert!(!format!("{chain:?}").contains("SECRET"), "{chain:?}");
        let manager = WalletManager::new(BackendSettings::Memory { seed: Some(4) }, chain).await.unwrap();
        assert!(!format!("{manager:?}").contains("SECRET"));
        let error = manager.chain_id().await.unwrap_err();
        assert!(matches!(error, SignerError::Rpc(_)), "{error:?}");
        assert!(!error.to_string().contains("SECRET") && !format!("{error:?}").contains("SECRET"), "{error}");
    }
}
