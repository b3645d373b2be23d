//! The signing service's configuration as the tasks that start it write it (`demo`, `schemathesis`): one
//! KMS key named `hot` on anvil's chain, final after one block, one client allowed to make withdrawals (and
//! to use deposit addresses, when there are), its files in one folder; each task gives the key's fee caps
//! and policy.

use std::path::Path;

use sha2::{Digest, Sha256};

/// What differs between the tasks' services.
pub(crate) struct ServerConfig<'a> {
    /// The port on 127.0.0.1.
    pub(crate) port: u16,
    /// The node's URL.
    pub(crate) upstream: &'a str,
    /// The KMS key.
    pub(crate) key_id: &'a str,
    /// The client's name and bearer token (only its SHA-256 is written).
    pub(crate) client: (&'a str, &'a str),
    /// Where the audit log and the journal go.
    pub(crate) directory: &'a Path,
    /// The key's `fees = { … }` caps, TOML.
    pub(crate) fees: &'a str,
    /// The lines of `[keys.hot.policy]`, TOML.
    pub(crate) policy: &'a str,
    /// The lines of `[deposits]`, TOML, if the service hands out deposit addresses (the client then may
    /// use them too).
    pub(crate) deposits: Option<&'a str>,
    /// The client's `webhook = { … }` value, TOML, if it has one.
    pub(crate) webhook: Option<&'a str>,
    /// The lines of `[keys.hot.approvals]`, TOML, if the key's large withdrawals need approvals (the client
    /// then may carry approvers' decisions and propose allowlist additions too).
    pub(crate) approvals: Option<&'a str>,
}

/// The SHA-256 of a bearer token, in hexadecimal: what a client's `token_sha256` holds.
pub(crate) fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

impl ServerConfig<'_> {
    /// The configuration file's text.
    pub(crate) fn text(&self) -> String {
        let (client, token) = self.client;
        let token_sha256 = token_sha256(token);
        format!(
            r#"listen = "127.0.0.1:{port}"
upstream = "{upstream}"
audit_log = "{audit}"
journal = "{journal}"
withdrawals = {{ poll_interval_ms = 200 }}

[keys.hot]
key = "{key_id}"
chain_id = 31337
confirmations = 1
fees = {fees}
[keys.hot.policy]
{policy}
{approvals}
[clients.{client}]
token_sha256 = "{token_sha256}"
keys = ["hot"]
methods = [{methods}]
{webhook}{deposits}"#,
            port = self.port,
            upstream = self.upstream,
            key_id = self.key_id,
            fees = self.fees,
            policy = self.policy.trim_end(),
            audit = self.directory.join("audit.jsonl").display(),
            journal = self.directory.join("journal.sqlite").display(),
            methods = [
                Some(r#""withdrawals""#),
                self.deposits.map(|_| r#""deposits""#),
                self.approvals.map(|_| r#""approvals", "allowlist""#),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
            approvals =
                self.approvals.map(|lines| format!("[keys.hot.approvals]\n{}\n", lines.trim_end())).unwrap_or_default(),
            webhook = self.webhook.map(|value| format!("webhook = {value}\n")).unwrap_or_default(),
            deposits = self.deposits.map(|lines| format!("\n[deposits]\n{}\n", lines.trim_end())).unwrap_or_default(),
        )
    }
}
