//! Fees in the policy: a key's [`FeeCaps`], the client's gas and fee fields ([`GasRequest`]) checked
//! against them (rule `fee_cap`), and the worst case a transaction can spend in fees, which counts as ether
//! against `max_value` and `daily_limit` like its value.
//!
//! The worst case covers every transaction the service may sign for the request's nonce, fee bumps
//! included (only one of them can be mined):
//!
//! - With the client's gas limit `g`: `min(g × max_fee_per_gas, max_fee_per_tx)` — bumps never take the max
//!   fee per gas above `min(max_fee_per_gas, max_fee_per_tx / g)`.
//! - Without one (the service estimates it): `max_fee_per_tx`, the most any transaction of the key may pay.
//! - A blob transaction is never re-signed: its worst case is exactly `g × maxFeePerGas + blob gas ×
//!   maxFeePerBlobGas`, all three given by the client (else refused), and at most `max_fee_per_tx`.
//!
//! The transactions the service signs on its own — gap fills and cancellations, zero-value transfers to the
//! key itself that replace a nonce's transaction — stay within the same caps and are not counted.
//!
//! Client fee fields above the caps are refused, not lowered: `maxFeePerGas` (or `gasPrice`) above
//! `max_fee_per_gas`, `maxPriorityFeePerGas` above `max_priority_fee_per_gas`, and `gas × max fee + blob
//! gas × max blob fee` above `max_fee_per_tx`. All arithmetic is in [`U256`], saturating.
//!
//! ```
//! use alloy_primitives::U256;
//! use ethkms_server::policy::fees::{FeeCaps, GasRequest, worst_case};
//!
//! let caps = FeeCaps::default(); // 500 gwei, 10 gwei tip, 0.05 ether per transaction
//! // The engine picks the fees: the worst case is the per-transaction cap.
//! assert_eq!(worst_case(&GasRequest::default(), &caps), Ok(U256::from(caps.max_fee_per_tx)));
//! // 21,000 gas at most 500 gwei: 0.0105 ether.
//! let simple = GasRequest { gas_limit: Some(21_000), ..GasRequest::default() };
//! assert_eq!(worst_case(&simple, &caps), Ok(U256::from(21_000u128 * 500_000_000_000)));
//! // 10M gas at 1e14 wei per gas is refused.
//! let greedy = GasRequest { gas_limit: Some(10_000_000), max_fee_per_gas: Some(100_000_000_000_000), ..simple };
//! assert!(worst_case(&greedy, &caps).unwrap_err().contains("maxFeePerGas"));
//! ```

use alloy_primitives::U256;

/// One gwei in wei.
const GWEI: u128 = 1_000_000_000;

/// Blob gas per blob (EIP-4844).
pub const BLOB_GAS_PER_BLOB: u64 = 131_072;

/// A key's fee caps (`keys.NAME.fees` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeeCaps {
    /// The most paid per gas, base fee included (wei).
    pub max_fee_per_gas: u128,
    /// The most tip per gas (wei).
    pub max_priority_fee_per_gas: u128,
    /// The most one transaction may cost in fees: gas limit × max fee per gas, plus blob gas × max fee per
    /// blob gas (wei).
    pub max_fee_per_tx: u128,
}

impl Default for FeeCaps {
    /// Safe on Ethereum mainnet: 500 gwei per gas (over ten times a busy day's base fee), a 10 gwei tip,
    /// and at most 0.05 ether in fees per transaction (an ERC-20 transfer at 500 gwei costs about 0.03).
    fn default() -> Self {
        Self { max_fee_per_gas: 500 * GWEI, max_priority_fee_per_gas: 10 * GWEI, max_fee_per_tx: 50_000_000 * GWEI }
    }
}

impl FeeCaps {
    /// The highest max fee per gas allowed for a transaction with `gas`.
    #[must_use]
    pub fn max_fee_for(&self, gas: u64) -> u128 {
        self.max_fee_per_gas.min(self.max_fee_per_tx / u128::from(gas.max(1)))
    }
}

/// The gas and fee fields of a transaction as the client sent them; `None` (and no blobs) where the service
/// chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GasRequest {
    /// `gas`.
    pub gas_limit: Option<u64>,
    /// `gasPrice` (legacy and EIP-2930 transactions).
    pub gas_price: Option<u128>,
    /// `maxFeePerGas`.
    pub max_fee_per_gas: Option<u128>,
    /// `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: Option<u128>,
    /// How many blobs (`blobVersionedHashes`).
    pub blobs: u64,
    /// `maxFeePerBlobGas`.
    pub max_fee_per_blob_gas: Option<u128>,
}

fn wide(value: impl Into<u128>) -> U256 {
    U256::from(value.into())
}

/// Checks the client's fee fields against `caps` and returns the most the transaction (and any bump of it)
/// can pay in fees, in wei.
///
/// # Errors
/// A one-line message naming the field above its cap (the policy's rule `fee_cap`).
pub fn worst_case(gas: &GasRequest, caps: &FeeCaps) -> Result<U256, String> {
    let max_fee = match (gas.gas_price, gas.max_fee_per_gas) {
        (Some(_), Some(_)) => return Err("both gasPrice and maxFeePerGas are set; send one".into()),
        (Some(price), None) => Some(("gasPrice", price)),
        (None, fee) => fee.map(|fee| ("maxFeePerGas", fee)),
    };
    if let Some((field, fee)) = max_fee
        && fee > caps.max_fee_per_gas
    {
        return Err(format!("{field} of {fee} wei is above the key's cap of {} wei per gas", caps.max_fee_per_gas));
    }
    if let Some(priority) = gas.max_priority_fee_per_gas {
        if gas.gas_price.is_some() {
            return Err("both gasPrice and maxPriorityFeePerGas are set; send one".into());
        }
        if priority > caps.max_priority_fee_per_gas {
            return Err(format!(
                "maxPriorityFeePerGas of {priority} wei is above the key's cap of {} wei per gas",
                caps.max_priority_fee_per_gas
            ));
        }
    }
    let per_tx = wide(caps.max_fee_per_tx);
    let blob_gas = wide(gas.blobs).saturating_mul(wide(BLOB_GAS_PER_BLOB));
    if gas.blobs > 0 {
        let (Some(limit), Some((_, fee)), Some(blob_fee)) = (gas.gas_limit, max_fee, gas.max_fee_per_blob_gas) else {
            return Err("a blob transaction needs gas, maxFeePerGas and maxFeePerBlobGas from the client".into());
        };
        let total = wide(limit).saturating_mul(wide(fee)).saturating_add(blob_gas.saturating_mul(wide(blob_fee)));
        if total > per_tx {
            return Err(format!(
                "gas × maxFeePerGas + blob gas × maxFeePerBlobGas is {total} wei, above the key's max_fee_per_tx of \
                 {per_tx} wei"
            ));
        }
        return Ok(total);
    }
    let Some(limit) = gas.gas_limit else { return Ok(per_tx) };
    if let Some((field, fee)) = max_fee {
        let total = wide(limit).saturating_mul(wide(fee));
        if total > per_tx {
            return Err(format!(
                "gas {limit} × {field} {fee} wei is {total} wei, above the key's max_fee_per_tx of {per_tx} wei"
            ));
        }
    }
    Ok(wide(limit).saturating_mul(wide(caps.max_fee_per_gas)).min(per_tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: FeeCaps = FeeCaps { max_fee_per_gas: 100, max_priority_fee_per_gas: 10, max_fee_per_tx: 1_000_000 };

    fn gas(limit: u64) -> GasRequest {
        GasRequest { gas_limit: Some(limit), ..GasRequest::default() }
    }

    #[test]
    fn the_worst_case_is_the_bump_bound_whatever_the_client_fee() {
        assert_eq!(worst_case(&GasRequest::default(), &CAPS), Ok(U256::from(1_000_000)));
        assert_eq!(worst_case(&gas(21_000), &CAPS), Ok(U256::from(1_000_000)));
        assert_eq!(worst_case(&gas(5_000), &CAPS), Ok(U256::from(500_000)));
        let low = GasRequest { max_fee_per_gas: Some(1), max_priority_fee_per_gas: Some(1), ..gas(5_000) };
        assert_eq!(worst_case(&low, &CAPS), Ok(U256::from(500_000)), "bumps may raise a low fee to the cap");
        assert_eq!(worst_case(&gas(u64::MAX), &CAPS), Ok(U256::from(1_000_000)));
    }

    #[test]
    fn fields_above_the_caps_are_named() {
        let cases = [
            (GasRequest { max_fee_per_gas: Some(101), ..gas(1) }, "maxFeePerGas of 101"),
            (GasRequest { gas_price: Some(101), ..GasRequest::default() }, "gasPrice of 101"),
            (GasRequest { max_priority_fee_per_gas: Some(11), ..GasRequest::default() }, "maxPriorityFeePerGas"),
            (GasRequest { max_fee_per_gas: Some(100), ..gas(10_001) }, "max_fee_per_tx"),
            (GasRequest { gas_price: Some(1), max_fee_per_gas: Some(1), ..GasRequest::default() }, "both gasPrice"),
            (GasRequest { blobs: 1, ..gas(21_000) }, "blob transaction needs"),
            (GasRequest { blobs: 1, max_fee_per_gas: Some(1), max_fee_per_blob_gas: Some(8), ..gas(1) }, "blob gas"),
        ];
        for (request, expected) in cases {
            let error = worst_case(&request, &CAPS).unwrap_err();
            assert!(error.contains(expected), "{request:?}: `{expected}` not in {error}");
        }
        let blob = GasRequest { blobs: 2, max_fee_per_gas: Some(10), max_fee_per_blob_gas: Some(3), ..gas(1_000) };
        assert_eq!(worst_case(&blob, &CAPS), Ok(U256::from(10_000 + 2 * 131_072 * 3)));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let caps =
            FeeCaps { max_fee_per_gas: u128::MAX, max_priority_fee_per_gas: u128::MAX, max_fee_per_tx: u128::MAX };
        let request = GasRequest {
            blobs: u64::MAX,
            max_fee_per_gas: Some(u128::MAX),
            max_fee_per_blob_gas: Some(u128::MAX),
            ..gas(u64::MAX)
        };
        assert!(worst_case(&request, &caps).is_err());
        assert_eq!(worst_case(&gas(u64::MAX), &caps), Ok(U256::from(u128::MAX)));
    }
}
