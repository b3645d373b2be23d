//! anvil, foundry's local Ethereum node: its command line and its health check.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::http_request;

/// The hardfork anvil runs: prague has EIP-7702 (set-code transactions) and EIP-4844 (blob
/// transactions).
const HARDFORK: &str = "prague";

/// anvil's default chain id, 31337, as `eth_chainId` returns it.
const CHAIN_ID: &str = "0x7a69";

/// How long anvil may take to answer `eth_chainId` (it is usually well under a second).
pub(super) const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether anvil answers `eth_chainId` on `port` with its chain id.
pub(super) fn healthy(port: u16) -> bool {
    let request = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    http_request(port, "POST", "/", Some(request)).is_ok_and(|response| ready(&response.body))
}

/// anvil on 127.0.0.1:`port` with the [`HARDFORK`] rules.
pub(super) fn command(anvil: &Path, port: u16) -> Command {
    let mut command = Command::new(anvil);
    command.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent", "--hardfork", HARDFORK]);
    command
}

/// Whether a JSON-RPC `eth_chainId` response shows anvil's chain id.
fn ready(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .is_some_and(|response| response.get("result").and_then(Value::as_str) == Some(CHAIN_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anvil_chain_id_is_read() {
        assert!(ready(r#"{"jsonrpc":"2.0","id":1,"result":"0x7a69"}"#));
        assert!(!ready(r#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#));
        assert!(!ready(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#));
        assert!(!ready(""));
    }
}
