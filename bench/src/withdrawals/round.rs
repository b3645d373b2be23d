//! One setup while the benchmark runs: its servers and keys, and its rounds — each the bare `Sign` loop,
//! then [`WITHDRAWALS`] withdrawals posted and timed until the last is mined, then checked outside the
//! timing (each confirmed, each key's nonces contiguous, none used twice).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use ethkms_aws::aws_sdk_kms::Client;
use futures_util::StreamExt as _;

use super::report::{CpuMillis, STALL, print_cpu, report_stall, slow_signatures};
use super::servers::{Servers, start};
use super::{Measured, Setup, TOKEN, WITHDRAWALS, mined_count};
use crate::{Options, bare_sign_rate, cpu, median};

/// What one round of a setup measured.
struct Row {
    round: usize,
    bare: f64,
    rate: f64,
    posted_in: Duration,
    slow: u64,
}

/// A setup whose servers run, with the rounds it has made.
pub(super) struct Running {
    pub(super) setup: Setup,
    servers: Servers,
    keys: Vec<(String, Address)>,
    processes: cpu::Processes,
    rows: Vec<Row>,
    cpu_rows: Vec<(CpuMillis, CpuMillis)>,
    slow_before: u64,
}

impl Running {
    /// Starts the servers of `setup` on its own `keys` (KMS key id and address each).
    pub(super) async fn start(
        setup: Setup,
        keys: Vec<(String, Address)>,
        concurrency: usize,
        rpc_url: &str,
        http: &reqwest::Client,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let servers = start(setup, concurrency, rpc_url, &keys, http).await?;
        let processes = cpu::Processes::new(&servers.children.iter().map(std::process::Child::id).collect::<Vec<_>>());
        let slow_before = slow_signatures(http, &servers.urls).await;
        println!("{setup}: ethkms-server (release) at {}", servers.urls.join(", "));
        Ok(Self { setup, servers, keys, processes, rows: Vec::new(), cpu_rows: Vec::new(), slow_before })
    }

    /// The process ids of the setup's servers.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.servers.children.iter().map(std::process::Child::id).collect()
    }

    /// Runs round `round` (from 0) and prints a line about it.
    pub(super) async fn round(
        &mut self,
        round: usize,
        options: &Options,
        client: &Client,
        http: &reqwest::Client,
        rpc_url: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let concurrency = options.concurrency[0];
        let (keys, urls) = (&self.keys, &self.servers.urls);
        let bare_before = self.processes.ticks();
        let bare = bare_sign_rate(client, &keys[0].0, concurrency, options.seconds).await;
        let bare_cpu = cpu::per_item_ms(&bare_before, &self.processes.ticks(), (bare * options.seconds).round() as u64);
        let mut first_nonces = Vec::new();
        for (_, address) in keys {
            first_nonces.push(mined_count(http, rpc_url, *address).await);
        }
        let before = self.processes.ticks();
        let started = Instant::now();
        let ids: Vec<(usize, String)> = futures_util::stream::iter(0..WITHDRAWALS)
            .map(|index| {
                let key = usize::try_from(index).unwrap_or(0) % keys.len();
                let url = &urls[usize::try_from(index).unwrap_or(0) / keys.len() % urls.len()];
                let body = serde_json::json!({
                    "idempotency_key": format!("bench-{round}-{index}"),
                    "key": format!("hot{key}"),
                    "to": Address::with_last_byte(0xde),
                    "asset": "ETH",
                    "amount": "1",
                });
                async move {
                    let response = http
                        .post(format!("{url}/v1/withdrawals"))
                        .bearer_auth(TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .expect("post");
                    let status = response.status().as_u16();
                    let answer: serde_json::Value = response.json().await.expect("json");
                    assert_eq!(status, 202, "withdrawal {index} not accepted: {answer}");
                    (key, answer["id"].as_str().expect("an id").to_owned())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let posted_in = started.elapsed();
        let per_key = WITHDRAWALS / keys.len() as u64;
        let targets: Vec<u64> = (0..keys.len())
            .map(|key| first_nonces[key] + per_key + u64::from((key as u64) < WITHDRAWALS % keys.len() as u64))
            .collect();
        let (mut last_total, mut last_change, mut reported) = (0, Instant::now(), false);
        loop {
            let mut total = 0;
            let mut done = true;
            for (key, (_, address)) in keys.iter().enumerate() {
                let count = mined_count(http, rpc_url, *address).await;
                total += count;
                done &= count >= targets[key];
            }
            if done {
                break;
            }
            if total != last_total {
                (last_total, last_change, reported) = (total, Instant::now(), false);
            } else if !reported && last_change.elapsed() > STALL {
                reported = true;
                report_stall(http, rpc_url, urls, keys).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = WITHDRAWALS as f64 / started.elapsed().as_secs_f64();
        self.cpu_rows.push((bare_cpu, cpu::per_item_ms(&before, &self.processes.ticks(), WITHDRAWALS)));
        self.check(round, &ids, &first_nonces, &targets, http, rpc_url).await?;
        let slow = slow_signatures(http, urls).await;
        let row = Row { round, bare, rate, posted_in, slow: slow.saturating_sub(self.slow_before) };
        self.slow_before = slow;
        println!(
            "round {}, {}: {rate:.0} withdrawals/s, {:.2} of Sign ({bare:.0}/s)",
            round + 1,
            self.setup,
            rate / bare
        );
        self.rows.push(row);
        Ok(())
    }

    /// Checked outside the timing, through every replica in turn: each withdrawal confirmed, each key's
    /// nonces contiguous and none used twice, no transaction beyond the withdrawals.
    async fn check(
        &self,
        round: usize,
        ids: &[(usize, String)],
        first_nonces: &[u64],
        targets: &[u64],
        http: &reqwest::Client,
        rpc_url: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let urls = &self.servers.urls;
        let mut nonces: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        for (index, (key, id)) in ids.iter().enumerate() {
            let url = &urls[index % urls.len()];
            let withdrawal = loop {
                let withdrawal: serde_json::Value =
                    http.get(format!("{url}/v1/withdrawals/{id}")).bearer_auth(TOKEN).send().await?.json().await?;
                if withdrawal["final"] == true {
                    break withdrawal;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(withdrawal["status"], "confirmed", "round {round}: {withdrawal}");
            let nonce = withdrawal["nonce"].as_u64().expect("a nonce");
            assert!(nonces.entry(*key).or_default().insert(nonce), "key hot{key}: nonce {nonce} used twice");
        }
        for (key, (_, address)) in self.keys.iter().enumerate() {
            let expected: BTreeSet<u64> = (first_nonces[key]..targets[key]).collect();
            assert_eq!(nonces.get(&key), Some(&expected), "key hot{key}: nonces not contiguous");
            assert_eq!(mined_count(http, rpc_url, *address).await, targets[key], "transactions beyond the withdrawals");
        }
        Ok(())
    }

    /// Prints the setup's table of rounds and its CPU table; stops its servers.
    pub(super) fn report(self, options: &Options) -> Measured {
        let setup = self.setup;
        println!("### {setup}");
        println!();
        println!("ethkms-server (release); {WITHDRAWALS} withdrawals per round, {} in flight", options.concurrency[0]);
        println!();
        println!(
            "| round | raw LocalStack Sign/s | withdrawals/s (posted → mined) | withdrawals ÷ Sign | all posted after | signatures over 1 s |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        for row in &self.rows {
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} s | {} |",
                row.round + 1,
                row.bare,
                row.rate,
                row.rate / row.bare,
                row.posted_in.as_secs_f64(),
                row.slow
            );
        }
        let ratios: Vec<f64> = self.rows.iter().map(|row| row.rate / row.bare).collect();
        let rates: Vec<f64> = self.rows.iter().map(|row| row.rate).collect();
        let bare_rates: Vec<f64> = self.rows.iter().map(|row| row.bare).collect();
        let (lowest, highest) =
            ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), ratio| (low.min(*ratio), high.max(*ratio)));
        let median_ratio = median(ratios.clone());
        println!("| median | {:.0} | {:.0} | {median_ratio:.2} | |", median(bare_rates), median(rates.clone()));
        println!();
        println!(
            "{setup}: withdrawals ÷ Sign over {} rounds: median {median_ratio:.2}, lowest {lowest:.2}, highest {highest:.2}",
            self.rows.len()
        );
        print_cpu(&self.processes, &self.cpu_rows);
        println!();
        Measured { setup, ratios, rates }
    }
}
