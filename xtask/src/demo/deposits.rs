//! The demo's deposit addresses: through the `ethkms deposits` commands, a factory deployed by the demo's
//! KMS key, three customers' addresses derived off-chain, ether and the demo's token deposited to them, the
//! deposits found by a scan, all three deployed and swept to a treasury in one transaction, and a later
//! deposit passed on to the treasury as it arrives. Then the same in the service ([`in_service`]): addresses
//! handed out by `POST /v1/deposit-addresses`, deposits found by its watcher and swept by its sweeper
//! through the withdrawal engine.

use std::path::Path;

use serde_json::Value;

use super::{cli, json, output, text};
use crate::Result;
use crate::services::ServiceEnv;

/// The CLI's part; returns the factory's address.
pub(super) fn run(
    services: &ServiceEnv,
    binary: &Path,
    alias: &str,
    token: &str,
    summary: &mut Vec<String>,
) -> Result<String> {
    let ethkms = |arguments: &[&str]| -> Result<Value> { json(&mut cli(binary, services), arguments) };
    let lines = |arguments: &[&str]| -> Result<Vec<Value>> {
        let printed = output(cli(binary, services).args(arguments))?;
        printed.lines().map(|line| serde_json::from_str(line).map_err(Into::into)).collect()
    };
    let factory = text(&ethkms(&["deposits", "deploy-factory", alias])?["factory"])?;
    let treasury = format!("0x{:040x}", 0x7ea5_0000_u64 + u64::from(std::process::id()));
    let target = ["--factory", factory.as_str(), "--parent", treasury.as_str()];
    let customers = ["alice", "bob", "carol"];
    let derived = lines(&[&["deposits", "address"][..], &target, &customers].concat())?;
    let address = |index: usize| text(&derived[index]["address"]);
    summary.push(format!(
        "deployed a deposit factory at {factory} (owner: the demo key); derived, with no node and no KMS:\n\
         alice {}, bob {}, carol {}",
        address(0)?,
        address(1)?,
        address(2)?
    ));

    let mut block = std::process::Command::new(&services.cast);
    block.args(["block-number", "--rpc-url", &services.rpc_url]);
    let start = (output(&mut block)?.trim().parse::<u64>()? + 1).to_string();
    ethkms(&["send", alias, "--to", &address(0)?, "--value", "0.2ether"])?;
    ethkms(&["send", alias, "--to", &address(1)?, "--value", "0.3ether"])?;
    ethkms(&["send", alias, "--to", &address(2)?, "--value", "10", "--token", token])?;
    let found =
        lines(&[&["deposits", "scan"][..], &target, &customers, &["--from-block", &start, "--token", token]].concat())?;
    let described: Vec<String> = found
        .iter()
        .map(|deposit| {
            let asset = if deposit["asset"] == "ETH" { "wei" } else { "token units" };
            format!(
                "{} {} {asset}",
                deposit["reference"].as_str().unwrap_or("?"),
                deposit["amount"].as_str().unwrap_or("?")
            )
        })
        .collect();
    summary.push(format!("deposited and found by a scan: {}", described.join(", ")));

    let swept =
        lines(&[&["deposits", "sweep", "--key", alias][..], &target, &customers, &["--token", token]].concat())?;
    let sweep = swept.first().ok_or("the sweep swept nothing")?;
    let ether = ethkms(&["balance", &treasury])?;
    let tokens = ethkms(&["balance", &treasury, "--token", token])?;
    summary.push(format!(
        "deployed and swept all three in one transaction ({} gas, the treasury's forwarder deployed in it too; one KMS \
         signature): the treasury holds {} ETH and {} tokens",
        sweep["gas_used"],
        text(&ether["ether"])?,
        text(&tokens["formatted"])?
    ));
    ethkms(&["send", alias, "--to", &address(0)?, "--value", "0.05ether"])?;
    let after = ethkms(&["balance", &treasury])?;
    summary.push(format!(
        "a later deposit to alice's (now deployed) address reached the treasury in the same transaction: {} ETH",
        text(&after["ether"])?
    ));
    Ok(factory)
}

/// Anvil's first developer account (unlocked on anvil): the customers' wallet in the service's part.
const CUSTOMER_WALLET: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// The treasury of the service's deposit addresses.
pub(super) fn service_treasury() -> String {
    format!("0x{:040x}", 0x7ea6_0000_u64 + u64::from(std::process::id()))
}

/// The `[deposits]` lines of the service: `factory`, [`service_treasury`], from the chain's head on,
/// confirmed at once (the demo's anvil mines a block per transaction), swept every second.
pub(super) fn service_configuration(services: &ServiceEnv, factory: &str) -> Result<String> {
    let mut block = std::process::Command::new(&services.cast);
    block.args(["block-number", "--rpc-url", &services.rpc_url]);
    let start = output(&mut block)?.trim().parse::<u64>()?;
    Ok(format!(
        "key = \"hot\"\nfactory = \"{factory}\"\nparent = \"{}\"\nconfirmations = 1\nstart_block = {start}\n\
         poll_interval_ms = 200\nsweep_interval_ms = 1000\n",
        service_treasury()
    ))
}

/// The service's part: two customers' addresses handed out by the service, ether sent to them from a
/// customer's wallet, found by the watcher and swept by the sweeper through the withdrawal engine.
pub(super) fn in_service(services: &ServiceEnv, binary: &Path, api: &super::Api, summary: &mut Vec<String>) -> Result {
    let mut sent = Vec::new();
    for (reference, amount) in [("dave", "0.1ether"), ("erin", "0.2ether")] {
        let (status, answer) =
            api.call("POST", "/v1/deposit-addresses", Some(&serde_json::json!({ "reference": reference })))?;
        if status != 200 {
            return Err(format!("POST /v1/deposit-addresses answered {status}: {answer}").into());
        }
        let address = text(&answer["address"])?;
        let mut send = std::process::Command::new(&services.cast);
        send.args(["send", "--unlocked", "--from", CUSTOMER_WALLET, "--value", amount, "--rpc-url", &services.rpc_url])
            .arg(&address);
        output(&mut send)?;
        sent.push(format!("{reference} {address}: {amount}"));
    }
    let started = std::time::Instant::now();
    let deposits = loop {
        let (status, answer) = api.call("GET", "/v1/deposits?since=0", None)?;
        if status != 200 {
            return Err(format!("GET /v1/deposits answered {status}: {answer}").into());
        }
        let list = answer["deposits"].as_array().cloned().unwrap_or_default();
        if list.len() == 2 && list.iter().all(|deposit| deposit["sweep_status"] == "swept") {
            break list;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            return Err(format!("the service's deposits were not swept within 60 s: {list:?}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let sweeps: std::collections::BTreeSet<&str> =
        deposits.iter().filter_map(|deposit| deposit["sweep_tx_hash"].as_str()).collect();
    let treasury = json(&mut cli(binary, services), &["balance", &service_treasury()])?;
    summary.push(format!(
        "the service handed out deposit addresses (POST /v1/deposit-addresses) and customers paid in:\n{}\n\
         its watcher found both (GET /v1/deposits: confirmed) and its sweeper swept them through the withdrawal \
         engine ({} sweep transaction{}: {}): the treasury {} holds {} ETH",
        sent.join("\n"),
        sweeps.len(),
        if sweeps.len() == 1 { "" } else { "s" },
        sweeps.iter().copied().collect::<Vec<_>>().join(", "),
        service_treasury(),
        text(&treasury["ether"])?
    ));
    Ok(())
}
