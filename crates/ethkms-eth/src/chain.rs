//! Chain helpers on any alloy [`Provider`]: balances, nonces, fees (EIP-1559, or the gas price on chains
//! without a base fee), gas, sending and waiting for the receipt, and ERC-20 tokens.

use std::time::Duration;

use alloy_network::Ethereum;
use alloy_primitives::utils::format_units;
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::{PendingTransactionBuilder, Provider};
use alloy_rpc_types_eth::{BlockNumberOrTag, TransactionReceipt, TransactionRequest};
use alloy_sol_types::{SolCall, sol};

use crate::error::SignerError;

sol! {
    /// The ERC-20 functions withdrawal systems use.
    #[allow(missing_docs)]
    interface IERC20 {
        function balanceOf(address owner) external view returns (uint256);
        function decimals() external view returns (uint8);
        function symbol() external view returns (string);
        function transfer(address to, uint256 amount) external returns (bool);
    }
}

/// An amount of ether in wei.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Balance {
    /// The amount in wei.
    pub wei: U256,
}

impl Balance {
    /// The amount in ether, all 18 decimals, e.g. `"1.500000000000000000"`.
    #[must_use]
    pub fn ether(&self) -> String {
        format_units(self.wei, 18).unwrap_or_else(|_| self.wei.to_string())
    }
}

/// The balance of `address`, in wei.
///
/// # Errors
/// [`SignerError::Rpc`].
pub async fn balance<P: Provider>(provider: &P, address: Address) -> Result<Balance, SignerError> {
    Ok(Balance { wei: provider.get_balance(address).await? })
}

/// The next nonce of `address`, counting its transactions still in the pool.
///
/// # Errors
/// [`SignerError::Rpc`].
pub async fn nonce<P: Provider>(provider: &P, address: Address) -> Result<u64, SignerError> {
    Ok(provider.get_transaction_count(address).pending().await?)
}

/// What to pay for gas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fees {
    /// EIP-1559 fees, on chains with a base fee.
    Eip1559 {
        /// The most paid per gas, base fee included.
        max_fee_per_gas: u128,
        /// The tip per gas.
        max_priority_fee_per_gas: u128,
    },
    /// A legacy gas price, on chains without a base fee.
    Legacy {
        /// The price per gas.
        gas_price: u128,
    },
}

impl Fees {
    /// (max fee per gas, priority fee per gas); a legacy gas price is both.
    #[must_use]
    pub const fn max_and_priority(self) -> (u128, u128) {
        match self {
            Self::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => (max_fee_per_gas, max_priority_fee_per_gas),
            Self::Legacy { gas_price } => (gas_price, gas_price),
        }
    }

    /// Sets these fees on `request` (EIP-1559 fees make it a type-2 transaction unless it already has
    /// a type that carries them).
    #[must_use]
    pub fn apply(self, request: TransactionRequest) -> TransactionRequest {
        match self {
            Self::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => {
                request.max_fee_per_gas(max_fee_per_gas).max_priority_fee_per_gas(max_priority_fee_per_gas)
            }
            Self::Legacy { gas_price } => request.gas_price(gas_price),
        }
    }
}

/// The fees to pay now: EIP-1559 estimates where the latest block has a base fee, else the node's gas
/// price (for chains without EIP-1559).
///
/// # Errors
/// [`SignerError::Rpc`].
pub async fn fees<P: Provider>(provider: &P) -> Result<Fees, SignerError> {
    let latest = provider
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await?
        .ok_or_else(|| SignerError::Rpc("the node has no latest block".into()))?;
    if latest.header.base_fee_per_gas.is_some() {
        let estimate = provider.estimate_eip1559_fees().await?;
        Ok(Fees::Eip1559 {
            max_fee_per_gas: estimate.max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_priority_fee_per_gas,
        })
    } else {
        Ok(Fees::Legacy { gas_price: provider.get_gas_price().await? })
    }
}

/// The gas `request` needs, as the node estimates it.
///
/// # Errors
/// [`SignerError::Rpc`], for instance when the transaction would revert.
pub async fn estimate_gas<P: Provider>(provider: &P, request: &TransactionRequest) -> Result<u64, SignerError> {
    Ok(provider.estimate_gas(request.clone()).await?)
}

/// Sends `request` through `provider` (whose wallet signs it; fees are filled by [`fees`] unless the
/// request has them) and waits up to `timeout` for a successful receipt.
///
/// # Errors
/// [`SignerError::Rpc`] if the node refuses it, [`SignerError::ReceiptTimeout`] if it is not mined in
/// time, [`SignerError::Reverted`] if it is mined but fails.
pub async fn send_and_wait<P: Provider>(
    provider: &P,
    request: TransactionRequest,
    timeout: Duration,
) -> Result<TransactionReceipt, SignerError> {
    let request = with_fees(provider, request).await?;
    wait_for_receipt(provider.send_transaction(request).await?, timeout).await
}

/// `request` with [`fees`] applied, unless it already has a gas price or a max fee.
///
/// # Errors
/// [`SignerError::Rpc`].
pub async fn with_fees<P: Provider>(
    provider: &P,
    request: TransactionRequest,
) -> Result<TransactionRequest, SignerError> {
    let has_fees = request.gas_price.is_some() || request.max_fee_per_gas.is_some();
    if has_fees { Ok(request) } else { Ok(fees(provider).await?.apply(request)) }
}

/// Completes `request`, which must have `from`, with what it lacks: the sender's next nonce, the gas
/// the node estimates, and fees ([`with_fees`]). Fields already set are kept.
///
/// # Errors
/// [`SignerError::InvalidArgument`] without `from`; [`SignerError::Rpc`].
pub async fn fill_request<P: Provider>(
    provider: &P,
    mut request: TransactionRequest,
) -> Result<TransactionRequest, SignerError> {
    let from = request.from.ok_or_else(|| SignerError::InvalidArgument("the transaction needs `from`".into()))?;
    if request.nonce.is_none() {
        request.nonce = Some(nonce(provider, from).await?);
    }
    if request.gas.is_none() {
        request.gas = Some(estimate_gas(provider, &request).await?);
    }
    with_fees(provider, request).await
}

/// Sends a raw signed transaction and waits up to `timeout` for a successful receipt.
///
/// # Errors
/// As [`send_and_wait`].
pub async fn send_raw_and_wait<P: Provider>(
    provider: &P,
    raw: &[u8],
    timeout: Duration,
) -> Result<TransactionReceipt, SignerError> {
    wait_for_receipt(provider.send_raw_transaction(raw).await?, timeout).await
}

/// Waits up to `timeout` for the receipt of a sent transaction, which must be successful.
///
/// # Errors
/// [`SignerError::ReceiptTimeout`], [`SignerError::Reverted`], or [`SignerError::Rpc`].
pub async fn wait_for_receipt(
    pending: PendingTransactionBuilder<Ethereum>,
    timeout: Duration,
) -> Result<TransactionReceipt, SignerError> {
    let hash = *pending.tx_hash();
    let receipt = pending.with_timeout(Some(timeout)).get_receipt().await.map_err(|error| match error {
        alloy_provider::PendingTransactionError::TxWatcher(alloy_provider::WatchTxError::Timeout) => {
            SignerError::ReceiptTimeout { hash, timeout }
        }
        other => SignerError::Rpc(crate::url::redact_urls(&other.to_string())),
    })?;
    if receipt.status() { Ok(receipt) } else { Err(SignerError::Reverted { hash, block: receipt.block_number }) }
}

/// The ERC-20 `token` balance of `owner`, in the token's smallest unit.
///
/// # Errors
/// [`SignerError::Rpc`], also when `token` is not an ERC-20 contract.
pub async fn token_balance<P: Provider>(provider: &P, token: Address, owner: Address) -> Result<U256, SignerError> {
    let call = IERC20::balanceOfCall { owner };
    let output = provider.call(TransactionRequest::default().to(token).input(call.abi_encode().into())).await?;
    IERC20::balanceOfCall::abi_decode_returns(&output)
        .map_err(|error| SignerError::Rpc(format!("{token} did not answer balanceOf like an ERC-20 token: {error}")))
}

/// The ERC-20 `token`'s decimals.
///
/// # Errors
/// [`SignerError::Rpc`], also when `token` is not an ERC-20 contract.
pub async fn token_decimals<P: Provider>(provider: &P, token: Address) -> Result<u8, SignerError> {
    let call = IERC20::decimalsCall {};
    let output = provider.call(TransactionRequest::default().to(token).input(call.abi_encode().into())).await?;
    IERC20::decimalsCall::abi_decode_returns(&output)
        .map_err(|error| SignerError::Rpc(format!("{token} did not answer decimals like an ERC-20 token: {error}")))
}

/// The request that transfers `amount` (smallest unit) of ERC-20 `token` to `to`, to sign or send.
#[must_use]
pub fn token_transfer_request(token: Address, to: Address, amount: U256) -> TransactionRequest {
    let data: Bytes = IERC20::transferCall { to, amount }.abi_encode().into();
    TransactionRequest::default().to(token).input(data.into())
}

/// Transfers `amount` of ERC-20 `token` to `to` and waits for a successful receipt.
///
/// # Errors
/// As [`send_and_wait`]; a transfer the token refuses reverts.
pub async fn transfer_token<P: Provider>(
    provider: &P,
    token: Address,
    to: Address,
    amount: U256,
    timeout: Duration,
) -> Result<TransactionReceipt, SignerError> {
    send_and_wait(provider, token_transfer_request(token, to, amount), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ether_is_formatted_with_all_decimals() {
        let balance = Balance { wei: U256::from(1_500_000_000_000_000_000u128) };
        assert_eq!(balance.ether(), "1.500000000000000000");
        assert_eq!(Balance { wei: U256::ZERO }.ether(), "0.000000000000000000");
    }

    #[test]
    fn transfer_calldata_is_the_erc20_selector_and_arguments() {
        let to = Address::repeat_byte(0x11);
        let request = token_transfer_request(Address::repeat_byte(0x22), to, U256::from(5));
        let input = request.input.input().cloned().unwrap_or_default();
        assert_eq!(&input[..4], &[0xa9, 0x05, 0x9c, 0xbb]);
        assert_eq!(input.len(), 4 + 32 + 32);
        assert_eq!(&input[16..36], to.as_slice());
    }

    /// A chain without EIP-1559 (its blocks have no base fee) gets the node's gas price.
    #[tokio::test]
    async fn fees_fall_back_to_the_gas_price_without_a_base_fee() {
        let asserter = alloy_provider::transport::mock::Asserter::new();
        let provider = alloy_provider::ProviderBuilder::new().connect_mocked_client(asserter.clone());
        let mut block = alloy_rpc_types_eth::Block::<alloy_rpc_types_eth::Transaction>::default();
        block.header.inner.base_fee_per_gas = None;
        asserter.push_success(&block);
        asserter.push_success(&U256::from(3_000_000_000u64));
        assert_eq!(fees(&provider).await.unwrap(), Fees::Legacy { gas_price: 3_000_000_000 });
        asserter.push_failure_msg("no such block");
        assert!(matches!(fees(&provider).await, Err(SignerError::Rpc(_))));
    }

    #[test]
    fn fees_apply_to_requests() {
        let request = Fees::Legacy { gas_price: 7 }.apply(TransactionRequest::default());
        assert_eq!(request.gas_price, Some(7));
        let request =
            Fees::Eip1559 { max_fee_per_gas: 9, max_priority_fee_per_gas: 2 }.apply(TransactionRequest::default());
        assert_eq!((request.max_fee_per_gas, request.max_priority_fee_per_gas), (Some(9), Some(2)));
    }
}
