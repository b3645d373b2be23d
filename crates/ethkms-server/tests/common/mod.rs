//! Helpers of the service's integration tests alone: its configuration and the server binary as a child
//! process (killed, paused, resumed, terminated); [`exactly_once`], the on-chain check that every
//! withdrawal was paid once; [`approvers`], local keys signing EIP-712 approvals; [`deposit_campaign`], deposits swept while a campaign's faults happen; [`replicas`], several server processes sharing a PostgreSQL journal, and
//! [`workload`], the clients posting withdrawals to them. What
//! other crates' tests need too (LocalStack and anvil, funded keys, the service in process and its REST
//! API, reading the chain directly) is in `ethkms-test-support`, re-exported here.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod approvers;
pub mod deposit_campaign;
pub mod exactly_once;
pub mod replicas;
pub mod typed;
pub mod workload;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use ethkms_test_support::chain::{
    DEVELOPER, ETHER, balance, block_number, deploy_token, quantity, receipt, recipient, rpc, token_balance,
    transactions_from,
};
pub use ethkms_test_support::server::{
    Api, Paths, TOKEN, config_client, config_client_of_keys, config_head, config_head_with_journal, config_key,
    serve_in_process, serve_in_process_unready, withdrawal, withdrawal_from,
};
pub use ethkms_test_support::{Anvil, free_port, funded_key, localstack};

/// A configuration of key `hot` (no withdrawals to 0xdEaD, at most 1 ether each) for the clients
/// `exchange` ([`TOKEN`], withdrawals) and `reader` (`reader-token`, `personal_sign`).
pub fn configuration(listen: &str, rpc_url: &str, key: &str, paths: &Paths) -> String {
    configuration_with_journal(listen, rpc_url, key, paths, &paths.journal.display().to_string())
}

/// [`configuration`] with the journal given as the value of `journal`: a SQLite path or a `postgres://`
/// URL (the audit log stays `paths.audit`).
pub fn configuration_with_journal(listen: &str, rpc_url: &str, key: &str, paths: &Paths, journal: &str) -> String {
    let head = config_head_with_journal(listen, rpc_url, key, &paths.audit, journal);
    let exchange = config_client("exchange", TOKEN, &["withdrawals"]);
    let reader = config_client("reader", "reader-token", &["personal_sign"]);
    format!(
        r#"{head}[keys.hot.policy]
destination_denylist = ["0x000000000000000000000000000000000000dEaD"]
max_value = {{ ETH = "1ether" }}
{exchange}{reader}"#
    )
}

/// The server binary, as a child process.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
}

impl Server {
    /// Starts the server with its log discarded.
    pub async fn start(config: &Path, kms_endpoint: &str, url: &str) -> Self {
        Self::spawn(config, kms_endpoint, url, Stdio::null(), None).await
    }

    /// Starts the server with its log appended to `log` (kept for a failing test to point at).
    pub async fn start_logging(config: &Path, kms_endpoint: &str, url: &str, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Self::spawn(config, kms_endpoint, url, Stdio::from(file), Some(log)).await
    }

    /// Starts the binary and waits until it answers `/healthz`.
    ///
    /// # Panics
    /// If it exits first (a configuration it refuses, say: the log says why) or does not answer in 30 s.
    async fn spawn(config: &Path, kms_endpoint: &str, url: &str, stderr: Stdio, log: Option<&Path>) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_ethkms-server"))
            .arg("--config")
            .arg(config)
            .env("AWS_ENDPOINT_URL", kms_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn,ethkms_server=debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the server starts");
        let mut server = Self { child };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http.get(format!("{url}/healthz")).send().await.is_ok_and(|response| response.status().is_success()) {
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = log.map_or_else(|| "discarded".to_owned(), |log| log.display().to_string());
                panic!("the server for {url} exited while starting ({status}); config {}, log {log}", config.display());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the server did not come up at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// `SIGSTOP`: the process is frozen — no request answered, no lease renewed, no write — until
    /// [`Self::sigcont`]; the kernel still accepts connections on its socket, so a client must time out.
    pub fn sigstop(&self) {
        self.signal("STOP");
    }

    /// `SIGCONT`: the process stopped by [`Self::sigstop`] runs on where it stopped.
    pub fn sigcont(&self) {
        self.signal("CONT");
    }

    /// `SIGTERM` (a clean shutdown: it finishes what it is doing and releases what it holds), then waits
    /// for it to exit: its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// Sends `SIGNAME` with the `kill` program: the standard library sends only SIGKILL, and a signal
    /// of our own choosing would need `unsafe` (`libc::kill`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|status| status.success()), "kill -{name} {}", self.child.id());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
