//! `ethkms webhook verify`, run as a program: a request signed as the service signs it verifies (exit 0,
//! its event id in `--json`), and a wrong secret, a changed body, an old timestamp or a malformed header
//! each fail with its exit code, naming what was wrong.

use std::time::{SystemTime, UNIX_EPOCH};

use ethkms_server::webhooks::signature::{WebhookSecret, header};
use ethkms_test_support::unique;
use serde_json::Value;

mod common;
use common::{bare, fails, ok};

const SECRET: &str = "whsec_cli_test";
const BODY: &str = r#"{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","type":"withdrawal.confirmed","data":{}}"#;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn signed_at(timestamp: u64, body: &str) -> String {
    header(&WebhookSecret::new(SECRET).unwrap(), timestamp, body.as_bytes())
}

#[test]
fn webhook_verify_accepts_a_signed_request_and_names_what_is_wrong_with_others() {
    let body_file = std::env::temp_dir().join(format!("{}.json", unique("webhook-body")));
    std::fs::write(&body_file, BODY).unwrap();
    let secret_file = std::env::temp_dir().join(unique("webhook-secret"));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let body_path = body_file.to_str().unwrap();
    let signature = signed_at(now(), BODY);

    // From a file, the secret in the environment.
    let answer = ok(bare().env("HOOK_SECRET", SECRET).args([
        "--json",
        "webhook",
        "verify",
        "--secret-env",
        "HOOK_SECRET",
        "--signature",
        &signature,
        "--body-file",
        body_path,
    ]));
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["event_id"], "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_eq!(answer["type"], "withdrawal.confirmed");
    // From standard input, the secret in a file.
    let text = ok(bare()
        .args(["webhook", "verify", "--secret-file", secret_file.to_str().unwrap(), "--signature", &signature])
        .write_stdin(BODY));
    assert!(text.starts_with("valid: event 0f8fad5b"), "{text}");

    let cases = [
        ("whsec_other", signature.clone(), BODY.to_owned(), 8, "signature_mismatch", "signature mismatch"),
        (SECRET, signature.clone(), BODY.replace("confirmed", "failed"), 8, "signature_mismatch", "signature mismatch"),
        (SECRET, signed_at(now() - 3600, BODY), BODY.to_owned(), 8, "outside_window", "outside the 300 s window"),
        (SECRET, "t=yesterday,v1=00".to_owned(), BODY.to_owned(), 2, "malformed_header", "malformed Ethkms-Signature"),
    ];
    for (secret, signature, body, code, reason, needle) in cases {
        let output = bare()
            .env("HOOK_SECRET", secret)
            .args(["--json", "webhook", "verify", "--secret-env", "HOOK_SECRET", "--signature", &signature])
            .write_stdin(body)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(code), "{reason}: {}", String::from_utf8_lossy(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!((report["valid"].as_bool(), report["reason"].as_str()), (Some(false), Some(reason)), "{report}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{reason}: {stderr}");
        assert!(!stderr.contains(secret) && !String::from_utf8_lossy(&output.stdout).contains(secret));
    }
    // A wider window accepts the old one.
    ok(bare().env("HOOK_SECRET", SECRET).args([
        "webhook",
        "verify",
        "--secret-env",
        "HOOK_SECRET",
        "--tolerance-seconds",
        "7200",
        "--signature",
        &signed_at(now() - 3600, BODY),
        "--body-file",
        body_path,
    ]));
    // No secret: a usage error naming the variable; both or neither: clap refuses.
    let (code, error) =
        fails(bare().args(["webhook", "verify", "--secret-env", "UNSET_HOOK", "--signature", &signature]));
    assert_eq!(code, 2);
    assert!(error.contains("`UNSET_HOOK` is not set"), "{error}");
    let (code, _) = fails(bare().args(["webhook", "verify", "--signature", &signature]));
    assert_eq!(code, 2);
    std::fs::remove_file(&body_file).unwrap();
    std::fs::remove_file(&secret_file).unwrap();
}
