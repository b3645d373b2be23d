//! `cargo xtask schemathesis [--max-examples N] [--seed S]`: schemathesis (PyPI, pinned with its
//! dependencies in `xtask/services/schemathesis-requirements.txt`) against the signing service's OpenAPI
//! document, served by the real `ethkms-server` binary. Also run by `cargo xtask ci` after the tests, while
//! the services are up.
//!
//! The server gets a journal, a client token and a KMS key of its own on LocalStack, funded with 1 ether
//! on a fresh anvil of its own (the shared one is not disturbed). schemathesis runs every check it has
//! (`--checks all`) with the token: no 5xx; status codes, content types, headers and bodies as documented;
//! invalid data refused and valid data accepted; authentication not ignored; responses within
//! [`MAX_RESPONSE_SECONDS`]. Afterwards the server must still be running and answer `/healthz`.
//!
//! Its withdrawals are real but tiny: the key pays at most 0.0001 ether in fees per transaction, and its
//! policy, which counts those fees too, allows at most 1,000 wei each on top and 0.01 ether a day, and no
//! token transfers (`contract_calls = []`), so the rest are refused by policy.
//!
//! Without `cargo xtask services up`'s variables (`source target/services/env.sh`), the services are started
//! first. The server's log, configuration and journal are in `target/schemathesis/`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Result;
use crate::command::{cargo, display, run as run_command, workspace_root};
use crate::services::{self, ServiceEnv, http_request};

/// The pinned Python packages (compiled in, so the virtualenv's cache key follows the file).
const REQUIREMENTS: &str = include_str!("../services/schemathesis-requirements.txt");

/// Test cases per operation and phase, by default: about 2,000 requests in all, some 15 s on two cores.
const DEFAULT_MAX_EXAMPLES: u32 = 200;

/// The slowest answer allowed (a check), and so a hang's limit.
const MAX_RESPONSE_SECONDS: u32 = 5;

/// How long one request may take before schemathesis reports it (a hang).
const REQUEST_TIMEOUT_SECONDS: u32 = 10;

/// `cargo xtask schemathesis [--max-examples N] [--seed S]`.
pub(crate) fn run(options: &[&str]) -> Result {
    let mut settings = Settings::default();
    let mut options = options.iter();
    while let Some(&option) = options.next() {
        let mut value = || -> Result<u64> {
            let text = options.next().ok_or_else(|| format!("{option} needs a number"))?;
            Ok(text.parse().map_err(|_| format!("{option}: `{text}` is not a whole number"))?)
        };
        match option {
            "--max-examples" => settings.max_examples = u32::try_from(value()?)?,
            "--seed" => settings.seed = Some(value()?),
            _ => return Err("usage: cargo xtask schemathesis [--max-examples N] [--seed S]".into()),
        }
    }
    let services = match ServiceEnv::from_environment() {
        Some(services) => services,
        None => services::up()?,
    };
    check(&services, &settings)
}

/// How much schemathesis generates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Test cases per operation and phase.
    pub(crate) max_examples: u32,
    /// A seed to repeat a run; a random one (printed by schemathesis) otherwise.
    pub(crate) seed: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_examples: DEFAULT_MAX_EXAMPLES, seed: None }
    }
}

/// Builds the server and the CLI, installs schemathesis, starts anvil and the server, and runs
/// schemathesis against the server's `/openapi.json`.
pub(crate) fn check(services: &ServiceEnv, settings: &Settings) -> Result {
    let started = Instant::now();
    run_command(cargo().args(["build", "--locked", "-p", "ethkms-cli", "-p", "ethkms-server"]))?;
    let python = services::python_venv(
        "schemathesis",
        REQUIREMENTS,
        "import importlib.metadata; print('schemathesis', importlib.metadata.version('schemathesis'))",
    )?;
    let directory = workspace_root().join("target/schemathesis");
    if directory.exists() {
        std::fs::remove_dir_all(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    std::fs::create_dir_all(&directory)?;

    let mut children = Children(Vec::new());
    let anvil_port = free_port()?;
    let mut anvil = Command::new(&services.anvil);
    anvil
        .args(["--host", "127.0.0.1", "--port", &anvil_port.to_string(), "--silent", "--hardfork", "prague"])
        .stdout(Stdio::null());
    children.start(&mut anvil)?;
    wait_for("anvil", Duration::from_secs(30), &mut children, || {
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
        http_request(anvil_port, "POST", "/", Some(request)).is_ok_and(|response| response.status == 200)
    })?;
    let anvil_url = format!("http://127.0.0.1:{anvil_port}");

    let (key_id, address) = create_key(services)?;
    let mut fund = Command::new(&services.cast);
    fund.args(["rpc", "--rpc-url", &anvil_url, "anvil_setBalance", &address, "0xDE0B6B3A7640000"]);
    quiet(&mut fund)?;

    let token = format!("schemathesis-{}-{}", std::process::id(), started.elapsed().as_nanos());
    let server_port = free_port()?;
    let config = directory.join("ethkms-server.toml");
    // The client's webhook points at a closed port: its deliveries fail, and are listed.
    std::fs::write(directory.join("webhook-secret"), "whsec_schemathesis\n")?;
    std::fs::write(&config, configuration(server_port, &anvil_url, &key_id, &token, &directory))?;
    let log_path = directory.join("server.log");
    let log = std::fs::File::create(&log_path)?;
    let mut server = Command::new(crate::command::target_dir().join("debug/ethkms-server"));
    server.arg("--config").arg(&config).env("AWS_ENDPOINT_URL", &services.kms_endpoint).stdout(Stdio::null());
    server.stderr(log).env("RUST_LOG", "warn,ethkms_server=info");
    services.apply(&mut server);
    children.start(&mut server)?;
    wait_for("ethkms-server", Duration::from_secs(60), &mut children, || {
        http_request(server_port, "GET", "/readyz", None).is_ok_and(|response| response.status == 200)
    })
    .map_err(|error| format!("{error} (its log: {})", log_path.display()))?;

    let mut schemathesis = Command::new(python.with_file_name("schemathesis"));
    schemathesis
        .current_dir(&directory)
        .arg("run")
        .arg(format!("http://127.0.0.1:{server_port}/openapi.json"))
        .args(["--checks", "all", "--header"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--max-examples", &settings.max_examples.to_string()])
        .args(["--request-timeout", &REQUEST_TIMEOUT_SECONDS.to_string()])
        .args(["--max-response-time", &MAX_RESPONSE_SECONDS.to_string()])
        .args(["--report", "junit", "--report-dir"])
        .arg(directory.join("report"))
        .env("NO_COLOR", "1");
    if let Some(seed) = settings.seed {
        schemathesis.args(["--seed", &seed.to_string()]);
    }
    let result = run_command(&mut schemathesis);

    // No request may have crashed or wedged the server.
    if let Some(status) = children.0.last_mut().and_then(|server| server.try_wait().ok().flatten()) {
        return Err(format!("ethkms-server exited during the run ({status}); its log: {}", log_path.display()).into());
    }
    let health = http_request(server_port, "GET", "/healthz", None)
        .map_err(|error| format!("ethkms-server does not answer /healthz after the run: {error}"))?;
    if health.status != 200 {
        return Err(format!("ethkms-server answers /healthz {} after the run", health.status).into());
    }
    result.map_err(|error| format!("{error}; the server's log: {}", log_path.display()))?;
    let metrics = http_request(server_port, "GET", "/metrics", None)?.body;
    eprintln!("xtask: schemathesis passed in {:.1} s; the server afterwards:", started.elapsed().as_secs_f64());
    for line in metrics.lines().filter(|line| {
        ["ethkms_withdrawals_total", "ethkms_policy_denials_total", "ethkms_broadcasts_total"]
            .iter()
            .any(|name| line.starts_with(name))
    }) {
        eprintln!("  {line}");
    }
    // Valid withdrawals must have reached the engine: a policy that refuses everything tests only refusals.
    if !metrics.lines().any(|line| line.starts_with("ethkms_withdrawals_total{status=\"accepted\"}")) {
        return Err("no withdrawal was accepted during the run: the server's policy refused them all".into());
    }
    Ok(())
}

/// The server's configuration: one key with a tiny policy and approvals, deposit addresses, one client with
/// `token` and a webhook (its secret in `directory/webhook-secret`), files in `directory`.
fn configuration(port: u16, upstream: &str, key_id: &str, token: &str, directory: &Path) -> String {
    let webhook = format!(
        "{{ url = \"http://127.0.0.1:9/ethkms\", secret_file = \"{}\" }}",
        directory.join("webhook-secret").display()
    );
    crate::server_config::ServerConfig {
        port,
        upstream,
        key_id,
        client: ("schemathesis", token),
        directory,
        fees: r#"{ max_fee_per_tx = "0.0001ether" }"#,
        policy: r#"# 1,000 wei and at most 0.0001 ether (100,000,000,000,000 wei) of fees.
max_value = { ETH = "100000000001000" }
daily_limit = { ETH = "0.01ether" }
contract_calls = []"#,
        // Addresses are derived (and kept) without the factory existing; the watcher reads anvil's blocks.
        deposits: Some(
            r#"key = "hot"
factory = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
parent = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
poll_interval_ms = 500"#,
        ),
        webhook: Some(&webhook),
        // The key has approvals (of two strangers' addresses), so the approval routes are fuzzed past
        // authentication; only for a token the policy refuses anyway, so that ether withdrawals — the
        // documented example of 1,000 wei among them — are accepted as before, not held for approvals.
        approvals: Some(
            r#"threshold = { "0x6B175474E89094C44Da98b954EedeAC495271d0F" = "1" }
approvers = ["0x90f79bf6eb2c4f870365e785982e1f101e93b906", "0x15d34aaf54267db7d7c367839aaf71a00a2c6a65"]
quorum = 2"#,
        ),
    }
    .text()
}

/// A new KMS key on LocalStack, through the `ethkms` command line: its id and address.
fn create_key(services: &ServiceEnv) -> Result<(String, String)> {
    let mut create = Command::new(crate::command::target_dir().join("debug/ethkms"));
    create.args(["--json", "wallet", "create", "--description", "ethkms schemathesis"]);
    create.env("AWS_ENDPOINT_URL", &services.kms_endpoint);
    services.apply(&mut create);
    let printed = quiet(&mut create)?;
    let wallet: Value = serde_json::from_str(printed.lines().last().unwrap_or_default())
        .map_err(|error| format!("`{}` printed no JSON: {error}", display(&create)))?;
    match (wallet["key_id"].as_str(), wallet["address"].as_str()) {
        (Some(key_id), Some(address)) => Ok((key_id.to_owned(), address.to_owned())),
        _ => Err(format!("`{}` printed no key_id and address: {wallet}", display(&create)).into()),
    }
}

/// Runs the command (shown) and returns what it printed; fails with its error output.
fn quiet(command: &mut Command) -> Result<String> {
    eprintln!("$ {}", display(command));
    let output = command.output().map_err(|error| format!("could not start `{}`: {error}", display(command)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("`{}` failed ({}): {}", display(command), output.status, stderr.trim()).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `ready`, failing after `limit` or when one of the children exits.
fn wait_for(what: &str, limit: Duration, children: &mut Children, mut ready: impl FnMut() -> bool) -> Result {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = children.0.iter_mut().find_map(|child| child.try_wait().ok().flatten()) {
            return Err(format!("{what}: a process exited ({status}) before it was ready").into());
        }
        if started.elapsed() > limit {
            return Err(format!("{what} was not ready within {} s", limit.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The processes this task started, killed when it ends (however it ends).
struct Children(Vec<Child>);

impl Children {
    fn start(&mut self, command: &mut Command) -> Result {
        eprintln!("$ {}", display(command));
        let child = command.spawn().map_err(|error| format!("could not start `{}`: {error}", display(command)))?;
        self.0.push(child);
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemathesis_is_pinned_exactly() {
        let pins: Vec<&str> =
            REQUIREMENTS.lines().filter(|line| !line.starts_with('#') && !line.trim().is_empty()).collect();
        assert!(pins.contains(&"schemathesis==4.32.5"), "{pins:?}");
        assert!(pins.iter().all(|pin| pin.contains("==")), "every requirement pinned: {pins:?}");
    }

    #[test]
    fn the_configuration_holds_the_token_hash_and_a_tiny_policy() {
        let text = configuration(8600, "http://127.0.0.1:1", "key-id", "secret", Path::new("/tmp/x"));
        // SHA-256 of "secret".
        assert!(text.contains("2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"), "{text}");
        assert!(!text.contains("\"secret\""), "{text}");
        assert!(text.contains(r#"max_value = { ETH = "100000000001000" }"#), "{text}");
        assert!(text.contains("contract_calls = []") && text.contains("max_fee_per_tx"), "{text}");
        assert!(
            text.contains("webhook = { url = \"http://127.0.0.1:9/ethkms\", secret_file = \"/tmp/x/webhook-secret\" }"),
            "{text}"
        );
    }
}
