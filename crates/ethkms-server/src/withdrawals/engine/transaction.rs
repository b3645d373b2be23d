//! What a row's transaction is before it is signed: the request (a withdrawal's transfer, an RPC
//! client's own, a gap fill, a sweep of deposit addresses), its gas limit, its fees within the key's caps, and its nonce from the
//! allocator after the node's pending count.

use std::sync::PoisonError;
use std::time::Instant;

use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::SolCall;
use ethkms::eth::chain::{self, Fees};

use crate::journal::{Kind, SweepRequest, Withdrawal};
use crate::policy::{Asset, transferCall};
use crate::shared::{Key, Shared};
use crate::withdrawals::fees;

use super::{Engine, FEES_FOR, KeyState, Trouble};

/// The transaction that carries a withdrawal of `amount` of `asset` to `recipient`, from `from`, without
/// nonce, gas or fees.
pub(crate) fn withdrawal_request(from: Address, recipient: Address, asset: Asset, amount: U256) -> TransactionRequest {
    let (to, value, data): (Address, U256, Bytes) = match asset {
        Asset::Ether => (recipient, amount, Bytes::new()),
        Asset::Token(token) => (token, U256::ZERO, transferCall { to: recipient, amount }.abi_encode().into()),
    };
    TransactionRequest::default().from(from).to(to).value(value).input(data.into())
}

/// The JSON-RPC method and the client's transaction request of an RPC row.
pub(super) fn rpc_request(row: &Withdrawal) -> Result<(String, TransactionRequest), Trouble> {
    #[derive(serde::Deserialize)]
    struct Stored {
        method: String,
        transaction: TransactionRequest,
    }
    let text = row.request.as_deref().unwrap_or_default();
    let stored: Stored = serde_json::from_str(text)
        .map_err(|error| Trouble::Fail(format!("the stored transaction request does not parse: {error}")))?;
    Ok((stored.method, stored.transaction))
}

/// The calldata of a sweep row.
fn sweep_calldata(row: &Withdrawal) -> Result<Bytes, Trouble> {
    let text = row.request.as_deref().unwrap_or_default();
    let stored: SweepRequest = serde_json::from_str(text)
        .map_err(|error| Trouble::Fail(format!("the stored sweep does not parse: {error}")))?;
    Ok(stored.calldata)
}

/// Headroom on a sweep's gas estimate, in percent: the deposit addresses' state may change between the
/// estimate and the block (what is unused is not paid).
const SWEEP_GAS_HEADROOM_PERCENT: u64 = 10;

impl Engine {
    /// The transaction of `row`, without nonce, gas, fees or chain id (an RPC request keeps what the client
    /// gave).
    pub(super) fn request_for(&self, key: &Key, row: &Withdrawal) -> Result<TransactionRequest, Trouble> {
        let from = key.address();
        Ok(match row.kind {
            Kind::Withdrawal => withdrawal_request(from, row.recipient, row.asset, row.amount),
            Kind::GapFill => TransactionRequest::default().from(from).to(from).value(U256::ZERO),
            Kind::Sweep => TransactionRequest::default()
                .from(from)
                .to(row.recipient)
                .value(U256::ZERO)
                .input(sweep_calldata(row)?.into()),
            Kind::Rpc => {
                let mut request = rpc_request(row)?.1;
                request.from = Some(from);
                request.nonce = None;
                request
            }
        })
    }

    /// The gas limit: 21,000 for a gap fill and for ether sent to an address without code (what any estimate
    /// gives, without making the node execute it), the client's for an RPC request that has one, else the
    /// node's estimate (with [`SWEEP_GAS_HEADROOM_PERCENT`] more for a sweep).
    pub(super) async fn gas(&self, row: &Withdrawal, request: &TransactionRequest) -> Result<u64, Trouble> {
        let provider = self.shared.manager.provider();
        match row.kind {
            Kind::GapFill => return Ok(21_000),
            Kind::Rpc if request.gas.is_some() => return Ok(request.gas.unwrap_or_default()),
            Kind::Withdrawal if row.asset == Asset::Ether => {
                let code = provider
                    .get_code_at(row.recipient)
                    .await
                    .map_err(|error| Trouble::node(format!("the recipient's code: {error}")))?;
                if code.is_empty() {
                    return Ok(21_000);
                }
            }
            _ => {}
        }
        let estimate = provider.estimate_gas(request.clone()).await.map_err(|error| match error.as_error_resp() {
            Some(payload) => Trouble::Invalid(format!("the node would not execute it: {}", payload.message)),
            None => Trouble::node(format!("estimating gas: {error}")),
        })?;
        Ok(if row.kind == Kind::Sweep {
            estimate.saturating_add(estimate.saturating_mul(SWEEP_GAS_HEADROOM_PERCENT) / 100)
        } else {
            estimate
        })
    }

    /// The fees of a first signature: an RPC client's own, if within the key's caps (else refused by name),
    /// or the market's lowered to the caps.
    pub(super) fn fees_for(
        key: &Key,
        row: &Withdrawal,
        request: &TransactionRequest,
        market: Fees,
        gas: u64,
        shared: &Shared,
    ) -> Result<Fees, Trouble> {
        let client = match (request.gas_price, request.max_fee_per_gas, request.max_priority_fee_per_gas) {
            (Some(gas_price), _, _) => Some(Fees::Legacy { gas_price }),
            (None, Some(max_fee), priority) => {
                let market_priority = market.max_and_priority().1;
                Some(Fees::Eip1559 {
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: priority.unwrap_or(market_priority).min(max_fee),
                })
            }
            (None, None, Some(priority)) => {
                let market_max = market.max_and_priority().0;
                Some(Fees::Eip1559 { max_fee_per_gas: market_max.max(priority), max_priority_fee_per_gas: priority })
            }
            (None, None, None) => None,
        };
        if let (Kind::Rpc, Some(fees)) = (row.kind, client) {
            if !key.fee_caps.allow(fees, gas) {
                let caps = key.fee_caps;
                return Err(Trouble::Invalid(format!(
                    "fee_cap: fees {fees:?} with {gas} gas exceed key `{}`'s caps (max fee {} wei per gas, priority fee \
                     {} wei per gas, {} wei per transaction)",
                    key.name, caps.max_fee_per_gas, caps.max_priority_fee_per_gas, caps.max_fee_per_tx
                )));
            }
            return Ok(fees);
        }
        let (fees, capped) = fees::initial(market, gas, &key.fee_caps);
        if capped {
            shared.metrics.fee_cap_reached.inc();
            tracing::warn!(withdrawal = %row.id, key = %key.name, ?market, ?fees, "the market's fees are above the key's caps; signing at the caps");
        }
        Ok(fees)
    }

    /// The node's pending transaction count for `key`, as asked after this call began: allocations that
    /// arrive while a request is out share the next one, and none uses a count older than itself.
    pub(super) async fn pending_count(&self, key: &Key, state: &KeyState) -> Result<u64, Trouble> {
        let arrived = Instant::now();
        let mut cached = state.pending.lock().await;
        if let Some((asked, count)) = *cached
            && asked >= arrived
        {
            return Ok(count);
        }
        let asked = Instant::now();
        let count = chain::nonce(self.shared.manager.provider(), key.address())
            .await
            .map_err(|error| Trouble::node(format!("the pending nonce of `{}`: {error}", key.name)))?;
        *cached = Some((asked, count));
        Ok(count)
    }

    /// The fees to pay now, reused for [`FEES_FOR`].
    pub(crate) async fn current_fees(&self) -> Result<Fees, Trouble> {
        if let Some((at, fees)) = *self.fee_cache.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < FEES_FOR
        {
            return Ok(fees);
        }
        let fees = chain::fees(self.shared.manager.provider())
            .await
            .map_err(|error| Trouble::node(format!("fees from the node: {error}")))?;
        *self.fee_cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), fees));
        Ok(fees)
    }
}
