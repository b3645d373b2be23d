//! Time-locked allowlist additions against LocalStack and anvil: a key with a static `destination_allowlist`
//! and a 2-of-3 quorum of approvers (a LocalStack KMS key signing the service's EIP-712 JSON through
//! ethkms, and two local keys), and a delay of a few seconds. A proposed address is refused before the
//! delay, even with the quorum; after it, it is paid with the quorum and refused without it; one cancelled
//! by an approver during the delay stays refused; a removal takes effect at once. Bad decisions are
//! refused with their reasons, and every change is in the audit log.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, U256};
use common::approvers::{altered, local_key, sign_locally};
use common::*;
use ethkms::backend::CreateKeyRequest;
use serde_json::{Value, json};

const OPS: &str = "ops-token";
const DESK: &str = "desk-token";
/// How long an addition waits before it may take effect.
const DELAY_SECONDS: u64 = 8;

fn decision(approver: Address, decision: &str, signature: &str) -> Value {
    json!({ "approver": approver, "decision": decision, "signature": signature })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

struct Allowlist<'a> {
    api: &'a Api,
}

impl Allowlist<'_> {
    async fn answer(response: reqwest::Response) -> (u16, Value) {
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn propose(&self, token: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}/v1/keys/hot/allowlist", self.api.url);
        Self::answer(self.api.http.post(url).bearer_auth(token).json(body).send().await.unwrap()).await
    }

    async fn decide(&self, address: Address, body: &Value) -> (u16, Value) {
        let url = format!("{}/v1/keys/hot/allowlist/{address}/approvals", self.api.url);
        Self::answer(self.api.http.post(url).bearer_auth(DESK).json(body).send().await.unwrap()).await
    }

    async fn remove(&self, address: Address) -> (u16, Value) {
        let url = format!("{}/v1/keys/hot/allowlist/{address}", self.api.url);
        Self::answer(self.api.http.delete(url).bearer_auth(OPS).send().await.unwrap()).await
    }

    async fn list(&self, token: &str) -> (u16, Value) {
        let url = format!("{}/v1/keys/hot/allowlist", self.api.url);
        Self::answer(self.api.http.get(url).bearer_auth(token).send().await.unwrap()).await
    }
}

/// Asserts that a withdrawal to `to` is denied by the destination allowlist.
async fn refused(api: &Api, key: &str, to: Address, why: &str) {
    let (status, body) = api.post(&withdrawal(key, to, "ETH", "0.01ether")).await;
    assert_eq!((status, body["error"]["rule"].as_str()), (403, Some("destination_allowlist")), "{why}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_takes_effect_after_its_delay_with_its_quorum_and_not_otherwise() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(rpc_url) = ethkms_test_support::service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let (hot, _) = funded_key(&backend, &rpc_url).await;
    // Approver A: a KMS key; B and C: local keys.
    let kms_approver = backend.create_key(&CreateKeyRequest::new().description("ethkms approver")).await.unwrap();
    let a: Address = kms_approver.address.unwrap().to_string().parse().unwrap();
    let (b_key, b) = local_key(0x1b);
    let (c_key, c) = local_key(0x1c);
    let (stranger_key, stranger) = local_key(0x5f);
    let run = ethkms_test_support::unique("allowlist");
    let (listed, paid, cancelled, unapproved) =
        (recipient(&run, 0), recipient(&run, 1), recipient(&run, 2), recipient(&run, 3));
    let paths = Paths::new();
    let text = format!(
        "{head}[keys.hot.policy]\ndestination_allowlist = [\"{listed}\"]\n[keys.hot.approvals]\n\
         threshold = {{ ETH = \"100ether\" }}\napprovers = [\"{a}\", \"{b}\", \"{c}\"]\nquorum = 2\n\
         allowlist_delay_seconds = {DELAY_SECONDS}\n{exchange}{ops}{desk}",
        head = config_head("127.0.0.1:0", &rpc_url, &hot, &paths),
        exchange = config_client("exchange", TOKEN, &["withdrawals"]),
        ops = config_client("ops", OPS, &["allowlist"]),
        desk = config_client("desk", DESK, &["approvals"]),
    );
    let api = serve_in_process(&text, std::sync::Arc::clone(&backend)).await;
    let allowlist = Allowlist { api: &api };

    // Proposals: refused for a listed address, a bad one, or a client without `allowlist`.
    let started = unix_now();
    let (status, entry) = allowlist.propose(OPS, &json!({ "address": paid, "label": "exchange hot wallet" })).await;
    assert_eq!((status, entry["status"].as_str()), (202, Some("proposed")), "{entry}");
    let effective = entry["effective"].as_u64().unwrap();
    assert!((started + DELAY_SECONDS..=unix_now() + DELAY_SECONDS).contains(&effective), "{entry}");
    assert_eq!((entry["quorum"].as_u64(), entry["active"].as_bool()), (Some(2), Some(false)));
    let typed = entry["typed_data"].clone();
    assert_eq!(typed["primaryType"], "AllowlistAddition");
    assert_eq!(typed["message"]["destination"], paid.to_string());
    assert_eq!(typed["message"]["effective"], effective);
    let refusals = [
        (OPS, json!({ "address": paid }), 409, "allowlist_conflict", "proposed addition"),
        (OPS, json!({ "address": listed }), 409, "allowlist_conflict", "in the configuration already"),
        (OPS, json!({ "address": "0x12" }), 400, "invalid_request", "`address`"),
        (OPS, json!({ "address": cancelled, "label": "a\nb" }), 400, "invalid_request", "`label`"),
        (TOKEN, json!({ "address": cancelled }), 403, "forbidden", "may not change"),
    ];
    for (token, body, expected, kind, needle) in refusals {
        let (status, answer) = allowlist.propose(token, &body).await;
        assert_eq!((status, answer["error"]["kind"].as_str()), (expected, Some(kind)), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(needle), "`{needle}` not in {answer}");
    }
    for address in [cancelled, unapproved] {
        assert_eq!(allowlist.propose(OPS, &json!({ "address": address })).await.0, 202);
    }
    refused(&api, &format!("{run}-early"), paid, "proposed, no quorum, before the delay").await;

    // The quorum, before the delay: A (KMS, through ethkms) and B.
    let manager = ethkms::WalletManager::with_backend(
        std::sync::Arc::clone(&backend),
        ethkms::ChainSettings::new(rpc_url.parse().unwrap()),
    )
    .unwrap();
    let a_signer = manager.signer(&kms_approver.key_id.parse().unwrap()).await.unwrap();
    let a_signature = a_signer.sign_typed_data_json(&typed.to_string()).await.unwrap();
    let a_signature = format!("0x{}", alloy_primitives::hex::encode(a_signature.as_bytes()));
    let (status, counted) = allowlist.decide(paid, &decision(a, "approve", &a_signature)).await;
    assert_eq!(
        (status, counted["status"].as_str(), counted["approved_by"].clone()),
        (200, Some("proposed"), json!([a]))
    );
    let (status, approved) = allowlist.decide(paid, &decision(b, "approve", &sign_locally(&b_key, &typed))).await;
    assert_eq!((status, approved["status"].as_str()), (200, Some("approved")), "{approved}");
    assert_eq!(approved["approved_by"], json!([a, b]));
    assert!(unix_now() < effective, "the test was too slow to check the delay");
    refused(&api, &format!("{run}-quorum-early"), paid, "approved, before the delay").await;

    // Bad decisions, each with its reason.
    let b_right = sign_locally(&b_key, &typed);
    let other = altered(&typed, "destination", json!(cancelled.to_string()));
    let cases = [
        (
            paid,
            decision(stranger, "approve", &sign_locally(&stranger_key, &typed)),
            403,
            "approval_refused",
            "not an approver",
        ),
        (paid, decision(c, "approve", &sign_locally(&c_key, &other)), 403, "approval_refused", "other content"),
        (paid, decision(c, "reject", &sign_locally(&c_key, &typed)), 403, "approval_refused", "other content"),
        (paid, decision(c, "approve", "0x1234"), 400, "invalid_request", "65-byte"),
        (paid, decision(b, "approve", &b_right), 409, "approval_conflict", "already decided"),
        (listed, decision(b, "approve", &b_right), 404, "not_found", "no proposed or approved addition"),
    ];
    for (address, body, expected, kind, needle) in cases {
        let (status, answer) = allowlist.decide(address, &body).await;
        assert_eq!((status, answer["error"]["kind"].as_str()), (expected, Some(kind)), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(needle), "`{needle}` not in {answer}");
    }

    // A second address: approved by B, cancelled by C during the delay. A third: only B approves.
    let (_, listing) = allowlist.list(DESK).await;
    let typed_of = |address: Address| {
        let entries = listing["entries"].as_array().unwrap();
        entries.iter().find(|entry| entry["address"].as_str().unwrap().parse() == Ok(address)).unwrap()["typed_data"]
            .clone()
    };
    let (cancelled_typed, unapproved_typed) = (typed_of(cancelled), typed_of(unapproved));
    assert_eq!(
        allowlist.decide(cancelled, &decision(b, "approve", &sign_locally(&b_key, &cancelled_typed))).await.0,
        200
    );
    let rejection = sign_locally(&c_key, &altered(&cancelled_typed, "approve", json!(false)));
    let (status, answer) = allowlist.decide(cancelled, &decision(c, "reject", &rejection)).await;
    assert_eq!((status, answer["status"].as_str(), answer["rejected_by"].clone()), (200, Some("cancelled"), json!(c)));
    let (status, _) =
        allowlist.decide(cancelled, &decision(a, "approve", &sign_locally(&b_key, &cancelled_typed))).await;
    assert_eq!(status, 404, "nothing revives a cancelled addition");
    assert_eq!(
        allowlist.decide(unapproved, &decision(b, "approve", &sign_locally(&b_key, &unapproved_typed))).await.0,
        200
    );

    // After the delay: paid with the quorum; refused cancelled or without it.
    while unix_now() <= effective {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, payment) = api.post(&withdrawal(&format!("{run}-paid"), paid, "ETH", "0.25ether")).await;
    assert_eq!((status, payment["status"].as_str()), (202, Some("accepted")), "{payment}");
    let settled = api.settled(payment["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(balance(&rpc_url, paid).await, U256::from(250_000_000_000_000_000_u64));
    refused(&api, &format!("{run}-cancelled"), cancelled, "cancelled during the delay").await;
    refused(&api, &format!("{run}-unapproved"), unapproved, "without the quorum").await;
    let (status, answer) = allowlist
        .decide(paid, &decision(c, "reject", &sign_locally(&c_key, &altered(&typed, "approve", json!(false)))))
        .await;
    assert_eq!((status, answer["error"]["kind"].as_str()), (409, Some("approval_conflict")), "in effect: {answer}");

    // The listing: the static entry, then each addition with its state; not for a client with neither
    // `allowlist` nor `approvals`.
    let (status, listing) = allowlist.list(OPS).await;
    assert_eq!(status, 200, "{listing}");
    let states: Vec<(Address, String, bool)> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let address = entry["address"].as_str().unwrap().parse().unwrap();
            (address, entry["status"].as_str().unwrap().to_owned(), entry["active"].as_bool().unwrap())
        })
        .collect();
    let expected = [
        (listed, "static", true),
        (paid, "approved", true),
        (cancelled, "cancelled", false),
        (unapproved, "proposed", false),
    ]
    .map(|(address, status, active)| (address, status.to_owned(), active));
    assert_eq!(states, expected);
    assert_eq!(allowlist.list(TOKEN).await.0, 403);

    // A removal takes effect at once; the configuration's entries cannot be removed here.
    let (status, removed) = allowlist.remove(paid).await;
    assert_eq!((status, removed["status"].as_str(), removed["active"].as_bool()), (200, Some("removed"), Some(false)));
    refused(&api, &format!("{run}-removed"), paid, "removed").await;
    assert_eq!(allowlist.remove(paid).await.0, 404);
    let (status, answer) = allowlist.remove(listed).await;
    assert_eq!((status, answer["error"]["kind"].as_str()), (409, Some("allowlist_conflict")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("remove it there"), "{answer}");

    // Every change is in the audit log, which verifies; the metrics count them.
    let audit = std::fs::read_to_string(&paths.audit).unwrap();
    for kind in
        ["allowlist_proposal", "allowlist_decision", "allowlist_approved", "allowlist_cancelled", "allowlist_removal"]
    {
        assert!(audit.contains(&format!("\"kind\":\"{kind}\"")), "{kind} not in the audit log");
    }
    assert!(ethkms::audit::verify(&paths.audit).is_ok());
    assert_eq!(api.metric("ethkms_allowlist_changes_total{event=\"proposed\"}").await, 3.0);
    assert_eq!(api.metric("ethkms_allowlist_changes_total{event=\"removed\"}").await, 1.0);
}
