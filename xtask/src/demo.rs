//! `cargo xtask demo`: the main job end to end on local services it starts itself (LocalStack KMS and
//! anvil), through the `ethkms` command line: create a KMS wallet, fund it, send an EIP-1559 transfer
//! and an ERC-20 transfer, sign and verify a message and typed data, print a summary, stop the services.
//! `cargo xtask demo --keep` leaves the services running.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::Result;
use crate::command::{cargo, display, run as run_command, workspace_root};
use crate::services::{self, ServiceEnv};

const RECIPIENT: &str = "0x000000000000000000000000000000000000dEaD";
const TYPED_DATA: &str = r#"{
  "types": {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}, {"name": "chainId", "type": "uint256"}],
    "Withdrawal": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}, {"name": "reference", "type": "string"}]
  },
  "primaryType": "Withdrawal",
  "domain": {"name": "ethkms demo", "version": "1", "chainId": 31337},
  "message": {"to": "0x000000000000000000000000000000000000dEaD", "amount": "100000000000000000", "reference": "demo withdrawal"}
}"#;

/// `cargo xtask demo [--keep]`.
pub(crate) fn run(options: &[&str]) -> Result {
    let keep = match options {
        [] => false,
        ["--keep"] => true,
        _ => return Err("usage: cargo xtask demo [--keep]".into()),
    };
    let services = services::up()?;
    let result = demo(&services);
    if !keep {
        services::down()?;
    }
    result
}

fn demo(services: &ServiceEnv) -> Result {
    run_command(cargo().args(["build", "--quiet", "-p", "ethkms"]))?;
    let binary = workspace_root().join("target/debug/ethkms");
    let ethkms = |arguments: &[&str]| -> Result<Value> { json(&mut cli(&binary, services), arguments) };
    let mut summary = Vec::new();

    let alias = format!("alias/demo-{}", std::process::id());
    let wallet = ethkms(&["wallet", "create", "--alias", &alias, "--tag", "purpose=demo"])?;
    let address = text(&wallet["address"])?;
    let key_id = text(&wallet["key_id"])?;
    summary.push(format!("created KMS wallet {address} ({alias}, key {key_id})"));

    let mut fund = Command::new(&services.cast);
    fund.args(["rpc", "--rpc-url", &services.rpc_url, "anvil_setBalance", &address, "0x56BC75E2D63100000"]);
    output(&mut fund)?;
    let balance = ethkms(&["balance", &alias])?;
    summary.push(format!("funded it on anvil: {} ETH", text(&balance["ether"])?));

    let sent = ethkms(&["send", &alias, "--to", RECIPIENT, "--value", "0.1ether"])?;
    summary.push(format!("sent 0.1 ETH (EIP-1559) in {} (block {})", text(&sent["hash"])?, sent["block"]));

    // The ERC-20: foundry's cast deploys it, signing with the same KMS key.
    let bytecode = std::fs::read_to_string(workspace_root().join("crates/ethkms-eth/tests/contracts/TestToken.bin"))?;
    let supply = format!("{:064x}", 1_000_000u128 * 10u128.pow(18));
    let mut deploy = Command::new(&services.cast);
    deploy
        .args(["send", "--aws", "--json", "--rpc-url", &services.rpc_url, "--create"])
        .arg(format!("0x{}{supply}", bytecode.trim()))
        .env("AWS_KMS_KEY_ID", &key_id)
        .env("AWS_ENDPOINT_URL", &services.kms_endpoint);
    services.apply(&mut deploy);
    let deployed: Value = serde_json::from_str(&output(&mut deploy)?)?;
    let token = text(&deployed["contractAddress"])?;
    let transfer = ethkms(&["send", &alias, "--to", RECIPIENT, "--value", "25", "--token", &token])?;
    let token_balance = ethkms(&["balance", RECIPIENT, "--token", &token])?;
    summary.push(format!(
        "deployed an ERC-20 at {token} with cast --aws (same KMS key); transferred 25 tokens in {}; recipient holds {}",
        text(&transfer["hash"])?,
        text(&token_balance["formatted"])?
    ));

    let message = "ethkms demo: withdrawal batch approved";
    let signed = ethkms(&["sign", "message", &alias, message])?;
    let signature = text(&signed["signature"])?;
    let verified = ethkms(&["verify", "--address", &address, "--message", message, "--signature", &signature])?;
    summary.push(format!("signed a message and verified it: valid = {}", verified["valid"]));

    let typed_file = workspace_root().join("target/demo-typed-data.json");
    std::fs::write(&typed_file, TYPED_DATA)?;
    let typed = ethkms(&["sign", "typed-data", &alias, &typed_file.display().to_string()])?;
    let recovered = recover_typed_data(services, &text(&typed["signature"])?)?;
    if recovered != address {
        return Err(format!("ethers recovered {recovered} from the typed-data signature, not {address}").into());
    }
    summary.push(format!("signed EIP-712 typed data; ethers v6 recovers the signer: {recovered}"));

    println!("\nethkms demo: all done with a key that never left KMS");
    for (index, line) in summary.iter().enumerate() {
        println!("  {}. {line}", index + 1);
    }
    Ok(())
}

/// `ethkms --json` pointed at the services through the standard AWS and foundry variables.
fn cli(binary: &Path, services: &ServiceEnv) -> Command {
    let mut command = Command::new(binary);
    services.apply(&mut command);
    command.env("AWS_ENDPOINT_URL", &services.kms_endpoint).env("ETH_RPC_URL", &services.rpc_url).arg("--json");
    command
}

fn json(command: &mut Command, arguments: &[&str]) -> Result<Value> {
    let text = output(command.args(arguments))?;
    let last = text.lines().last().ok_or_else(|| format!("`{}` printed nothing", display(command)))?;
    Ok(serde_json::from_str(last)?)
}

fn output(command: &mut Command) -> Result<String> {
    eprintln!("$ {}", display(command));
    let result = command.output().map_err(|error| format!("could not start `{}`: {error}", display(command)))?;
    if !result.status.success() {
        return Err(format!("`{}` failed: {}", display(command), String::from_utf8_lossy(&result.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}

fn text(value: &Value) -> Result<String> {
    value.as_str().map(str::to_owned).ok_or_else(|| format!("expected a string, got {value}").into())
}

/// The signer of the demo's typed data, as ethers v6 recovers it.
fn recover_typed_data(services: &ServiceEnv, signature: &str) -> Result<String> {
    let script: PathBuf = workspace_root().join("crates/ethkms-eth/tests/verifiers/ethers_recover.cjs");
    let case = serde_json::json!([{ "name": "typed", "kind": "typed", "json": TYPED_DATA, "signature": signature }]);
    let mut node = Command::new("node");
    node.arg(script).env("NODE_PATH", &services.node_modules).stdin(std::process::Stdio::piped());
    node.stdout(std::process::Stdio::piped());
    let mut child = node.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, case.to_string().as_bytes())?;
    }
    let result = child.wait_with_output()?;
    let recovered: Value = serde_json::from_slice(&result.stdout)?;
    text(&recovered[0]["address"])
}
