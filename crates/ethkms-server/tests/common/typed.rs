//! `eth_signTypedData_v4` JSON of the permits the policy decodes: ERC-2612's `Permit` and Uniswap Permit2's
//! `PermitSingle` and `PermitTransferFrom`, and a harmless `Note`, for any chain and verifying contract.

use alloy_primitives::{Address, U256};
use serde_json::{Value, json};

/// Permit2, at the same address on every chain.
pub const PERMIT2: &str = "0x000000000022D473030F116dDEE9F6B43aC78BA3";

pub fn permit2() -> Address {
    PERMIT2.parse().unwrap()
}

fn typed(chain: u64, contract: Address, primary: &str, mut types: Value, message: Value) -> Value {
    types["EIP712Domain"] = json!([
        { "name": "name", "type": "string" },
        { "name": "chainId", "type": "uint256" },
        { "name": "verifyingContract", "type": "address" },
    ]);
    let domain = json!({ "name": "test", "chainId": chain, "verifyingContract": contract });
    let mut typed = json!({ "primaryType": primary, "domain": domain });
    typed["types"] = types;
    typed["message"] = message;
    typed
}

/// An ERC-2612 permit: `value` of the token at `contract` to `spender` until `deadline`.
pub fn erc2612(chain: u64, contract: Address, owner: Address, spender: Address, value: U256, deadline: u64) -> Value {
    let types = json!({ "Permit": [
        { "name": "owner", "type": "address" },
        { "name": "spender", "type": "address" },
        { "name": "value", "type": "uint256" },
        { "name": "nonce", "type": "uint256" },
        { "name": "deadline", "type": "uint256" },
    ] });
    let message =
        json!({ "owner": owner, "spender": spender, "value": value.to_string(), "nonce": 0, "deadline": deadline });
    typed(chain, contract, "Permit", types, message)
}

/// A Permit2 `PermitSingle` (an allowance) of `amount` of `token` to `spender`.
pub fn permit_single(
    chain: u64,
    contract: Address,
    token: Address,
    spender: Address,
    amount: U256,
    deadline: u64,
) -> Value {
    let types = json!({
        "PermitSingle": [
            { "name": "details", "type": "PermitDetails" },
            { "name": "spender", "type": "address" },
            { "name": "sigDeadline", "type": "uint256" },
        ],
        "PermitDetails": [
            { "name": "token", "type": "address" },
            { "name": "amount", "type": "uint160" },
            { "name": "expiration", "type": "uint48" },
            { "name": "nonce", "type": "uint48" },
        ],
    });
    let details = json!({ "token": token, "amount": amount.to_string(), "expiration": deadline, "nonce": 0 });
    typed(
        chain,
        contract,
        "PermitSingle",
        types,
        json!({ "details": details, "spender": spender, "sigDeadline": deadline }),
    )
}

/// A Permit2 `PermitTransferFrom` (a one-off transfer) of `amount` of `token` by `spender`.
pub fn permit_transfer_from(
    chain: u64,
    contract: Address,
    token: Address,
    spender: Address,
    amount: U256,
    deadline: u64,
) -> Value {
    let types = json!({
        "PermitTransferFrom": [
            { "name": "permitted", "type": "TokenPermissions" },
            { "name": "spender", "type": "address" },
            { "name": "nonce", "type": "uint256" },
            { "name": "deadline", "type": "uint256" },
        ],
        "TokenPermissions": [{ "name": "token", "type": "address" }, { "name": "amount", "type": "uint256" }],
    });
    let permitted = json!({ "token": token, "amount": amount.to_string() });
    let message = json!({ "permitted": permitted, "spender": spender, "nonce": 0, "deadline": deadline });
    typed(chain, contract, "PermitTransferFrom", types, message)
}

/// A note that moves nothing.
pub fn note(chain: u64, contract: Address) -> Value {
    typed(chain, contract, "Note", json!({ "Note": [{ "name": "text", "type": "string" }] }), json!({ "text": "hi" }))
}
