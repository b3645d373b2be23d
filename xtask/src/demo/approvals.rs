//! The demo's four-eyes approvals: two approvers, each a KMS key of its own (in production, under another
//! IAM role), a quorum of both for withdrawals of 0.04 ETH or more; the service holds such a withdrawal
//! `pending_approval` until `ethkms approve` has signed and posted both approvals, then pays it.

use std::path::Path;

use serde_json::Value;

use super::{cli, json, output, text};
use crate::Result;
use crate::services::ServiceEnv;

/// The approvers: (alias, address) of two new KMS keys.
pub(super) fn approvers(services: &ServiceEnv, binary: &Path) -> Result<Vec<(String, String)>> {
    let mut approvers = Vec::new();
    for name in ["alice", "bob"] {
        let alias = format!("alias/demo-approver-{name}-{}", std::process::id());
        let wallet =
            json(&mut cli(binary, services), &["wallet", "create", "--alias", &alias, "--tag", "purpose=approver"])?;
        approvers.push((alias, text(&wallet["address"])?));
    }
    Ok(approvers)
}

/// The configuration's lines for them: `[keys.hot.approvals]` and the approval desk's client (token `desk`).
pub(super) fn configuration(approvers: &[(String, String)], desk: &str) -> String {
    let addresses: Vec<String> = approvers.iter().map(|(_, address)| format!("\"{address}\"")).collect();
    format!(
        "\n[keys.hot.approvals]\nthreshold = {{ ETH = \"0.04ether\" }}\napprovers = [{}]\nquorum = 2\n\n\
         [clients.desk]\ntoken_sha256 = \"{}\"\nkeys = [\"hot\"]\nmethods = [\"approvals\"]\n",
        addresses.join(", "),
        crate::server_config::token_sha256(desk)
    )
}

/// Lists what waits and has each approver approve withdrawal `id` with `ethkms approve`.
pub(super) fn approve(
    services: &ServiceEnv,
    binary: &Path,
    port: u16,
    desk: &str,
    id: &str,
    approvers: &[(String, String)],
    summary: &mut Vec<String>,
) -> Result {
    let url = format!("http://127.0.0.1:{port}");
    let desk_cli = || {
        let mut command = cli(binary, services);
        command.env("ETHKMS_SERVICE_TOKEN", desk);
        command
    };
    let listed = output(desk_cli().args(["approvals", "list", "--service", &url]))?;
    let waiting = listed
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["id"] == id)
        .ok_or_else(|| format!("`ethkms approvals list` does not list {id}: {listed}"))?;
    let mut lines = vec![format!(
        "`ethkms approvals list`: {} wei to {} waits for {} approvals",
        text(&waiting["amount"])?,
        text(&waiting["to"])?,
        waiting["quorum"]
    )];
    for (alias, address) in approvers {
        let answer = json(&mut desk_cli(), &["approve", id, "--key", alias, "--service", &url])?;
        lines.push(format!(
            "`ethkms approve` with {alias} ({address}, a KMS key): {}, {} of {}",
            text(&answer["status"])?,
            answer["approvals"],
            answer["quorum"]
        ));
    }
    summary.push(lines.join("\n"));
    Ok(())
}
