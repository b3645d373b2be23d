//! The proxy's "newest state ahead" mode ([`RpcProxy::set_newest_state_ahead`](super::RpcProxy::set_newest_state_ahead)):
//! an `eth_getBalance` of the node's newest block is answered with the balance of the block mined after it.
//!
//! That is what anvil does now and then: it answers a read of its newest block from the state it is mining
//! the next block into, so the answer can already hold the next block's transactions. Here it happens every
//! time, so a client that reads balances at the newest block and trusts them is caught at once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a held read waits for the next block before it is answered as it is.
const NEXT_BLOCK_WAIT: Duration = Duration::from_secs(10);

/// The newest block, as the upstream answers `eth_getBlockByNumber("latest")`: (number, hash).
async fn newest(client: &reqwest::Client, upstream: &str) -> Option<(u64, String)> {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["latest", false] });
    let answer: Value = client.post(upstream).json(&body).send().await.ok()?.json().await.ok()?;
    let block = &answer["result"];
    let number = u64::from_str_radix(block["number"].as_str()?.trim_start_matches("0x"), 16).ok()?;
    Some((number, block["hash"].as_str()?.to_owned()))
}

/// Whether the block parameter `block` names the newest block, `(number, hash)`.
fn names_newest(block: &Value, number: u64, hash: &str) -> bool {
    let by_hash = |value: &Value| value.as_str().is_some_and(|named| named.eq_ignore_ascii_case(hash));
    match block {
        Value::String(tag) if tag == "latest" || tag == "pending" => true,
        Value::String(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16) == Ok(number),
        Value::Object(object) => {
            object.get("blockHash").is_some_and(by_hash)
                || object.get("blockNumber").is_some_and(|named| names_newest(named, number, hash))
        }
        _ => false,
    }
}

/// If `body` is an `eth_getBalance` of the newest block: waits until a block follows it and answers the
/// body that reads that one instead. `None`: leave the request as it is.
pub(super) async fn rewrite(client: &reqwest::Client, upstream: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut call: Value = serde_json::from_slice(body).ok()?;
    if call["method"] != "eth_getBalance" {
        return None;
    }
    let (number, hash) = newest(client, upstream).await?;
    if !names_newest(&call["params"][1], number, &hash) {
        return None;
    }
    let started = Instant::now();
    loop {
        match newest(client, upstream).await {
            Some((next, _)) if next > number => {
                call["params"][1] = json!(format!("{:#x}", number + 1));
                return serde_json::to_vec(&call).ok();
            }
            _ if started.elapsed() > NEXT_BLOCK_WAIT => return None,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_block_is_recognised_however_it_is_named() {
        let hash = "0xAbC";
        for named in [json!("latest"), json!("pending"), json!("0x7"), json!({ "blockHash": "0xabc" })] {
            assert!(names_newest(&named, 7, hash), "{named}");
        }
        assert!(names_newest(&json!({ "blockNumber": "0x7" }), 7, hash));
        for other in [json!("0x6"), json!("earliest"), json!({ "blockHash": "0xabd" }), json!(null)] {
            assert!(!names_newest(&other, 7, hash), "{other}");
        }
    }
}
