//! `ethkms approve` and `ethkms approvals list`, run as programs against the signing service (in this
//! process) on LocalStack and anvil: the pending withdrawal listed, an approval signed by a KMS key and
//! posted, the same approver again, a key that is no approver, an unknown withdrawal and a missing token
//! refused with their exit codes, a decision printed instead of posted, the quorum completed (the
//! withdrawal paid), and a rejection. And `ethkms allowlist list` and `ethkms allowlist approve`: proposed
//! additions listed, approved by two KMS keys, one cancelled, refusals with their exit codes.

use std::sync::Arc;
use std::time::Duration;

use ethkms::backend::{CreateKeyRequest, KeyBackend};
use ethkms_test_support::chain::recipient;
use ethkms_test_support::server::{Paths, TOKEN, config_client_of_keys, config_head, serve_in_process, withdrawal};
use ethkms_test_support::{funded_key, localstack, services, unique};
use serde_json::Value;

mod common;
use common::{ethkms, json_lines};

const DESK: &str = "desk-token";

/// Runs the program off the runtime's threads (the service answers on them): (exit code, stdout, stderr).
async fn run(mut command: assert_cmd::Command) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = command.output().unwrap();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
    })
    .await
    .unwrap()
}

/// A new KMS key with alias `alias`: its address.
async fn approver_key(backend: &Arc<dyn KeyBackend>, alias: &str) -> String {
    let info = backend.create_key(&CreateKeyRequest::new().alias(alias).description("approver")).await.unwrap();
    info.address.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_lists_approves_rejects_and_is_refused_with_exit_codes() {
    let Some(services) = services() else { return };
    let Some((_, backend)) = localstack().await else { return };
    let run_id = unique("cli-approvals");
    let (hot, _) = funded_key(&backend, &services.rpc_url).await;
    let (alias_a, alias_b, alias_stranger) =
        (format!("alias/{run_id}-a"), format!("alias/{run_id}-b"), format!("alias/{run_id}-stranger"));
    let a = approver_key(&backend, &alias_a).await;
    let b = approver_key(&backend, &alias_b).await;
    approver_key(&backend, &alias_stranger).await;
    let paths = Paths::new();
    let text = format!(
        "{head}[keys.hot.approvals]\nthreshold = {{ ETH = \"1ether\" }}\napprovers = [\"{a}\", \"{b}\"]\nquorum = 2\n{exchange}{desk}",
        head = config_head("127.0.0.1:0", &services.rpc_url, &hot, &paths),
        exchange = config_client_of_keys("exchange", TOKEN, &["hot"], &["withdrawals"]),
        desk = config_client_of_keys("desk", DESK, &["hot"], &["approvals"]),
    );
    let api = serve_in_process(&text, Arc::clone(&backend)).await;
    let to = recipient(&run_id, 1);
    let (status, posted) = api.post(&withdrawal(&format!("{run_id}-1"), to, "ETH", "2ether")).await;
    assert_eq!((status, posted["status"].as_str()), (202, Some("pending_approval")), "{posted}");
    let id = posted["id"].as_str().unwrap().to_owned();
    let cli = |arguments: &[&str]| {
        let mut command = ethkms(&services);
        command.env("ETHKMS_SERVICE_TOKEN", DESK).arg("--json").args(arguments);
        command
    };
    let approve = |key: &str, extra: &[&str]| {
        cli(&[&["approve", id.as_str(), "--key", key, "--service", api.url.as_str()][..], extra].concat())
    };

    // Listed, with no approvals yet.
    let (code, listed, stderr) = run(cli(&["approvals", "list", "--service", &api.url])).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<Value> = json_lines(&listed);
    let entry = listed.iter().find(|line| line["id"] == id.as_str()).expect("listed");
    assert_eq!((entry["quorum"].as_u64(), entry["approved_by"].as_array().map(Vec::len)), (Some(2), Some(0)));

    // A approves (its KMS key signs): counted.
    let (code, out, stderr) = run(approve(&alias_a, &[])).await;
    assert_eq!(code, 0, "{stderr}");
    let answer = &json_lines(&out)[0];
    assert_eq!((answer["status"].as_str(), answer["approvals"].as_u64()), (Some("pending_approval"), Some(1)));
    assert_eq!(answer["approver"].as_str().map(str::to_lowercase), Some(a.to_lowercase()));

    // Refusals and their exit codes.
    let (code, _, stderr) = run(approve(&alias_a, &[])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already decided"), "{stderr}");
    let (code, _, stderr) = run(approve(&alias_stranger, &[])).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("is not an approver"), "{stderr}");
    let mut unknown = cli(&["approve", "no-such-withdrawal", "--key", &alias_b, "--service", &api.url]);
    let (code, _, stderr) = run(std::mem::replace(&mut unknown, cli(&[]))).await;
    assert_eq!(code, 3, "{stderr}");
    let mut no_token = ethkms(&services);
    no_token.args(["approvals", "list", "--service", &api.url]);
    let (code, _, stderr) = run(no_token).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("ETHKMS_SERVICE_TOKEN") && !stderr.contains(DESK), "{stderr}");

    // B's decision printed, not posted; then posted: the quorum, and the withdrawal is paid.
    let (code, printed, stderr) = run(approve(&alias_b, &["--print"])).await;
    assert_eq!(code, 0, "{stderr}");
    let printed = &json_lines(&printed)[0];
    assert_eq!(printed["decision"], "approve");
    assert_eq!(printed["signed"]["id"], id.as_str());
    assert_eq!(api.get(&id).await["status"], "pending_approval", "printing posts nothing");
    let (code, out, stderr) = run(approve(&alias_b, &[])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_lines(&out)[0]["approvals"], 2);
    let settled = api.settled(&id, Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");

    // A rejection ends another one.
    let (_, second) = api.post(&withdrawal(&format!("{run_id}-2"), to, "ETH", "3ether")).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (code, out, stderr) =
        run(cli(&["approve", &second_id, "--key", &alias_b, "--reject", "--service", &api.url])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_lines(&out)[0]["status"], "rejected");
    assert_eq!(api.get(&second_id).await["final"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_approve_and_cancel_allowlist_additions_with_their_keys() {
    let Some(services) = services() else { return };
    let Some((_, backend)) = localstack().await else { return };
    let run_id = unique("cli-allowlist");
    let (hot, _) = funded_key(&backend, &services.rpc_url).await;
    let (alias_a, alias_b) = (format!("alias/{run_id}-a"), format!("alias/{run_id}-b"));
    let a = approver_key(&backend, &alias_a).await;
    let b = approver_key(&backend, &alias_b).await;
    let (listed, added, cancelled) = (recipient(&run_id, 0), recipient(&run_id, 1), recipient(&run_id, 2));
    let paths = Paths::new();
    let text = format!(
        "{head}[keys.hot.policy]\ndestination_allowlist = [\"{listed}\"]\n[keys.hot.approvals]\n\
         threshold = {{ ETH = \"100ether\" }}\napprovers = [\"{a}\", \"{b}\"]\nquorum = 2\nallowlist_delay_seconds = 3600\n\
         {exchange}{ops}{desk}",
        head = config_head("127.0.0.1:0", &services.rpc_url, &hot, &paths),
        exchange = config_client_of_keys("exchange", TOKEN, &["hot"], &["withdrawals"]),
        ops = config_client_of_keys("ops", "ops-token", &["hot"], &["allowlist"]),
        desk = config_client_of_keys("desk", DESK, &["hot"], &["approvals"]),
    );
    let api = serve_in_process(&text, Arc::clone(&backend)).await;
    for address in [added, cancelled] {
        let response = api
            .http
            .post(format!("{}/v1/keys/hot/allowlist", api.url))
            .bearer_auth("ops-token")
            .json(&serde_json::json!({ "address": address, "label": "new supplier" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    let cli = |arguments: &[&str]| {
        let mut command = ethkms(&services);
        command.env("ETHKMS_SERVICE_TOKEN", DESK).arg("--json").args(arguments);
        command
    };
    let decide = |address: String, key: &str, extra: &[&str]| {
        let base = ["allowlist", "approve", "hot", address.as_str(), "--key", key, "--service", api.url.as_str()];
        cli(&[&base[..], extra].concat())
    };

    // Listed: the static entry, then the two proposals, open for decisions.
    let (code, out, stderr) = run(cli(&["allowlist", "list", "hot", "--service", &api.url])).await;
    assert_eq!(code, 0, "{stderr}");
    let entries = json_lines(&out);
    let statuses: Vec<(String, bool)> = entries
        .iter()
        .map(|entry| (entry["status"].as_str().unwrap().to_owned(), entry["open"].as_bool().unwrap()))
        .collect();
    assert_eq!(statuses, [("static".into(), false), ("proposed".into(), true), ("proposed".into(), true)]);

    // A and B approve the first with their KMS keys: approved, in effect after the delay.
    let (code, out, stderr) = run(decide(added.to_string(), &alias_a, &[])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (json_lines(&out)[0]["status"].as_str(), json_lines(&out)[0]["approvals"].as_u64()),
        (Some("proposed"), Some(1))
    );
    let (code, _, stderr) = run(decide(added.to_string(), &alias_a, &[])).await;
    assert_eq!(code, 1, "the same approver twice: {stderr}");
    assert!(stderr.contains("already decided"), "{stderr}");
    let (code, printed, stderr) = run(decide(added.to_string(), &alias_b, &["--print"])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_lines(&printed)[0]["decision"], "approve");
    let (code, out, stderr) = run(decide(added.to_string(), &alias_b, &[])).await;
    assert_eq!(code, 0, "{stderr}");
    let approved = &json_lines(&out)[0];
    assert_eq!(
        (approved["status"].as_str(), approved["approvals"].as_u64()),
        (Some("approved"), Some(2)),
        "{approved}"
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(approved["effective"].as_u64().unwrap() > now + 3_500, "in effect only after the delay: {approved}");

    // B cancels the second; nothing waits for a decision on it any more.
    let (code, out, stderr) = run(decide(cancelled.to_string(), &alias_b, &["--reject"])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_lines(&out)[0]["status"], "cancelled");
    let (code, _, stderr) = run(decide(cancelled.to_string(), &alias_a, &[])).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("waits for decisions"), "{stderr}");
    let (code, _, stderr) = run(decide("0x12".into(), &alias_a, &[])).await;
    assert_eq!(code, 2, "a malformed address: {stderr}");
}
