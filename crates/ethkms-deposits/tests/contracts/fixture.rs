//! The chain the contract tests run on: the shared anvil, KMS keys on LocalStack that sign everything they
//! send with ethkms-eth's `KmsSigner`, accounts of anvil's own (impersonated: depositors, strangers, a
//! parent that sweeps), and the deposit contracts deployed, minted, called and swept.

use std::sync::Arc;
use std::time::Duration;

use alloy_network::TransactionBuilder;
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_provider::{DynProvider, Provider, ProviderBuilder};
use alloy_rpc_types_eth::{TransactionReceipt, TransactionRequest};
use alloy_signer::Signer as _;
use alloy_sol_types::{SolCall, SolValue as _};
use ethkms_backend::{KeyBackend, KeyRef};
use ethkms_deposits::contracts::{self, DEPLOY_BIT, DepositFactory, Erc20};
use ethkms_eth::{KmsSigner, SignerError, chain};
use ethkms_test_support::chain::ETHER;
use ethkms_test_support::kms::localstack_backend;
use ethkms_test_support::{Services, funded_key, unique};

alloy_sol_types::sol! {
    /// What the tests need of `TestToken` beyond an ERC-20: anyone mints.
    interface TestToken {
        function mint(address to, uint256 amount) external;
    }
}

/// anvil's chain id.
const CHAIN_ID: u64 = 31337;
/// How long a transaction may take to be mined.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The gas limit of transactions sent to be mined although they revert (so nothing estimates them first).
const REVERTING_GAS: u64 = 3_000_000;

/// `n` ether, in wei.
pub(crate) fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(ETHER)
}

/// A sweep mask: the bits of `tokens` (indices in the sweep's token list), and the deploy bit if `deploy`.
pub(crate) fn mask(deploy: bool, tokens: &[usize]) -> U256 {
    let bits = tokens.iter().fold(U256::ZERO, |mask, &token| mask | (U256::from(1) << token));
    if deploy { bits | (U256::from(1) << DEPLOY_BIT) } else { bits }
}

/// The `sweep` call's input.
pub(crate) fn sweep_input(parent: Address, salts: &[B256], masks: &[U256], tokens: &[Address]) -> Bytes {
    DepositFactory::sweepCall { parent, salts: salts.to_vec(), masks: masks.to_vec(), tokens: tokens.to_vec() }
        .abi_encode()
        .into()
}

/// The shared anvil, LocalStack's KMS, and a provider without wallet or fillers: calls, and
/// `eth_sendTransaction` from impersonated accounts (anvil fills their nonce, gas and fees).
pub(crate) struct Chain {
    services: Services,
    backend: Arc<dyn KeyBackend>,
    /// The node, without wallet.
    pub(crate) node: DynProvider,
}

/// A funded KMS key and a provider whose wallet is its `KmsSigner`.
pub(crate) struct KmsAccount {
    /// The key's address.
    pub(crate) address: Address,
    provider: DynProvider,
}

impl Chain {
    /// The services' chain and KMS.
    pub(crate) async fn new(services: Services) -> Self {
        let backend = localstack_backend(&services.kms_endpoint).await;
        let node = ProviderBuilder::default().connect_http(services.rpc_url.parse().unwrap()).erased();
        Self { services, backend, node }
    }

    /// A fresh KMS key on LocalStack, funded with 100 ether.
    pub(crate) async fn kms_account(&self) -> KmsAccount {
        let (key_id, address) = funded_key(&self.backend, &self.services.rpc_url).await;
        let signer =
            KmsSigner::new(Arc::clone(&self.backend), KeyRef::new(key_id).unwrap(), Some(CHAIN_ID)).await.unwrap();
        assert_eq!(signer.address(), address);
        let provider =
            ProviderBuilder::new().wallet(signer).connect_http(self.services.rpc_url.parse().unwrap()).erased();
        KmsAccount { address, provider }
    }

    /// A fresh address nobody holds the key of (`name` says what it is for), with nothing on it.
    pub(crate) fn fresh_address(name: &str) -> Address {
        Address::from_slice(&keccak256(unique(name))[12..])
    }

    /// A fresh address that sends through anvil (`anvil_impersonateAccount`), holding `wei`.
    pub(crate) async fn impersonated(&self, name: &str, wei: U256) -> Address {
        let address = Self::fresh_address(name);
        let _: () = self.node.raw_request("anvil_setBalance".into(), (address, wei)).await.unwrap();
        let _: () = self.node.raw_request("anvil_impersonateAccount".into(), (address,)).await.unwrap();
        address
    }

    /// Sends `request` (with `from` an impersonated account) by `eth_sendTransaction`; its receipt, mined
    /// whether it succeeded or not.
    pub(crate) async fn send_from(&self, from: Address, request: TransactionRequest) -> TransactionReceipt {
        let pending = self.node.send_transaction(request.with_from(from)).await.unwrap();
        pending.with_timeout(Some(TIMEOUT)).get_receipt().await.unwrap()
    }

    /// Sends `value` wei from impersonated `from` to `to`, which must succeed.
    pub(crate) async fn pay(&self, from: Address, to: Address, value: U256) -> TransactionReceipt {
        let receipt = self.send_from(from, TransactionRequest::default().with_to(to).with_value(value)).await;
        assert!(receipt.status(), "paying {value} wei to {to} failed: {receipt:?}");
        receipt
    }

    /// Mints `amount` of test token `token` to `to` (from impersonated `from`).
    pub(crate) async fn mint(&self, from: Address, token: Address, to: Address, amount: U256) {
        let input = TestToken::mintCall { to, amount }.abi_encode();
        let request = TransactionRequest::default().with_to(token).with_input(input);
        assert!(self.send_from(from, request).await.status(), "minting {token} to {to}");
    }

    /// The ether balance of `owner`, at `block` (the latest if `None`).
    pub(crate) async fn balance_at(&self, owner: Address, block: Option<u64>) -> U256 {
        let request = self.node.get_balance(owner);
        match block {
            Some(number) => request.number(number).await.unwrap(),
            None => request.await.unwrap(),
        }
    }

    /// The ether balance of `owner`.
    pub(crate) async fn balance(&self, owner: Address) -> U256 {
        self.balance_at(owner, None).await
    }

    /// The `token` balance of `owner`.
    pub(crate) async fn token_balance(&self, token: Address, owner: Address) -> U256 {
        self.view(token, Erc20::balanceOfCall { owner }).await
    }

    /// The code at `address`.
    pub(crate) async fn code(&self, address: Address) -> Bytes {
        self.node.get_code_at(address).await.unwrap()
    }

    /// What `call` answers at `to` (an `eth_call` that must succeed).
    pub(crate) async fn view<C: SolCall>(&self, to: Address, call: C) -> C::Return {
        let request = TransactionRequest::default().with_to(to).with_input(call.abi_encode());
        let output = self.node.call(request).await.unwrap_or_else(|error| panic!("{}: {error}", C::SIGNATURE));
        C::abi_decode_returns(&output).unwrap()
    }

    /// The revert data of `input` sent by `from` to `to` (an `eth_call` that must revert).
    pub(crate) async fn revert_data(&self, from: Address, to: Address, input: &Bytes) -> Bytes {
        let request = TransactionRequest::default().with_from(from).with_to(to).with_input(input.clone());
        match self.node.call(request).await {
            Ok(output) => panic!("{from} calling {to} did not revert (answered {output})"),
            Err(error) => {
                let payload = error.as_error_resp().unwrap_or_else(|| panic!("not a node's answer: {error}"));
                payload.as_revert_data().unwrap_or_else(|| panic!("no revert data: {payload:?}"))
            }
        }
    }

    /// Deploys a factory owned by `owner`, from `owner`: its address.
    pub(crate) async fn deploy_factory(&self, owner: &KmsAccount) -> Address {
        let receipt = owner.deploy(contracts::factory_creation_code(owner.address)).await;
        let factory = receipt.contract_address.unwrap();
        assert_eq!(self.view(factory, DepositFactory::ownerCall {}).await, owner.address);
        factory
    }

    /// Deploys a test token (`answers` false: its `transfer` returns nothing, as USDT's does), from `by`.
    pub(crate) async fn deploy_token(&self, by: &KmsAccount, name: &str, answers: bool) -> Address {
        let arguments = (name.to_owned(), name.to_owned(), answers).abi_encode_params();
        let code = [contracts::test_token_artifact().bytecode.as_ref(), &arguments].concat();
        let token = by.deploy(code.into()).await.contract_address.unwrap();
        assert_eq!(self.view(token, Erc20::balanceOfCall { owner: by.address }).await, U256::ZERO);
        token
    }

    /// The receipt of `hash`, mined.
    pub(crate) async fn receipt(&self, hash: B256) -> TransactionReceipt {
        self.node.get_transaction_receipt(hash).await.unwrap().unwrap()
    }
}

impl KmsAccount {
    /// Sends `input` to `to`, signed by the KMS key; its receipt, which must be successful.
    pub(crate) async fn send(&self, to: Address, input: Bytes) -> TransactionReceipt {
        let request = TransactionRequest::default().with_from(self.address).with_to(to).with_input(input);
        chain::send_and_wait(&self.provider, request, TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("{} calling {to}: {error}", self.address))
    }

    /// Sends `input` to `to` with a fixed gas limit, signed by the KMS key, and checks that it is mined
    /// and reverted; its receipt.
    pub(crate) async fn send_reverting(&self, chain: &Chain, to: Address, input: Bytes) -> TransactionReceipt {
        let request = TransactionRequest::default()
            .with_from(self.address)
            .with_to(to)
            .with_input(input)
            .with_gas_limit(REVERTING_GAS);
        match chain::send_and_wait(&self.provider, request, TIMEOUT).await {
            Err(SignerError::Reverted { hash, .. }) => chain.receipt(hash).await,
            other => panic!("{} calling {to}: expected a mined revert, got {other:?}", self.address),
        }
    }

    /// Deploys `code`; the receipt, which must be successful.
    async fn deploy(&self, code: Bytes) -> TransactionReceipt {
        let request = TransactionRequest::default().with_from(self.address).with_deploy_code(code);
        chain::send_and_wait(&self.provider, request, TIMEOUT).await.unwrap()
    }
}
