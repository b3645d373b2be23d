//! The demo's deposit addresses: through the `ethkms deposits` commands, a factory deployed by the demo's
//! KMS key, three customers' addresses derived off-chain, ether and the demo's token deposited to them, the
//! deposits found by a scan, all three deployed and swept to a treasury in one transaction, and a later
//! deposit passed on to the treasury as it arrives.

use std::path::Path;

use serde_json::Value;

use super::{cli, json, output, text};
use crate::Result;
use crate::services::ServiceEnv;

pub(super) fn run(services: &ServiceEnv, binary: &Path, alias: &str, token: &str, summary: &mut Vec<String>) -> Result {
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
    Ok(())
}
