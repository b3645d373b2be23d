//! The command line with `--backend pkcs11`, against the SoftHSM2 token of `cargo xtask services up` and
//! its anvil: a wallet created in the token, its address, a message signed and verified by `ethkms verify`
//! and by Python's eth-account, an ether transfer mined on anvil; and the token's failures with their exit
//! codes. The commands run one after another: SoftHSM2 does not take two processes writing one token at
//! once (see `ethkms_test_support::pkcs11`).

mod common;

use alloy_primitives::{Address, U256, keccak256};
use assert_cmd::Command;
use common::{bare, fails, json_lines, ok};
use ethkms_test_support::chain::{ETHER, balance, set_balance};
use ethkms_test_support::pkcs11::{PIN_VARIABLE, SoftHsm, softhsm};
use ethkms_test_support::verifiers::{assert_every_case_recovers, eth_account};
use ethkms_test_support::{service_from_env, unique};
use serde_json::{Value, json};

/// `ethkms --backend pkcs11` on the test token (or `token`), the PIN in `ETHKMS_PKCS11_PIN`.
fn on_token(hsm: &SoftHsm, token: &str) -> Command {
    let mut command = bare();
    command
        .env("SOFTHSM2_CONF", std::env::var_os("SOFTHSM2_CONF").unwrap_or_default())
        .env("ETHKMS_PKCS11_PIN", std::env::var_os(PIN_VARIABLE).unwrap_or_default())
        .args(["--backend", "pkcs11", "--pkcs11-module", &hsm.module, "--pkcs11-token", token]);
    command
}

/// Held by each test while its commands use the token: one process at a time.
static TOKEN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_wallet_in_the_hsm_signs_messages_and_transfers() {
    let Some(hsm) = softhsm() else { return };
    let _token = TOKEN.lock().await;
    let Some(rpc_url) = service_from_env("ETHKMS_TEST_RPC_URL", "anvil") else { return };
    let ethkms = || {
        let mut command = on_token(&hsm, &hsm.token);
        command.env("ETH_RPC_URL", &rpc_url);
        command
    };
    let alias = format!("alias/{}", unique("cli-hsm"));
    let tag = unique("hsm");
    let created = json_lines(&ok(ethkms().args([
        "--json",
        "wallet",
        "create",
        "--alias",
        &alias,
        "--tag",
        &format!("suite={tag}"),
    ])));
    assert_eq!(created[0]["alias"], alias.as_str());
    let address = created[0]["address"].as_str().unwrap().to_owned();
    let key_id = created[0]["key_id"].as_str().unwrap().to_owned();
    assert!(created[0]["arn"].as_str().unwrap().starts_with("arn:ethkms:pkcs11::"), "{created:?}");
    for key in [alias.as_str(), key_id.as_str()] {
        assert_eq!(ok(ethkms().args(["wallet", "address", key])).trim(), address);
    }
    let listed = json_lines(&ok(ethkms().args(["--json", "wallet", "list", "--tag", &format!("suite={tag}")])));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["address"].as_str(), listed[0]["state"].as_str()), (Some(address.as_str()), Some("Enabled")));
    assert_eq!(listed[0]["key_spec"], "ECC_SECG_P256K1");

    // A message, verified by ethkms and by eth-account.
    let message = "withdraw 1 ETH from the HSM";
    let signature = ok(ethkms().args(["sign", "message", &alias, message])).trim().to_owned();
    ok(bare().args(["verify", "--address", &address, "--message", message, "--signature", &signature]));
    if let Some(verifier) = eth_account() {
        let cases = json!([{ "name": "hsm", "kind": "message", "message": message, "signature": signature }]);
        assert_every_case_recovers("eth-account", verifier, &cases, &address);
    }

    // An ether transfer from the HSM key, mined on anvil.
    let owner: Address = address.parse().unwrap();
    set_balance(&rpc_url, owner, U256::from(ETHER)).await;
    let recipient = Address::from_slice(&keccak256(unique("recipient"))[12..]);
    let before = balance(&rpc_url, recipient).await;
    let sent: Value = serde_json::from_str(&ok(ethkms().args([
        "--json",
        "send",
        &alias,
        "--to",
        &recipient.to_checksum(None),
        "--value",
        "0.25ether",
    ])))
    .unwrap();
    assert_eq!((sent["from"].as_str(), sent["status"].as_bool()), (Some(address.as_str()), Some(true)), "{sent}");
    assert_eq!(balance(&rpc_url, recipient).await - before, U256::from(ETHER / 4));
}

#[tokio::test]
async fn token_failures_have_their_exit_codes_and_never_show_the_pin() {
    let Some(hsm) = softhsm() else { return };
    let _token = TOKEN.lock().await;
    // No module: a usage error, before anything is loaded.
    let (code, error) =
        fails(bare().args(["--backend", "pkcs11", "--pkcs11-token", "t", "wallet", "address", "alias/x"]));
    assert_eq!(code, 2, "{error}");
    assert!(error.contains("--pkcs11-module"), "{error}");
    // A key that is not there.
    let (code, error) = fails(on_token(&hsm, &hsm.token).args(["wallet", "address", "alias/no-such-key-here"]));
    assert_eq!(code, 3, "{error}");
    // A token that is not there: the labels found are named.
    let (code, error) = fails(on_token(&hsm, "no-such-token").args(["wallet", "address", "alias/x"]));
    assert_eq!(code, 4, "{error}");
    assert!(error.contains(&format!("`{}`", hsm.token)) && error.lines().count() == 1, "{error}");
    // A wrong PIN, from a file (on the spare token, as the test token is never given a wrong one).
    let file = std::env::temp_dir().join(unique("ethkms-cli-pin"));
    std::fs::write(&file, "wrong-pin-58213\n").unwrap();
    let (code, error) = fails(on_token(&hsm, &hsm.spare_token).args([
        "--pkcs11-pin-file",
        file.to_str().unwrap(),
        "wallet",
        "address",
        "alias/x",
    ]));
    std::fs::remove_file(&file).unwrap();
    assert_eq!(code, 4, "{error}");
    assert!(error.contains("CKR_PIN_INCORRECT") && !error.contains("wrong-pin-58213"), "{error}");
    // No PIN at all.
    let (code, error) = fails(on_token(&hsm, &hsm.token).env_remove("ETHKMS_PKCS11_PIN").args(["wallet", "list"]));
    assert_eq!(code, 4, "{error}");
    assert!(error.contains("ETHKMS_PKCS11_PIN is not set"), "{error}");
}
