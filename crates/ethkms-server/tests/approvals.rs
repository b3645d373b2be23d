//! Four-eyes approvals against LocalStack and anvil: a 2-of-3 quorum of approvers — a LocalStack KMS key
//! (signing the service's EIP-712 JSON through ethkms), a local key, and a key held by ethers v6 (an
//! implementation nobody here wrote). A withdrawal over the threshold waits `pending_approval`; a
//! non-approver, a signature over another amount, for another chain, or by another key, a malformed one,
//! the same approver twice: each refused with its reason; the second valid approval hands it to the engine
//! and it is paid once. A rejection ends one `rejected` with nothing signed by KMS and its amount given back
//! to the daily limit; one left unapproved expires. eth-account and ethers recover the approvers from what
//! they signed; every decision is in the audit log.

mod common;

use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use common::approvers::{altered, local_key, sign_locally};
use common::*;
use ethkms::backend::CreateKeyRequest;
use ethkms_test_support::verifiers::{eth_account, ethers, ethers_signer, run_verifier};
use serde_json::{Value, json};

const DESK: &str = "desk-token";

/// What the approver signed, as the API takes it (`signed`).
fn signed_content(typed: &Value) -> Value {
    let message = &typed["message"];
    json!({
        "chain_id": typed["domain"]["chainId"], "id": message["id"], "key": message["key"], "to": message["to"],
        "asset": message["asset"], "amount": message["amount"], "expiry": message["expiry"],
    })
}

async fn decide(api: &Api, id: &str, body: &Value) -> (u16, Value) {
    let response = api
        .http
        .post(format!("{}/v1/withdrawals/{id}/approvals", api.url))
        .bearer_auth(DESK)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn approval(approver: Address, decision: &str, signature: &str) -> Value {
    json!({ "approver": approver, "decision": decision, "signature": signature })
}

/// `body` with what was signed (`typed`) sent along.
fn with_signed(mut body: Value, typed: &Value) -> Value {
    body["signed"] = signed_content(typed);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_of_three_quorum_approves_rejects_and_expires_with_reasons_for_every_refusal() {
    let Some((_, backend)) = localstack().await else { return };
    let Some(rpc_url) = ethkms_test_support::service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let Some(signer_script) = ethers_signer() else { return };
    let (hot, hot_address) = funded_key(&backend, &rpc_url).await;
    let (brief, _) = funded_key(&backend, &rpc_url).await;
    // Approver A: a KMS key (another IAM role, in production). B: a local key. C: a key ethers holds.
    let kms_approver = backend.create_key(&CreateKeyRequest::new().description("ethkms approver")).await.unwrap();
    let a: Address = kms_approver.address.unwrap().to_string().parse().unwrap();
    let (b_key, b) = local_key(0x0b);
    let c_private = format!("0x{}", "0c".repeat(32));
    let (_, c) = local_key(0x0c);
    let (_, stranger) = local_key(0x5e);
    let paths = Paths::new();
    let approvals = |expiry: u64| {
        format!(
            "threshold = {{ ETH = \"1ether\" }}\napprovers = [\"{a}\", \"{b}\", \"{c}\"]\nquorum = 2\nexpiry_seconds = {expiry}\n"
        )
    };
    let text = format!(
        "{head}fees = {{ max_fee_per_tx = \"0.001ether\" }}\n[keys.hot.policy]\ndaily_limit = {{ ETH = \"12.1ether\" }}\n[keys.hot.approvals]\n{hot_approvals}\
         {brief_key}[keys.brief.approvals]\n{brief_approvals}{exchange}{desk}",
        head = config_head("127.0.0.1:0", &rpc_url, &hot, &paths),
        hot_approvals = approvals(3600),
        brief_key = config_key("brief", &brief),
        brief_approvals = approvals(2),
        exchange = config_client_of_keys("exchange", TOKEN, &["hot", "brief"], &["withdrawals"]),
        desk = config_client_of_keys("desk", DESK, &["hot", "brief"], &["approvals"]),
    );
    let api = serve_in_process(&text, std::sync::Arc::clone(&backend)).await;
    let run = ethkms_test_support::unique("approvals");
    let to = recipient(&run, 1);

    // Below the threshold: no approvals. At it: pending, with the message to sign.
    let (status, small) = api.post(&withdrawal(&format!("{run}-small"), to, "ETH", "0.5ether")).await;
    assert_eq!((status, small["status"].as_str()), (202, Some("accepted")), "{small}");
    assert!(small.get("approval").is_none(), "{small}");
    let (status, big) = api.post(&withdrawal(&format!("{run}-big"), to, "ETH", "5ether")).await;
    assert_eq!((status, big["status"].as_str()), (202, Some("pending_approval")), "{big}");
    assert_eq!(big["final"], false);
    assert_eq!(big["approval"]["quorum"], 2);
    let id = big["id"].as_str().unwrap().to_owned();
    let typed = big["approval"]["typed_data"].clone();
    assert_eq!(typed["message"]["id"], id.as_str());
    assert_eq!(typed["message"]["amount"], "5000000000000000000");
    assert_eq!(typed["domain"]["chainId"], 31337);
    api.settled(small["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    let signatures_before = api.metric("ethkms_signing_seconds_count ").await;

    // The desk lists it; a client without `approvals` may not.
    let listed: Value =
        api.http.get(format!("{}/v1/approvals", api.url)).bearer_auth(DESK).send().await.unwrap().json().await.unwrap();
    assert!(listed["withdrawals"].as_array().unwrap().iter().any(|w| w["id"] == id.as_str()), "{listed}");
    let refused = api.http.get(format!("{}/v1/approvals", api.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // A (KMS, through ethkms) approves: counted, still pending.
    let manager = ethkms::WalletManager::with_backend(
        std::sync::Arc::clone(&backend),
        ethkms::ChainSettings::new(rpc_url.parse().unwrap()),
    )
    .unwrap();
    let a_signer = manager.signer(&kms_approver.key_id.parse().unwrap()).await.unwrap();
    let a_signature = a_signer.sign_typed_data_json(&typed.to_string()).await.unwrap();
    let a_signature = format!("0x{}", alloy_primitives::hex::encode(a_signature.as_bytes()));
    let (status, counted) = decide(&api, &id, &approval(a, "approve", &a_signature)).await;
    assert_eq!((status, counted["status"].as_str()), (200, Some("pending_approval")), "{counted}");
    assert_eq!(counted["approval"]["approved_by"], json!([a]));

    // Refusals, each with its reason.
    let b_right = sign_locally(&b_key, &typed);
    let cases = [
        (approval(stranger, "approve", &b_right), 403, "approval_refused", "is not an approver"),
        (
            with_signed(
                approval(b, "approve", &sign_locally(&b_key, &altered(&typed, "amount", json!("1")))),
                &altered(&typed, "amount", json!("1")),
            ),
            403,
            "approval_refused",
            "amount 1, but the withdrawal's is 5000000000000000000",
        ),
        (
            with_signed(
                approval(b, "approve", &sign_locally(&b_key, &altered(&typed, "chainId", json!(1)))),
                &altered(&typed, "chainId", json!(1)),
            ),
            403,
            "approval_refused",
            "chain 1, but the withdrawal is on chain 31337",
        ),
        (
            approval(b, "approve", &sign_locally(&b_key, &altered(&typed, "to", json!(Address::with_last_byte(9))))),
            403,
            "approval_refused",
            "other content, for another chain, or by another key",
        ),
        (approval(b, "approve", &a_signature), 403, "approval_refused", "other content"),
        (approval(b, "reject", &b_right), 403, "approval_refused", "other content"),
        (approval(b, "approve", "0x1234"), 400, "invalid_request", "65-byte"),
        (approval(a, "approve", &a_signature), 409, "approval_conflict", "already decided"),
    ];
    for (body, expected_status, kind, needle) in cases {
        let (status, answer) = decide(&api, &id, &body).await;
        assert_eq!((status, answer["error"]["kind"].as_str()), (expected_status, Some(kind)), "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    assert_eq!(api.get(&id).await["status"], "pending_approval");

    // C, signing with ethers v6: the quorum; the engine pays it once.
    let signed_by_ethers =
        run_verifier(signer_script, &json!([{ "name": "c", "private_key": c_private, "json": typed.to_string() }]));
    assert_eq!(signed_by_ethers[0].address.as_deref().map(str::to_lowercase), Some(c.to_string().to_lowercase()));
    let c_signature = signed_by_ethers[0].signature.clone().unwrap();
    let (status, approved) = decide(&api, &id, &approval(c, "approve", &c_signature)).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["approval"]["approved_by"], json!([a, c]));
    let settled = api.settled(&id, Duration::from_secs(60)).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(balance(&rpc_url, to).await, U256::from(5_500_000_000_000_000_000_u128));
    assert_eq!(decide(&api, &id, &approval(b, "approve", &b_right)).await.0, 409, "too late to decide");

    // eth-account and ethers recover each approver from the message the service gave out.
    let cases = json!([
        { "name": "a", "kind": "typed", "json": typed.to_string(), "signature": a_signature },
        { "name": "b", "kind": "typed", "json": typed.to_string(), "signature": b_right },
        { "name": "c", "kind": "typed", "json": typed.to_string(), "signature": c_signature },
    ]);
    for verifier in [eth_account(), ethers()].into_iter().flatten() {
        let recovered: Vec<Option<String>> =
            run_verifier(verifier, &cases).into_iter().map(|case| case.address.map(|a| a.to_lowercase())).collect();
        let expected: Vec<Option<String>> = [a, b, c].iter().map(|a| Some(a.to_string().to_lowercase())).collect();
        assert_eq!(recovered, expected);
    }

    // The daily limit (12.1 ether, each withdrawal counted with its 0.001 ether fee cap) holds pending
    // amounts: a third of 5 ether does not fit beside a second pending one (5.5 paid + 5 pending + 5) until
    // that one is rejected.
    let (status, second) = api.post(&withdrawal(&format!("{run}-second"), to, "ETH", "5ether")).await;
    assert_eq!(status, 202, "{second}");
    let second_id = second["id"].as_str().unwrap().to_owned();
    let third = withdrawal(&format!("{run}-third"), to, "ETH", "5ether");
    let (status, denied) = api.post(&third).await;
    assert_eq!((status, denied["error"]["rule"].as_str()), (403, Some("daily_limit")), "{denied}");
    let second_typed = altered(&second["approval"]["typed_data"], "approve", json!(false));
    let (status, rejected) =
        decide(&api, &second_id, &approval(b, "reject", &sign_locally(&b_key, &second_typed))).await;
    assert_eq!((status, rejected["status"].as_str(), rejected["final"].as_bool()), (200, Some("rejected"), Some(true)));
    assert_eq!(rejected["approval"]["rejected_by"], json!(b));
    let (status, accepted) = api.post(&third).await;
    assert_eq!((status, accepted["status"].as_str()), (202, Some("pending_approval")), "the amount came back");

    // Nothing was signed by KMS for the rejected one, or the pending one: one signature (the approved
    // withdrawal's) since the small one settled; the key sent two transactions in all.
    assert_eq!(api.metric("ethkms_signing_seconds_count ").await, signatures_before + 1.0);
    assert_eq!(transactions_from(&rpc_url, hot_address, 0).await.len(), 2);

    // Unapproved, a withdrawal of `brief` expires (2 s); a late approval is refused as such.
    let (status, brief_one) = api.post(&withdrawal_from("brief", &format!("{run}-brief"), to, "ETH", "2ether")).await;
    assert_eq!((status, brief_one["status"].as_str()), (202, Some("pending_approval")), "{brief_one}");
    let brief_id = brief_one["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while api.get(&brief_id).await["status"] != "expired" {
        assert!(started.elapsed() < Duration::from_secs(15), "not expired: {}", api.get(&brief_id).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = sign_locally(&b_key, &brief_one["approval"]["typed_data"]);
    let (status, answer) = decide(&api, &brief_id, &approval(b, "approve", &late)).await;
    assert_eq!((status, answer["error"]["status"].as_str()), (409, Some("expired")), "{answer}");

    // Every decision, the approval and the expiry are in the audit log, which verifies.
    let audit = std::fs::read_to_string(&paths.audit).unwrap();
    for kind in ["approval_requested", "approval_decision", "approved", "approval_expired"] {
        assert!(audit.contains(&format!("\"kind\":\"{kind}\"")), "{kind} not in the audit log");
    }
    assert!(ethkms::audit::verify(&paths.audit).is_ok());
}
