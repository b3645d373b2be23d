//! JSON-RPC calls straight to a node (anvil), independent of the code under test: balances, receipts,
//! blocks and the transactions in them, and the test ERC-20 (`TestToken`, committed bytecode).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, sol};
use serde_json::{Value, json};

sol! {
    function transfer(address to, uint256 amount) external returns (bool);
    function balanceOf(address owner) external view returns (uint256);
}

/// One ether, in wei.
pub const ETHER: u64 = 1_000_000_000_000_000_000;

/// anvil's first development account, unlocked: it deploys the test token.
pub const DEVELOPER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// The creation bytecode (hex) of the test ERC-20, whose constructor takes the initial supply
/// (`crates/ethkms-eth/tests/contracts/`, with its source and how it was compiled).
pub const TEST_TOKEN_BIN: &str = include_str!("../../../crates/ethkms-eth/tests/contracts/TestToken.bin");

/// A JSON-RPC call that must succeed: its `result`.
///
/// # Panics
/// If the call fails or the node answers with an error.
pub async fn rpc(http: &reqwest::Client, url: &str, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let answer: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// A JSON-RPC quantity (`"0x…"`) as a number.
///
/// # Panics
/// If `value` is not a hex string that fits in a `u128`.
#[must_use]
pub fn quantity(value: &Value) -> u128 {
    u128::from_str_radix(value.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Sets the balance of `address` on `rpc_url` (an anvil) to `wei`.
///
/// # Panics
/// If the node refuses `anvil_setBalance`.
pub async fn set_balance(rpc_url: &str, address: Address, wei: U256) {
    rpc(&reqwest::Client::new(), rpc_url, "anvil_setBalance", json!([address, format!("{wei:#x}")])).await;
}

/// The number of the latest block.
///
/// # Panics
/// If the call fails.
pub async fn block_number(rpc_url: &str) -> u128 {
    quantity(&rpc(&reqwest::Client::new(), rpc_url, "eth_blockNumber", json!([])).await)
}

/// Every transaction from `from` mined since block `first`, by nonce: (to, value, hash).
///
/// # Panics
/// If a call fails, or two mined transactions have the same nonce.
pub async fn transactions_from(rpc_url: &str, from: Address, first: u128) -> BTreeMap<u64, (Address, U256, String)> {
    let http = reqwest::Client::new();
    let latest = block_number(rpc_url).await;
    let mut found = BTreeMap::new();
    for number in first..=latest {
        let block = rpc(&http, rpc_url, "eth_getBlockByNumber", json!([format!("{number:#x}"), true])).await;
        for tx in block["transactions"].as_array().into_iter().flatten() {
            if tx["from"].as_str().unwrap().parse::<Address>().unwrap() == from {
                let nonce = u64::try_from(quantity(&tx["nonce"])).unwrap();
                let to = tx["to"].as_str().unwrap().parse().unwrap();
                let value = tx["value"].as_str().unwrap().parse().unwrap();
                let previous = found.insert(nonce, (to, value, tx["hash"].as_str().unwrap().to_owned()));
                assert!(previous.is_none(), "two mined transactions with nonce {nonce}");
            }
        }
    }
    found
}

/// Deploys the test ERC-20 from anvil's developer account and sends `amount` of it to `to`.
///
/// # Panics
/// If a call fails or the transfer reverts.
pub async fn deploy_token(rpc_url: &str, to: Address, amount: U256) -> Address {
    let http = reqwest::Client::new();
    let supply = format!("{:064x}", U256::from(1_000_000u64));
    let code = TEST_TOKEN_BIN.trim().trim_start_matches("0x");
    let create = json!([{ "from": DEVELOPER, "data": format!("0x{code}{supply}") }]);
    let hash = rpc(&http, rpc_url, "eth_sendTransaction", create).await;
    let created = receipt(rpc_url, &hash).await;
    let token: Address = created["contractAddress"].as_str().unwrap().parse().unwrap();
    let data = format!("0x{}", alloy_primitives::hex::encode(transferCall { to, amount }.abi_encode()));
    let hash =
        rpc(&http, rpc_url, "eth_sendTransaction", json!([{ "from": DEVELOPER, "to": token, "data": data }])).await;
    assert_eq!(receipt(rpc_url, &hash).await["status"], "0x1", "the token transfer to the key failed");
    token
}

/// The receipt of `hash`, once mined (anvil mines a moment after answering).
///
/// # Panics
/// If a call fails or the transaction is not mined within 20 seconds.
pub async fn receipt(rpc_url: &str, hash: &Value) -> Value {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let receipt = rpc(&http, rpc_url, "eth_getTransactionReceipt", json!([hash])).await;
        if !receipt.is_null() {
            return receipt;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{hash} not mined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The signed transaction `hash` as the node stores it (EIP-2718 bytes, `0x` hex).
///
/// # Panics
/// If the call fails or the node does not know the transaction.
pub async fn raw_transaction(rpc_url: &str, hash: &Value) -> String {
    let raw = rpc(&reqwest::Client::new(), rpc_url, "eth_getRawTransactionByHash", json!([hash])).await;
    raw.as_str().unwrap_or_else(|| panic!("{hash}: no raw transaction: {raw}")).to_owned()
}

/// The test token balance of `owner`.
///
/// # Panics
/// If the call fails.
pub async fn token_balance(rpc_url: &str, token: Address, owner: Address) -> U256 {
    let data = format!("0x{}", alloy_primitives::hex::encode(balanceOfCall { owner }.abi_encode()));
    let result =
        rpc(&reqwest::Client::new(), rpc_url, "eth_call", json!([{ "to": token, "data": data }, "latest"])).await;
    result.as_str().unwrap().parse().unwrap()
}

/// The ether balance of `owner`, in wei.
///
/// # Panics
/// If the call fails.
pub async fn balance(rpc_url: &str, owner: Address) -> U256 {
    let result = rpc(&reqwest::Client::new(), rpc_url, "eth_getBalance", json!([owner, "latest"])).await;
    result.as_str().unwrap().parse().unwrap()
}

/// A recipient no other test (or earlier run on the same node) pays.
#[must_use]
pub fn recipient(run: &str, index: u64) -> Address {
    Address::from_slice(&alloy_primitives::keccak256(format!("{run}-{index}"))[12..])
}
