//! An anvil of a test's own, for mining settings the shared one must not have (no automine, a block
//! time), started from the binary `ETHKMS_TEST_ANVIL` names and stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{free_port, service_from_env};

/// An anvil process on a free port of 127.0.0.1 (prague hardfork, chain id 31337), killed on drop.
#[derive(Debug)]
pub struct Anvil {
    /// The process.
    pub child: Child,
    /// Its JSON-RPC URL, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Anvil {
    /// Starts anvil with the extra arguments `mining` (for example `["--no-mining"]` or
    /// `["--block-time", "1"]`) and waits until it answers; `None` skips the test when
    /// `ETHKMS_TEST_ANVIL` is not set (see [`service_from_env`]).
    ///
    /// # Panics
    /// If the binary does not start or answer within 20 seconds, or it is missing in CI.
    pub async fn start(mining: &[&str]) -> Option<Self> {
        let binary = service_from_env("ETHKMS_TEST_ANVIL", "anvil (the binary)")?;
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent", "--hardfork", "prague"])
            .args(mining)
            .stdout(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let anvil = Self { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let started = Instant::now();
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] });
        while http.post(&anvil.url).json(&body).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "anvil did not answer on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(anvil)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
