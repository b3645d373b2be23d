//! What the benchmark prints besides its timings: where the CPU went, signatures that took over a second,
//! and — when a round stalls — what anvil's pool holds of each key and the servers' broadcast counters.

use std::time::Duration;

use alloy_primitives::Address;

use super::{anvil, mined_count};
use crate::cpu;

/// Milliseconds of processor time per operation, one for each process (`None` where it was not measured).
pub(super) type CpuMillis = Vec<Option<f64>>;

/// Where the CPU went, per round: milliseconds of processor time per bare `Sign` (each process, in the bare
/// loop) and per withdrawal (each process, while the withdrawals ran).
pub(super) fn print_cpu(processes: &cpu::Processes, rows: &[(CpuMillis, CpuMillis)]) {
    let names: Vec<&str> = processes.names().collect();
    let show = |values: &[Option<f64>]| -> String {
        values
            .iter()
            .map(|value| value.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.2}")))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!();
    println!("CPU milliseconds (user + system, all threads) per bare Sign, then per withdrawal:");
    println!();
    println!("| round | phase | {} |", names.join(" | "));
    println!("| ---: | --- |{}", " ---: |".repeat(names.len()));
    for (round, (bare, withdrawals)) in rows.iter().enumerate() {
        println!("| {} | bare Sign | {} |", round + 1, show(bare));
        println!("| {} | withdrawal | {} |", round + 1, show(withdrawals));
    }
}

/// How many of the server's signatures so far took more than a second (KMS request and verification), from
/// its `ethkms_signing_seconds` histogram: one such signature holds every higher nonce back.
pub(super) async fn slow_signatures(http: &reqwest::Client, urls: &[String]) -> u64 {
    let mut slow = 0;
    for url in urls {
        let Ok(response) = http.get(format!("{url}/metrics")).send().await else { continue };
        let text = response.text().await.unwrap_or_default();
        let value = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .map_or(0, |value| value as u64)
        };
        slow +=
            value("ethkms_signing_seconds_count ").saturating_sub(value("ethkms_signing_seconds_bucket{le=\"1.0\"} "));
    }
    slow
}

/// How long the key's mined count may stay still, with withdrawals outstanding, before the benchmark says
/// what the node and the service hold.
pub(super) const STALL: Duration = Duration::from_millis(700);

/// Prints, once per stall, what anvil's pool holds of each key (pending and queued nonces) and the servers'
/// broadcast and retry counters: where a round's lost time is.
pub(super) async fn report_stall(
    http: &reqwest::Client,
    rpc_url: &str,
    servers: &[String],
    keys: &[(String, Address)],
) {
    for (index, (_, address)) in keys.iter().enumerate() {
        let mined = mined_count(http, rpc_url, *address).await;
        report_key_stall(http, rpc_url, &format!("hot{index}"), *address, mined).await;
    }
    for server in servers {
        let metrics = match http.get(format!("{server}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|line| {
                ["ethkms_broadcasts_total", "ethkms_transient_retries_total", "ethkms_rebroadcasts_total"]
                    .iter()
                    .any(|name| line.starts_with(name))
            })
            .collect();
        println!("  {server}: {}", counters.join(", "));
    }
}

async fn report_key_stall(http: &reqwest::Client, rpc_url: &str, name: &str, address: Address, mined: u64) {
    let content = anvil(http, rpc_url, "txpool_inspect", serde_json::json!([])).await;
    let nonces = |part: &str| -> Vec<u64> {
        let mut nonces: Vec<u64> = content[part]
            .as_object()
            .into_iter()
            .flat_map(|accounts| accounts.iter())
            .filter(|(account, _)| account.eq_ignore_ascii_case(&address.to_string()))
            .flat_map(|(_, by_nonce)| by_nonce.as_object().into_iter().flat_map(|map| map.keys()))
            .filter_map(|nonce| nonce.parse().ok())
            .collect();
        nonces.sort_unstable();
        nonces
    };
    let (pending, queued) = (nonces("pending"), nonces("queued"));
    let ends = |nonces: &[u64]| match (nonces.first(), nonces.last()) {
        (Some(first), Some(last)) => format!("{} ({first}..={last})", nonces.len()),
        _ => "0".to_owned(),
    };
    println!(
        "  stall: key {name}: mined count {mined} for {} ms; anvil holds pending {}, queued {}",
        STALL.as_millis(),
        ends(&pending),
        ends(&queued),
    );
}
