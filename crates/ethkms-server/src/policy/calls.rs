//! Calldata as the policy reads it: the ERC-20 functions that move a token or an allowance of it
//! (`transfer`, `approve`, `increaseAllowance` and ERC-2612's `permit`), decoded strictly, and the argument
//! constraints of allowlisted contract calls.
//!
//! A known selector with calldata of the wrong length, or an argument that is not a valid encoding (an
//! address with bits above its 160), is refused by name (rule `calldata`): what the policy decodes is
//! exactly what the contract would. An allowlisted call's constraints name static arguments by index (the
//! 32-byte word at `4 + 32 × index`): `address_allowlisted` requires an address that passes the destination
//! lists, `amount_max` a number at most a cap, optionally counted as an amount of an asset.
//!
//! ```
//! use alloy_primitives::{Address, U256};
//! use alloy_sol_types::SolCall;
//! use ethkms_server::policy::calls::{TokenCall, approveCall, decode};
//!
//! let spender = Address::with_last_byte(7);
//! let data = approveCall { spender, amount: U256::MAX }.abi_encode();
//! let call = decode(&data).unwrap().unwrap();
//! assert_eq!(call, TokenCall { function: "approve", counterparty: spender, amount: U256::MAX });
//! assert!(decode(&data[..40]).unwrap_err().contains("approve"));
//! ```

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, sol};

use super::Asset;

sol! {
    function transfer(address to, uint256 amount) external returns (bool);
    function approve(address spender, uint256 amount) external returns (bool);
    function increaseAllowance(address spender, uint256 addedValue) external returns (bool);
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;
}

/// A decoded ERC-20 call that moves a token or an allowance of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCall {
    /// `transfer`, `approve`, `increaseAllowance` or `permit`.
    pub function: &'static str,
    /// Who receives the tokens (`transfer`) or the allowance (the spender).
    pub counterparty: Address,
    /// How much.
    pub amount: U256,
}

/// Decodes `data` (the whole calldata) as one of the token calls, strictly.
///
/// # Errors
/// A one-line message when the selector is one of them but the rest is not a valid encoding of its
/// arguments (rule `calldata`).
pub fn decode(data: &[u8]) -> Result<Option<TokenCall>, String> {
    fn strict<C: SolCall>(data: &[u8], words: usize) -> Result<C, String> {
        let expected = 4 + 32 * words;
        if data.len() != expected {
            return Err(format!("{} calldata is {} bytes, expected {expected}", C::SIGNATURE, data.len()));
        }
        C::abi_decode_validate(data).map_err(|error| format!("{} calldata does not decode: {error}", C::SIGNATURE))
    }
    let Some(selector) = data.get(..4) else { return Ok(None) };
    let call = match <[u8; 4]>::try_from(selector).unwrap_or_default() {
        transferCall::SELECTOR => {
            let call: transferCall = strict(data, 2)?;
            TokenCall { function: "transfer", counterparty: call.to, amount: call.amount }
        }
        approveCall::SELECTOR => {
            let call: approveCall = strict(data, 2)?;
            TokenCall { function: "approve", counterparty: call.spender, amount: call.amount }
        }
        increaseAllowanceCall::SELECTOR => {
            let call: increaseAllowanceCall = strict(data, 2)?;
            TokenCall { function: "increaseAllowance", counterparty: call.spender, amount: call.addedValue }
        }
        permitCall::SELECTOR => {
            let call: permitCall = strict(data, 7)?;
            TokenCall { function: "permit", counterparty: call.spender, amount: call.value }
        }
        _ => return Ok(None),
    };
    Ok(Some(call))
}

/// A contract function a key may call: the contract, the 4-byte selector, and constraints on its
/// arguments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContractCall {
    /// The contract.
    pub address: Address,
    /// The function selector.
    pub selector: [u8; 4],
    /// Constraints on its arguments (none: any arguments).
    pub args: Vec<ArgConstraint>,
}

/// A constraint on one static argument of an allowlisted call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArgConstraint {
    /// The argument's position: its word is at `4 + 32 × index` in the calldata.
    pub index: usize,
    /// What it must be.
    pub kind: ArgKind,
}

/// What a constrained argument must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ArgKind {
    /// An address that passes the key's destination lists.
    AddressAllowlisted,
    /// A number at most `max`; with `asset`, also counted as that much of the asset against its limits.
    AmountMax {
        /// The cap.
        max: U256,
        /// The asset the amount is of, if it counts against limits.
        asset: Option<Asset>,
    },
}

/// What a call's constrained arguments amount to: addresses that must pass the destination lists, and
/// amounts to count.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Arguments {
    pub(crate) addresses: Vec<Address>,
    pub(crate) amounts: Vec<(Asset, U256)>,
}

/// Where a constrained argument was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ArgumentError {
    /// The calldata has no such word, or the word is not a valid address (rule `calldata`).
    Calldata(String),
    /// The amount is above its cap (rule `call_argument`).
    AboveCap(String),
}

impl ContractCall {
    /// Checks `data` against the argument constraints.
    pub(crate) fn arguments(&self, data: &[u8]) -> Result<Arguments, ArgumentError> {
        let mut found = Arguments::default();
        for constraint in &self.args {
            let word = constraint
                .index
                .checked_mul(32)
                .and_then(|offset| offset.checked_add(4))
                .and_then(|start| data.get(start..start.checked_add(32)?))
                .ok_or_else(|| {
                    ArgumentError::Calldata(format!(
                        "argument {} of 0x{} is missing: the calldata is {} bytes",
                        constraint.index,
                        alloy_primitives::hex::encode(self.selector),
                        data.len()
                    ))
                })?;
            let value = U256::from_be_slice(word);
            match &constraint.kind {
                ArgKind::AddressAllowlisted => {
                    if word[..12].iter().any(|byte| *byte != 0) {
                        return Err(ArgumentError::Calldata(format!(
                            "argument {} of 0x{} is not an address",
                            constraint.index,
                            alloy_primitives::hex::encode(self.selector)
                        )));
                    }
                    found.addresses.push(Address::from_slice(&word[12..]));
                }
                ArgKind::AmountMax { max, asset } => {
                    if value > *max {
                        return Err(ArgumentError::AboveCap(format!(
                            "argument {} of 0x{} is {value}, above its cap of {max}",
                            constraint.index,
                            alloy_primitives::hex::encode(self.selector)
                        )));
                    }
                    if let Some(asset) = asset {
                        found.amounts.push((*asset, value));
                    }
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_call_decodes_and_malformed_ones_are_named() {
        let who = Address::with_last_byte(9);
        let amount = U256::from(5);
        let cases: [(Vec<u8>, &str); 4] = [
            (transferCall { to: who, amount }.abi_encode(), "transfer"),
            (approveCall { spender: who, amount }.abi_encode(), "approve"),
            (increaseAllowanceCall { spender: who, addedValue: amount }.abi_encode(), "increaseAllowance"),
            (
                permitCall {
                    owner: Address::ZERO,
                    spender: who,
                    value: amount,
                    deadline: U256::MAX,
                    v: 27,
                    r: Default::default(),
                    s: Default::default(),
                }
                .abi_encode(),
                "permit",
            ),
        ];
        for (data, function) in cases {
            assert_eq!(decode(&data), Ok(Some(TokenCall { function, counterparty: who, amount })));
            let short = decode(&data[..data.len() - 1]).unwrap_err();
            assert!(short.contains(function) && short.contains("bytes"), "{short}");
            let long = decode(&[data.as_slice(), &[0]].concat()).unwrap_err();
            assert!(long.contains(function), "{long}");
            let mut dirty = data.clone();
            dirty[4] = 1; // a bit above the address's 160
            assert!(decode(&dirty).unwrap_err().contains("does not decode"), "{function}");
        }
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[0xa9, 0x05, 0x9c]), Ok(None));
        assert_eq!(decode(&[0xde, 0xad, 0xbe, 0xef, 1, 2]), Ok(None));
    }

    #[test]
    fn argument_constraints() {
        let call = ContractCall {
            address: Address::ZERO,
            selector: [1, 2, 3, 4],
            args: vec![
                ArgConstraint { index: 0, kind: ArgKind::AddressAllowlisted },
                ArgConstraint { index: 1, kind: ArgKind::AmountMax { max: U256::from(10), asset: Some(Asset::Ether) } },
            ],
        };
        let data = |address: [u8; 32], amount: u64| {
            [[1, 2, 3, 4].as_slice(), &address, &U256::from(amount).to_be_bytes::<32>()].concat()
        };
        let mut word = [0u8; 32];
        word[31] = 7;
        assert_eq!(
            call.arguments(&data(word, 10)),
            Ok(Arguments {
                addresses: vec![Address::with_last_byte(7)],
                amounts: vec![(Asset::Ether, U256::from(10))]
            })
        );
        assert!(matches!(call.arguments(&data(word, 11)), Err(ArgumentError::AboveCap(_))));
        assert!(matches!(call.arguments(&data(word, 10)[..60]), Err(ArgumentError::Calldata(_))));
        word[0] = 1;
        assert!(matches!(call.arguments(&data(word, 1)), Err(ArgumentError::Calldata(_))));
        let far =
            ContractCall { args: vec![ArgConstraint { index: usize::MAX, kind: ArgKind::AddressAllowlisted }], ..call };
        assert!(matches!(far.arguments(&data(word, 1)), Err(ArgumentError::Calldata(_))));
    }
}
