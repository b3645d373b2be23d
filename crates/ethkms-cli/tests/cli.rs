//! The `ethkms` command line, run as a program: every command, the shape of its `--json` output, the
//! error paths with their exit codes, what a newcomer sees first (one line per error, arguments checked
//! before configuration), and the signing service run in-process by `ethkms serve`. Commands that need
//! keys or a chain run against LocalStack KMS and anvil (`cargo xtask services up`); in CI a missing
//! service fails them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_consensus::TxEnvelope;
use alloy_consensus::transaction::SignerRecoverable;
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, U256, hex};
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeySpec, MemoryBackend};
use ethkms_test_support::{services, unique};
use serde_json::Value;

mod common;
use common::{bare, ethkms, fails, fund, json_lines, manager, ok};

fn keys(value: &Value) -> BTreeSet<&str> {
    value.as_object().unwrap().keys().map(String::as_str).collect()
}

fn shape(fields: &[&'static str]) -> BTreeSet<&'static str> {
    fields.iter().copied().collect()
}

#[test]
fn policy_iam_prints_least_privilege_json() {
    let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let app: Value = serde_json::from_str(&ok(bare().args([
        "policy",
        "iam",
        "--key-arn",
        arn,
        "--role",
        "app",
        "--principal-tag",
        "Environment=production",
    ])))
    .unwrap();
    let actions: Vec<&str> = app["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(actions, ["kms:Sign", "kms:GetPublicKey"]);
    assert_eq!(app["Statement"][1]["Condition"]["StringEquals"]["aws:PrincipalTag/Environment"], "production");
    let admin = ok(bare().args(["policy", "iam", "--key-arn", arn, "--role", "admin"]));
    assert!(admin.contains("\"Deny\"") && admin.contains("kms:ScheduleKeyDeletion"), "{admin}");
    let (code, error) =
        fails(bare().args(["policy", "iam", "--key-arn", "arn:aws:kms:eu-west-1:1:key/x", "--role", "app"]));
    assert_eq!(code, 2);
    assert!(error.contains("not a KMS key ARN"), "{error}");
}

#[tokio::test]
async fn verify_accepts_the_signer_and_refuses_anyone_else() {
    let backend = Arc::new(MemoryBackend::new());
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let handle = KeyHandle::open(backend, info.key_id.parse().unwrap()).await.unwrap();
    let message = "withdraw 1 ETH";
    let signature = handle.sign_digest(&ethkms::core::eip191_hash_message(message.as_bytes())).await.unwrap();
    let signature = format!("0x{}", hex::encode(signature.to_bytes()));
    let address = handle.address().to_string();
    let output =
        ok(bare().args(["--json", "verify", "--address", &address, "--message", message, "--signature", &signature]));
    let result: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(keys(&result), shape(&["valid", "address", "recovered"]));
    assert_eq!((result["valid"].as_bool(), result["recovered"].as_str()), (Some(true), Some(address.as_str())));
    let other = "0x000000000000000000000000000000000000dEaD";
    let (code, error) =
        fails(bare().args(["verify", "--address", other, "--message", message, "--signature", &signature]));
    assert_eq!(code, 8);
    assert!(error.contains(&address), "{error}");
    let (code, _) =
        fails(bare().args(["verify", "--address", &address, "--message", "tampered", "--signature", &signature]));
    assert_eq!(code, 8);
    let (code, error) =
        fails(bare().args(["verify", "--address", &address, "--message", message, "--signature", "0x1234"]));
    assert_eq!(code, 2);
    assert!(error.contains("65"), "{error}");
}

#[test]
fn bad_values_and_addresses_are_usage_errors_before_any_request() {
    // No KMS or node configured: these must fail on the input alone.
    let to = "0x000000000000000000000000000000000000dEaD";
    let (code, error) = fails(bare().args(["--backend", "memory", "send", "alias/x", "--to", to, "--value", "1.5"]));
    assert_eq!(code, 2, "{error}");
    assert!(error.contains("`1.5`") && error.contains("decimals"), "{error}");
    let (code, error) =
        fails(bare().args(["--backend", "memory", "send", "alias/x", "--to", to, "--value", "3 dogecoin"]));
    assert_eq!(code, 2);
    assert!(error.contains("unknown unit"), "{error}");
    let bad_checksum = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
    let (code, error) = fails(bare().args(["--backend", "memory", "send", "alias/x", "--to", bad_checksum]));
    assert_eq!(code, 2);
    assert!(error.contains("checksum"), "{error}");
    let (code, error) = fails(bare().args(["--backend", "memory", "wallet", "address", "not a key"]));
    assert_eq!(code, 2);
    assert!(error.contains("`not a key`"), "{error}");
    let (code, error) = fails(bare().args(["--json", "--backend", "memory", "wallet", "address", "a/b"]));
    assert_eq!(code, 2);
    let error: Value = serde_json::from_str(error.trim()).unwrap();
    assert_eq!(keys(&error), shape(&["error", "exit_code"]));
    assert_eq!(error["exit_code"], 2);
}

#[test]
fn missing_credentials_and_region_say_how_to_provide_them() {
    let Some(services) = services() else { return };
    let (code, error) = fails(
        bare()
            .args(["wallet", "address", "alias/anything"])
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &services.kms_endpoint),
    );
    assert_eq!(code, 4, "{error}");
    assert!(
        error.contains("no credentials") && error.contains("AWS_ACCESS_KEY_ID") && error.contains("AWS_PROFILE"),
        "{error}"
    );
    assert!(!error.contains("panicked") && !error.contains("backtrace"), "{error}");
    let (code, error) = fails(bare().args(["wallet", "address", "alias/anything"]));
    assert_eq!(code, 4);
    assert!(error.contains("AWS_REGION"), "{error}");
}

#[test]
fn unknown_keys_wrong_key_types_and_an_unreachable_node_have_their_exit_codes() {
    let Some(services) = services() else { return };
    let (code, error) = fails(ethkms(&services).args(["wallet", "address", &format!("alias/{}", unique("missing"))]));
    assert_eq!(code, 3, "{error}");
    assert!(error.contains("not found") && error.contains("ethkms wallet list"), "{error}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rsa = runtime.block_on(async {
        let manager = manager(&services).await;
        manager.backend().create_key(&CreateKeyRequest::new().key_spec(KeySpec::Rsa2048)).await.unwrap()
    });
    let (code, error) = fails(ethkms(&services).args(["sign", "message", &rsa.key_id, "hello"]));
    assert_eq!(code, 5, "{error}");
    assert!(error.contains("RSA_2048") && error.contains("ECC_SECG_P256K1"), "{error}");
    let (code, error) = fails(ethkms(&services).args([
        "--rpc-url",
        "http://127.0.0.1:9",
        "balance",
        "0x000000000000000000000000000000000000dEaD",
    ]));
    assert_eq!(code, 6, "{error}");
    assert!(error.contains("--rpc-url"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_localstack_and_anvil() {
    let Some(services) = services() else { return };
    let alias = format!("alias/{}", unique("cli"));
    let tag = unique("cli-tag");

    // wallet create / address / list.
    let created = json_lines(&ok(ethkms(&services).args([
        "--json",
        "wallet",
        "create",
        "--alias",
        &alias,
        "--tag",
        &format!("suite={tag}"),
    ])));
    assert_eq!(keys(&created[0]), shape(&["address", "key_id", "arn", "alias"]));
    assert_eq!(created[0]["alias"], alias.as_str());
    let address = created[0]["address"].as_str().unwrap().to_owned();
    assert_eq!(ok(ethkms(&services).args(["wallet", "address", &alias])).trim(), address);
    let listed =
        json_lines(&ok(ethkms(&services).args(["--json", "wallet", "list", "--tag", &format!("suite={tag}")])));
    assert_eq!(listed.len(), 1);
    assert_eq!(keys(&listed[0]), shape(&["key_id", "arn", "state", "key_spec", "aliases", "tags", "address"]));
    assert_eq!(listed[0]["address"], address.as_str());
    assert_eq!(listed[0]["tags"]["suite"], tag.as_str());

    // balance, after funding.
    let manager = manager(&services).await;
    let owner: Address = address.parse().unwrap();
    fund(&manager, owner).await;
    let balance: Value = serde_json::from_str(&ok(ethkms(&services).args(["--json", "balance", &alias]))).unwrap();
    assert_eq!(keys(&balance), shape(&["address", "wei", "ether"]));
    assert_eq!(balance["ether"], "10.000000000000000000");

    // sign message, checked by `verify`; typed data.
    let signature = ok(ethkms(&services).args(["sign", "message", &alias, "hello from the cli"]));
    ok(ethkms(&services).args([
        "verify",
        "--address",
        &address,
        "--message",
        "hello from the cli",
        "--signature",
        signature.trim(),
    ]));
    let hex_signature: Value =
        serde_json::from_str(&ok(ethkms(&services).args(["--json", "sign", "message", &alias, "--hex", "0xdeadbeef"])))
            .unwrap();
    assert_eq!(keys(&hex_signature), shape(&["address", "signature"]));
    ok(ethkms(&services).args([
        "verify",
        "--hex",
        "--address",
        &address,
        "--message",
        "0xdeadbeef",
        "--signature",
        hex_signature["signature"].as_str().unwrap(),
    ]));
    let typed = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"chainId","type":"uint256"}],"Note":[{"name":"text","type":"string"}]},"primaryType":"Note","domain":{"name":"ethkms","chainId":31337},"message":{"text":"hi"}}"#;
    let file = std::env::temp_dir().join(format!("{}.json", unique("typed")));
    std::fs::write(&file, typed).unwrap();
    let typed_signature: Value = serde_json::from_str(&ok(ethkms(&services).args([
        "--json",
        "sign",
        "typed-data",
        &alias,
        file.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(keys(&typed_signature), shape(&["address", "hash", "signature"]));
    let signature: alloy_primitives::Signature = typed_signature["signature"].as_str().unwrap().parse().unwrap();
    let hash: alloy_primitives::B256 = typed_signature["hash"].as_str().unwrap().parse().unwrap();
    assert_eq!(signature.recover_address_from_prehash(&hash).unwrap(), owner);
    std::fs::write(&file, "{ not json").unwrap();
    let (code, error) = fails(ethkms(&services).args(["sign", "typed-data", &alias, file.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(error.contains("typed data"), "{error}");

    // sign tx: every type, decoded and recovered by alloy.
    let to = "0x000000000000000000000000000000000000dEaD";
    for (kind, expected_type) in [("legacy", 0u8), ("2930", 1), ("1559", 2), ("7702", 4)] {
        let mut command = ethkms(&services);
        command.args(["--json", "sign", "tx", &alias, "--to", to, "--value", "1gwei", "--type", kind]);
        if kind == "7702" {
            command.args(["--delegate", to]);
        }
        let signed: Value = serde_json::from_str(&ok(&mut command)).unwrap();
        assert_eq!(keys(&signed), shape(&["from", "hash", "raw"]));
        let raw = hex::decode(signed["raw"].as_str().unwrap()).unwrap();
        let envelope = TxEnvelope::decode_2718(&mut raw.as_slice()).unwrap();
        assert_eq!(envelope.tx_type() as u8, expected_type, "{kind}");
        assert_eq!(envelope.recover_signer().unwrap(), owner, "{kind}");
    }
    let (code, error) =
        fails(ethkms(&services).args(["sign", "tx", &alias, "--to", to, "--type", "legacy", "--max-fee", "1gwei"]));
    assert_eq!(code, 2);
    assert!(error.contains("--gas-price"), "{error}");

    // send ether, then an ERC-20 token deployed by this key.
    let sent: Value = serde_json::from_str(&ok(
        ethkms(&services).args(["--json", "send", &alias, "--to", to, "--value", "0.5ether"])
    ))
    .unwrap();
    assert_eq!(keys(&sent), shape(&["hash", "from", "to", "token", "block", "status", "gas_used"]));
    assert_eq!((sent["from"].as_str(), sent["status"].as_bool()), (Some(address.as_str()), Some(true)));
    let bytecode = hex::decode(include_str!("../../ethkms-eth/tests/contracts/TestToken.bin").trim()).unwrap();
    let mut code_and_supply = bytecode;
    code_and_supply.extend_from_slice(&U256::from(10u128.pow(24)).to_be_bytes::<32>());
    let deploy = TransactionRequest::default().input(code_and_supply.into());
    let deploy = TransactionRequest { to: Some(alloy_primitives::TxKind::Create), ..deploy };
    let receipt = manager.send_request(&alias.parse().unwrap(), deploy).await.unwrap();
    let token = receipt.contract_address.unwrap().to_string();
    let sent: Value = serde_json::from_str(&ok(
        ethkms(&services).args(["--json", "send", &alias, "--to", to, "--value", "2.5", "--token", &token])
    ))
    .unwrap();
    assert_eq!(sent["token"], token.as_str());
    let balance: Value =
        serde_json::from_str(&ok(ethkms(&services).args(["--json", "balance", to, "--token", &token]))).unwrap();
    assert_eq!(keys(&balance), shape(&["address", "token", "balance", "decimals", "formatted"]));
    assert_eq!(balance["formatted"], "2.500000000000000000");

    // rotate with sweep: the alias names a new key that holds the ether now.
    let rotated: Value =
        serde_json::from_str(&ok(ethkms(&services).args(["--json", "wallet", "rotate", &alias, "--sweep"]))).unwrap();
    assert_eq!(keys(&rotated), shape(&["alias", "old_key_id", "old_address", "new_key_id", "new_address", "sweep"]));
    assert_eq!(rotated["old_address"], address.as_str());
    let new_address = rotated["new_address"].as_str().unwrap();
    assert_eq!(ok(ethkms(&services).args(["wallet", "address", &alias])).trim(), new_address);
    let swept: Value = serde_json::from_str(&ok(ethkms(&services).args(["--json", "balance", new_address]))).unwrap();
    assert!(swept["ether"].as_str().unwrap().starts_with("9."), "{swept}");
}

#[test]
fn bulk_creation_resumes_where_it_stopped() {
    let Some(services) = services() else { return };
    let batch = unique("batch");
    let first =
        json_lines(&ok(ethkms(&services).args(["--json", "wallet", "create", "--count", "2", "--batch", &batch])));
    assert_eq!(first.len(), 2);
    assert_eq!(keys(&first[0]), shape(&["address", "key_id", "arn", "alias", "batch", "index", "resumed"]));
    assert!(first.iter().all(|wallet| wallet["resumed"] == false));
    let second =
        json_lines(&ok(ethkms(&services).args(["--json", "wallet", "create", "--count", "3", "--batch", &batch])));
    assert_eq!(second.len(), 3);
    for (index, wallet) in second.iter().enumerate() {
        assert_eq!(wallet["index"], index);
        assert_eq!(wallet["resumed"], index < 2, "{wallet}");
    }
    assert_eq!(second[0]["key_id"], first[0]["key_id"]);
    assert_eq!(second[1]["address"], first[1]["address"]);
    let all: BTreeSet<&str> = second.iter().map(|wallet| wallet["address"].as_str().unwrap()).collect();
    assert_eq!(all.len(), 3);
}

#[test]
fn audit_verify_passes_a_real_log_and_pinpoints_edits_and_deletions() {
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("audit")));
    let mut log = ethkms::audit::AuditLog::open(&path).unwrap();
    for index in 0..6 {
        log.append(serde_json::json!({ "kind": "signature", "key": "alias/hot", "value": "1000", "index": index }))
            .unwrap();
    }
    drop(log);
    let file = path.to_str().unwrap();
    let verified: Value = serde_json::from_str(&ok(bare().args(["--json", "audit", "verify", file]))).unwrap();
    assert_eq!(keys(&verified), shape(&["valid", "records", "head"]));
    assert_eq!(verified["records"], 6);

    let original = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    let edited = lines[3].replace("\"1000\"", "\"1000000\"");
    lines[3] = &edited;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let output = bare().args(["--json", "audit", "verify", file]).output().unwrap();
    assert_eq!(output.status.code(), Some(8));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report["valid"].as_bool(), report["line"].as_u64()), (Some(false), Some(4)));
    assert!(report["reason"].as_str().unwrap().contains("edited"), "{report}");

    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(2);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, error) = fails(bare().args(["audit", "verify", file]));
    assert_eq!(code, 8);
    assert!(error.contains("line 3") && error.contains("deleted"), "{error}");
    std::fs::remove_file(&path).unwrap();
}

/// The lines of standard error, asserting there is exactly one: the error.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on standard error, got:\n{stderr}");
    lines[0]
}

#[test]
fn a_newcomer_without_a_region_sees_one_line_and_the_documented_exit_code() {
    // No region, profile, endpoint or credentials, no config file, no instance metadata.
    let (code, stderr) = fails(bare().args(["wallet", "create"]));
    assert_eq!(code, 4, "{stderr}");
    let line = one_line(&stderr);
    assert!(line.starts_with("error: ") && line.contains("AWS_REGION") && line.contains("--aws-region"), "{line}");
    // The SDK's own warnings (here: the missing config file) come back with RUST_LOG.
    let (code, stderr) = fails(bare().args(["wallet", "create"]).env("RUST_LOG", "warn"));
    assert_eq!(code, 4);
    assert!(stderr.lines().count() > 1 && stderr.contains("WARN"), "{stderr}");
}

#[test]
fn an_unreachable_key_service_is_one_line_naming_the_endpoint_and_the_fix() {
    let unreachable = || {
        let mut command = bare();
        command
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .args(["--kms-endpoint", "http://127.0.0.1:1"]);
        command
    };
    for arguments in [&["wallet", "create"][..], &["wallet", "address", "alias/anything"]] {
        let started = Instant::now();
        let (code, stderr) = fails(unreachable().args(arguments));
        assert_eq!(code, 6, "{arguments:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(line.contains("http://127.0.0.1:1") && line.contains("--kms-endpoint"), "{line}");
        assert!(line.to_lowercase().contains("connection refused"), "{line}");
        assert!(!line.contains("DispatchFailure") && !line.contains('{'), "{line}");
        // A refused connection created no key: it is not retried for half a minute.
        assert!(started.elapsed() < Duration::from_secs(20), "{arguments:?} took {:?}", started.elapsed());
    }
    // -v adds the whole chain, still without Debug dumps.
    let (_, stderr) = fails(unreachable().args(["-v", "wallet", "address", "alias/anything"]));
    assert!(stderr.contains("detail: ") && stderr.contains("tcp connect error"), "{stderr}");
    assert!(!stderr.contains("DispatchFailure"), "{stderr}");
}

#[test]
fn bad_arguments_are_reported_before_configuration_and_network() {
    // No region at all: a configuration error would be exit code 4; these are the arguments' fault.
    let dead = "0x000000000000000000000000000000000000dEaD";
    let cases: [&[&str]; 9] = [
        &["send", "alias/x", "--to", "0xdead"],
        &["send", "alias/x", "--to", dead, "--value", "1.5"],
        &["send", "alias/x", "--to", dead, "--token", "0x1234"],
        &["sign", "tx", "alias/x", "--to", dead, "--type", "legacy", "--max-fee", "1gwei"],
        &["sign", "tx", "alias/x", "--to", dead, "--type", "7702"],
        &["sign", "message", "not a key", "hello"],
        &["wallet", "create", "--count", "0"],
        &["wallet", "create", "--alias", "has spaces"],
        &["balance", dead, "--token", "0xnot"],
    ];
    for arguments in cases {
        let (code, stderr) = fails(bare().args(arguments));
        assert_eq!(code, 2, "{arguments:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(!line.contains("region") && !line.contains("credentials"), "{arguments:?}: {line}");
    }
    let (_, stderr) = fails(bare().args(["send", "alias/x", "--to", "0xdead"]));
    assert!(stderr.contains("`0xdead`") && stderr.contains("address"), "{stderr}");
}

#[test]
fn the_exit_codes_in_the_help_are_the_documented_ones() {
    let help = ok(bare().arg("--help"));
    let table = help.split("Exit codes:").nth(1).unwrap_or_else(|| panic!("no exit codes in --help:\n{help}"));
    let rows: Vec<(u8, &str)> = table
        .lines()
        .filter_map(|line| {
            let (code, meaning) = line.trim().split_once("  ")?;
            Some((code.parse().ok()?, meaning.trim()))
        })
        .collect();
    assert_eq!(rows.iter().map(|(code, _)| *code).collect::<Vec<_>>(), (0..=8).collect::<Vec<u8>>(), "{table}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (code, meaning) in &rows {
        let row = format!("| {code} | {meaning} |");
        assert!(readme.contains(&row), "README.md lacks the row `{row}`");
    }
    let documented = readme
        .lines()
        .filter(|line| {
            line.starts_with("| ") && line.split('|').nth(1).is_some_and(|cell| cell.trim().parse::<u8>().is_ok())
        })
        .count();
    assert_eq!(documented, rows.len(), "README.md documents other exit codes than --help");
}

/// `GET path` on 127.0.0.1:`port`: the status code, if anything answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn serve_runs_the_service_in_process_with_no_other_binary_on_path() {
    let Some(services) = services() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = runtime.block_on(async {
        let manager = manager(&services).await;
        manager.create_wallet(CreateKeyRequest::new()).await.unwrap().key_id
    });
    let directory = std::env::temp_dir().join(unique("ethkms-serve"));
    std::fs::create_dir_all(&directory).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = directory.join("service.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"{rpc}\"\naudit_log = \"{audit}\"\njournal = \"{journal}\"\n\n\
             [keys.hot]\nkey = \"{key}\"\nchain_id = 31337\n",
            rpc = services.rpc_url,
            audit = directory.join("audit.jsonl").display(),
            journal = directory.join("journal.sqlite").display(),
        ),
    )
    .unwrap();
    // Only the system's directories on PATH: no `ethkms-server` anywhere.
    let mut serve = std::process::Command::new(assert_cmd::cargo::cargo_bin("ethkms"));
    serve
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["serve", "--config", config.to_str().unwrap(), "--kms-endpoint", &services.kms_endpoint])
        .args(["--aws-region", "us-east-1"])
        .stderr(std::process::Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let started = Instant::now();
    while http_status(port, "/readyz") != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("ethkms serve exited ({status}): {stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "ethkms serve was not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM stops it gracefully, with status 0.
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("listening on 127.0.0.1:{port}")) && stderr.contains("stopped"), "{stderr}");
    // Said by ethkms itself, not by an `ethkms-server` process (which would name itself).
    assert!(!stderr.contains("ethkms-server listening"), "{stderr}");
    let (code, stderr) = fails(bare().args(["serve", "--config", directory.join("missing.toml").to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(one_line(&stderr).contains("missing.toml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&directory);
}
