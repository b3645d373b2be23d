//! Deposits and their sweeps inside a fault campaign: a factory owned by the campaign's key, customer
//! addresses handed out by the service, ether sent to them on anvil directly (never through the fault proxy)
//! while the service is crashed, restarted and cut off from the node, and the service's sweeper sweeping
//! them through the withdrawal engine the whole time. The closing check is made on the node: the treasury
//! holds exactly what was deposited, no deposit address holds anything, every sweep the key sent is a
//! successful call of the factory named by the deposits it swept — so no sweep was sent twice and no
//! deposit swept twice or lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use ethkms_deposits::contracts;
use serde_json::{Value, json};

use super::{Api, DEVELOPER, balance, block_number, config_client, receipt, rpc};

/// The depositing client's bearer token.
const DEPOSITOR: &str = "depositor-token";

/// A campaign's deposits: the factory, the treasury, the addresses handed out and what was sent to them.
pub struct DepositCampaign {
    /// The factory, owned by the campaign's key.
    pub factory: Address,
    /// The treasury every sweep pays.
    pub parent: Address,
    /// The block the service's watcher starts at.
    start_block: u128,
    /// The customers' addresses, as the service handed them out.
    addresses: Vec<Address>,
    /// Every deposit sent: (address, wei).
    sent: Vec<(Address, U256)>,
}

impl DepositCampaign {
    /// Deploys a factory owned by `owner` (from anvil's developer account, on `rpc_url` directly); `run`
    /// names the treasury, fresh for each campaign.
    pub async fn deploy(rpc_url: &str, owner: Address, run: &str) -> Self {
        let http = reqwest::Client::new();
        let code = format!("0x{}", alloy_primitives::hex::encode(contracts::factory_creation_code(owner)));
        let hash = rpc(&http, rpc_url, "eth_sendTransaction", json!([{ "from": DEVELOPER, "data": code }])).await;
        let created = receipt(rpc_url, &hash).await;
        let factory = created["contractAddress"].as_str().unwrap().parse().unwrap();
        let parent = super::recipient(&format!("{run}-treasury"), 0);
        Self { factory, parent, start_block: block_number(rpc_url).await, addresses: Vec::new(), sent: Vec::new() }
    }

    /// The configuration this adds to the service's: the depositing client and `[deposits]` (two
    /// confirmations, a poll every 200 ms, a sweep every second, at most `batch` addresses per sweep).
    pub fn configuration(&self, batch: usize) -> String {
        format!(
            "{client}\n[deposits]\nkey = \"hot\"\nfactory = \"{factory}\"\nparent = \"{parent}\"\nconfirmations = 2\n\
             start_block = {start}\npoll_interval_ms = 200\nsweep_interval_ms = 1000\nsweep_batch = {batch}\n",
            client = config_client("depositor", DEPOSITOR, &["deposits"]),
            factory = self.factory,
            parent = self.parent,
            start = self.start_block,
        )
    }

    /// Asks the service for `count` customers' addresses (retrying while it is down).
    pub async fn hand_out(&mut self, api: &Api, run: &str, count: usize) {
        for index in 0..count {
            let body = json!({ "reference": format!("{run}-customer-{index}") });
            let started = Instant::now();
            let address = loop {
                let response = api
                    .http
                    .post(format!("{}/v1/deposit-addresses", api.url))
                    .bearer_auth(DEPOSITOR)
                    .json(&body)
                    .send()
                    .await;
                if let Ok(response) = response
                    && response.status().as_u16() == 200
                {
                    let answer: Value = response.json().await.unwrap();
                    break answer["address"].as_str().unwrap().parse::<Address>().unwrap();
                }
                assert!(started.elapsed() < Duration::from_secs(60), "no deposit address for customer {index}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            self.addresses.push(address);
        }
    }

    /// Sends deposit `index` of the campaign seeded `seed` (0.01 to 0.02 ether) to one of the addresses,
    /// from anvil's developer account on `rpc_url` directly; some addresses receive several, before and
    /// after their forwarder is deployed.
    pub async fn deposit(&mut self, rpc_url: &str, seed: u64, index: u64) {
        let mixed = alloy_primitives::keccak256(format!("{seed}-{index}"));
        let pick = usize::from(mixed[0]) % self.addresses.len();
        let wei = U256::from(10_u64.pow(16) + u64::from_be_bytes(mixed[8..16].try_into().unwrap()) % 10_u64.pow(16));
        let to = self.addresses[pick];
        let transaction = json!([{ "from": DEVELOPER, "to": to, "value": format!("{wei:#x}") }]);
        rpc(&reqwest::Client::new(), rpc_url, "eth_sendTransaction", transaction).await;
        self.sent.push((to, wei));
    }

    /// Waits (up to `within`) until the service lists every deposit sent, confirmed and swept, then checks
    /// on `rpc_url` directly that the treasury holds exactly their sum, no address holds anything, and the
    /// key at `key` sent the factory exactly the sweeps the deposits name, each once and successful. Returns
    /// the number of sweeps.
    ///
    /// # Panics
    /// On any deposit missing, unswept or listed twice, any wei missing or extra, or a sweep sent twice.
    pub async fn assert_swept_exactly(
        &self,
        api: &Api,
        rpc_url: &str,
        key: Address,
        within: Duration,
        context: &str,
        log: &Path,
    ) -> usize {
        // The server's log is gone with the test's directory: a failure carries what the deposit watcher and
        // sweeper said last (read when a message is written).
        let context = &Context { context, log };
        let started = Instant::now();
        let listed = loop {
            let response = api
                .http
                .get(format!("{}/v1/deposits?since=0&limit=1000", api.url))
                .bearer_auth(DEPOSITOR)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            let list = body["deposits"].as_array().unwrap().clone();
            if list.len() == self.sent.len()
                && list.iter().all(|deposit| deposit["status"] == "confirmed" && deposit["sweep_status"] == "swept")
            {
                break list;
            }
            assert!(
                started.elapsed() < within,
                "{context}: {} deposits sent, not all listed confirmed and swept within {within:?}: {list:#?}",
                self.sent.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ids: BTreeSet<(String, String)> =
            listed.iter().map(|deposit| (deposit["tx_hash"].to_string(), deposit["log_index"].to_string())).collect();
        assert_eq!(ids.len(), self.sent.len(), "{context}: each deposit listed once");
        let mut expected: BTreeMap<Address, U256> = BTreeMap::new();
        for (address, wei) in &self.sent {
            *expected.entry(*address).or_default() += *wei;
        }
        let mut listed_sums: BTreeMap<Address, U256> = BTreeMap::new();
        for deposit in &listed {
            let address = deposit["address"].as_str().unwrap().parse().unwrap();
            *listed_sums.entry(address).or_default() += deposit["amount"].as_str().unwrap().parse::<U256>().unwrap();
        }
        assert_eq!(listed_sums, expected, "{context}: the deposits listed, per address");
        for address in expected.keys() {
            assert_eq!(balance(rpc_url, *address).await, U256::ZERO, "{context}: {address} still holds ether");
        }
        let total: U256 = self.sent.iter().map(|(_, wei)| *wei).sum();
        assert_eq!(balance(rpc_url, self.parent).await, total, "{context}: the treasury holds exactly the deposits");

        // The key's calls of the factory are exactly the sweeps the deposits name (a sweep sent twice, or
        // one the journal lost, would be a call no deposit names), each succeeded, and one id per hash.
        let named: BTreeSet<String> =
            listed.iter().filter_map(|deposit| deposit["sweep_tx_hash"].as_str().map(str::to_owned)).collect();
        let ids: BTreeSet<&str> = listed.iter().filter_map(|deposit| deposit["sweep_id"].as_str()).collect();
        let calls: BTreeSet<String> = super::transactions_from(rpc_url, key, 0)
            .await
            .into_values()
            .filter(|(to, _, _)| *to == self.factory)
            .map(|(_, value, hash)| {
                assert_eq!(value, U256::ZERO, "{context}: sweep {hash} sent value");
                hash
            })
            .collect();
        assert_eq!(calls, named, "{context}: the key's factory calls are the sweeps the deposits name");
        assert_eq!(ids.len(), named.len(), "{context}: one sweep id per sweep transaction");
        for hash in &calls {
            let mined = receipt(rpc_url, &json!(hash)).await;
            assert_eq!(mined["status"], "0x1", "{context}: sweep {hash} reverted");
        }
        calls.len()
    }
}

/// A failure's context: the campaign, then the last lines of the server's log that speak of deposits or
/// sweeps, read when the message is written.
struct Context<'a> {
    context: &'a str,
    log: &'a Path,
}

impl std::fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::fs::read_to_string(self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|line| line.contains("deposit") || line.contains("sweep")).collect();
        let last = lines[lines.len().saturating_sub(60)..].join("\n");
        write!(f, "{} (the server's last words on deposits:\n{last}\n)", self.context)
    }
}
