//! `cargo xtask demo`: the main job end to end on local services (LocalStack KMS and anvil), through the
//! `ethkms` command line: create a KMS wallet, fund it, send an EIP-1559 transfer and an ERC-20 transfer,
//! sign and verify a message and typed data; [deposit addresses](deposits) for three customers, found and
//! swept to a treasury in one transaction. Then the product: `ethkms serve` on the same KMS key, a few
//! withdrawals posted to its REST API (one refused by the key's policy, its rule named), watched until they
//! are confirmed — the largest only once two approvers ([approvals]) have signed it with `ethkms approve` —,
//! two customers' deposit addresses handed out by it and their deposits swept by its sweeper,
//! the audit log verified, the service stopped. Then [two replicas](replicas) on one
//! PostgreSQL journal, the lease holder killed mid-flight and its key taken over; a summary at the end.
//!
//! Services announced by a sourced `target/services/env.sh` are used and left running; otherwise the demo
//! starts them and stops them at the end (`cargo xtask demo --keep` leaves them running).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Result;
use crate::command::{cargo, display, run as run_command, workspace_root};
use crate::services::{self, ServiceEnv, http_request};

mod approvals;
mod deposits;
mod replicas;

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
    // Services already running (`env.sh` sourced, or started before) are used and left running; what this
    // run starts, it stops at the end (unless `--keep`).
    if let Some(services) = ServiceEnv::from_environment() {
        return demo(&services);
    }
    let session = services::Session::start()?;
    let result = demo(session.env());
    if keep {
        session.keep();
    }
    result
}

fn demo(services: &ServiceEnv) -> Result {
    run_command(cargo().args(["build", "--quiet", "-p", "ethkms-cli"]))?;
    let binary = crate::command::target_dir().join("debug/ethkms");
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

    let factory = deposits::run(services, &binary, &alias, &token, &mut summary)?;
    withdrawals(services, &binary, &key_id, &factory, &mut summary)?;
    replicas::run(services, &binary, &key_id, &mut summary)?;

    println!("\nethkms demo: all done with a key that never left KMS");
    for (index, item) in summary.iter().enumerate() {
        let mut lines = item.lines();
        println!("  {:>2}. {}", index + 1, lines.next().unwrap_or_default());
        for line in lines {
            println!("        {line}");
        }
    }
    Ok(())
}

/// The withdrawals the demo posts: (idempotency key, recipient, amount). The last is over the policy's
/// `max_value`.
const WITHDRAWALS: [(&str, &str, &str); 4] = [
    ("payout-1", "0x1111111111111111111111111111111111111111", "0.01ether"),
    ("payout-2", "0x2222222222222222222222222222222222222222", "0.025ether"),
    ("payout-3", "0x3333333333333333333333333333333333333333", "0.05ether"),
    ("payout-4", "0x4444444444444444444444444444444444444444", "0.5ether"),
];

/// The product: `ethkms serve` on the demo's KMS key, withdrawals through its REST API until they are
/// confirmed, deposit addresses handed out and swept by it (`factory`), its audit log verified.
fn withdrawals(services: &ServiceEnv, binary: &Path, key_id: &str, factory: &str, summary: &mut Vec<String>) -> Result {
    let directory = workspace_root().join("target/demo");
    if directory.exists() {
        std::fs::remove_dir_all(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    std::fs::create_dir_all(&directory)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let token = format!("demo-{}-{nanos}", std::process::id());
    let config = directory.join("ethkms-server.toml");
    let deposits = deposits::service_configuration(services, factory)?;
    let approvers = approvals::approvers(services, binary)?;
    let desk = format!("desk-{}-{nanos}", std::process::id());
    let written = configuration(port, &services.rpc_url, key_id, &token, &directory, Some(&deposits))
        + &approvals::configuration(&approvers, &desk);
    std::fs::write(&config, written)?;
    let log = directory.join("serve.log");

    let mut serve = cli(binary, services);
    serve.args(["serve", "--config"]).arg(&config).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?);
    eprintln!("$ {} 2> {}", display(&serve), log.display());
    let mut server = Server(Some(serve.spawn().map_err(|error| format!("could not start `ethkms serve`: {error}"))?));
    server.wait_ready(port, &log)?;
    summary.push(format!(
        "started `ethkms serve` on the same KMS key (127.0.0.1:{port}); its policy: at most 0.051 ETH per \
         withdrawal, fees included; withdrawals of 0.04 ETH or more need both approvers ({} and {}, KMS keys \
         of their own)",
        approvers[0].1, approvers[1].1
    ));

    let api = Api { port, token };
    let mut accepted = Vec::new();
    let mut pending = Vec::new();
    let mut refused = Vec::new();
    for (idempotency_key, to, amount) in WITHDRAWALS {
        let body =
            json!({ "idempotency_key": idempotency_key, "key": "hot", "to": to, "asset": "ETH", "amount": amount });
        let (status, answer) = api.call("POST", "/v1/withdrawals", Some(&body))?;
        match (status, answer["id"].as_str(), answer["error"]["kind"].as_str()) {
            (202, Some(id), _) => {
                if answer["status"] == "pending_approval" {
                    pending.push(id.to_owned());
                }
                accepted.push((id.to_owned(), amount, to));
            }
            (403, _, Some("policy_denied")) => refused.push(format!(
                "{amount} to {to}: policy_denied, rule {}: {}",
                answer["error"]["rule"].as_str().unwrap_or("?"),
                answer["error"]["message"].as_str().unwrap_or("")
            )),
            _ => return Err(format!("POST /v1/withdrawals {body} answered {status}: {answer}").into()),
        }
    }
    if accepted.len() != WITHDRAWALS.len() - 1 || refused.len() != 1 {
        return Err(format!("expected 3 withdrawals accepted and 1 refused; refused: {refused:?}").into());
    }
    summary.push(format!(
        "posted {} withdrawals to POST /v1/withdrawals: {} accepted (202; {} of them pending_approval), 1 refused \
         (403)\n{}",
        WITHDRAWALS.len(),
        accepted.len(),
        pending.len(),
        refused.join("\n")
    ));
    if pending.len() != 1 {
        return Err(format!("expected the 0.05 ETH withdrawal to wait for approvals; waiting: {pending:?}").into());
    }
    for id in &pending {
        approvals::approve(services, binary, port, &desk, id, &approvers, summary)?;
    }

    let started = Instant::now();
    let mut finals = Vec::new();
    for (id, amount, to) in &accepted {
        let answer = loop {
            let (status, answer) = api.call("GET", &format!("/v1/withdrawals/{id}"), None)?;
            if status != 200 {
                return Err(format!("GET /v1/withdrawals/{id} answered {status}: {answer}").into());
            }
            if answer["final"] == true {
                break answer;
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(format!("withdrawal {id} is still {} after 90 s", answer["status"]).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if answer["status"] != "confirmed" {
            return Err(format!("withdrawal {id} ended {}: {answer}", answer["status"]).into());
        }
        finals.push(format!(
            "{amount} to {to}: confirmed in block {} (nonce {}, {})",
            answer["block_number"],
            answer["nonce"],
            answer["tx_hash"].as_str().unwrap_or("?")
        ));
    }
    summary.push(format!(
        "watched them with GET /v1/withdrawals/ID until final ({:.1} s):\n{}",
        started.elapsed().as_secs_f64(),
        finals.join("\n")
    ));

    deposits::in_service(services, binary, &api, summary)?;

    server.stop()?;
    let verified =
        json(&mut cli(binary, services), &["audit", "verify", &directory.join("audit.jsonl").display().to_string()])?;
    if verified["valid"] != true {
        return Err(format!("the audit log does not verify: {verified}").into());
    }
    summary.push(format!(
        "stopped the service; `ethkms audit verify` checks its audit log: {} records, hash chain intact (head {})",
        verified["records"],
        text(&verified["head"])?
    ));
    Ok(())
}

/// The service's configuration: the demo's key as `hot`, with a small policy; one client, `demo`; the
/// `[deposits]` lines, if it hands out deposit addresses.
fn configuration(
    port: u16,
    upstream: &str,
    key_id: &str,
    token: &str,
    directory: &Path,
    deposits: Option<&str>,
) -> String {
    crate::server_config::ServerConfig {
        port,
        upstream,
        key_id,
        client: ("demo", token),
        directory,
        fees: r#"{ max_fee_per_tx = "0.001ether" }"#,
        policy: r#"# Ether limits count the most a withdrawal can pay in fees (max_fee_per_tx) too: 0.05 ether + 0.001.
max_value = { ETH = "0.051ether" }
daily_limit = { ETH = "1ether" }"#,
        deposits,
        webhook: None,
        approvals: None,
    }
    .text()
}

/// The service's REST API, through curl (the token stays out of what is printed).
struct Api {
    port: u16,
    token: String,
}

impl Api {
    /// `method path [body]`: the status and the JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut curl = Command::new("curl");
        curl.args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--request",
            method,
            "--write-out",
            "\n%{http_code}",
        ])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", self.token));
        if let Some(body) = body {
            curl.args(["--header", "Content-Type: application/json", "--data"]).arg(body.to_string());
            eprintln!("$ curl -X {method} http://127.0.0.1:{}{path} -d '{body}'", self.port);
        }
        curl.arg(format!("http://127.0.0.1:{}{path}", self.port));
        let output = curl.output().map_err(|error| format!("could not run curl (is it installed?): {error}"))?;
        let printed = String::from_utf8_lossy(&output.stdout);
        let (answer, status) = printed.rsplit_once('\n').unwrap_or(("", &printed));
        if !output.status.success() {
            return Err(format!("curl {method} {path}: {}", String::from_utf8_lossy(&output.stderr).trim()).into());
        }
        let status = status.trim().parse().map_err(|_| format!("curl {method} {path}: no status in {printed:?}"))?;
        let answer = if answer.trim().is_empty() { Value::Null } else { serde_json::from_str(answer)? };
        if body.is_some() {
            eprintln!("  {status} {answer}");
        }
        Ok((status, answer))
    }
}

/// The `ethkms serve` process: stopped with SIGTERM (graceful), and killed if the demo ends otherwise.
struct Server(Option<Child>);

impl Server {
    fn wait_ready(&mut self, port: u16, log: &Path) -> Result {
        let started = Instant::now();
        while !http_request(port, "GET", "/readyz", None).is_ok_and(|response| response.status == 200) {
            if let Some(status) = self.0.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                let _ = self.0.take();
                return Err(format!("`ethkms serve` exited ({status}); its log: {}", log.display()).into());
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("`ethkms serve` was not ready within 60 s; its log: {}", log.display()).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGTERM, then up to 30 s for the requests and withdrawals in flight to finish.
    fn stop(mut self) -> Result {
        let Some(mut child) = self.0.take() else { return Ok(()) };
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("`ethkms serve` exited with {status}").into())
                };
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("`ethkms serve` did not stop within 30 s of SIGTERM; killed".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
    node.arg(script).env("NODE_PATH", &services.node_modules).stdin(Stdio::piped());
    node.stdout(Stdio::piped());
    let mut child = node.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, case.to_string().as_bytes())?;
    }
    let result = child.wait_with_output()?;
    let recovered: Value = serde_json::from_slice(&result.stdout)?;
    text(&recovered[0]["address"])
}
