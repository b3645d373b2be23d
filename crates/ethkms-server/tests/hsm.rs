//! One service, two backends: key `hot` on LocalStack's KMS (the service's own backend) and key `cold` on
//! the SoftHSM2 token of `cargo xtask services up` (`backend = "hsm"`, a `[backends.hsm]` section, the PIN
//! from a variable). A withdrawal from each is signed by its own key and mined on anvil; a token that is not
//! there stops the service from starting, naming the backend.

mod common;

use alloy_primitives::{Address, U256};
use common::*;
use ethkms::backend::{CreateKeyRequest, KeyBackend};
use ethkms_server::config::Config;
use ethkms_server::service::{Service, StartError};
use ethkms_test_support::chain::set_balance;
use ethkms_test_support::pkcs11::{PIN_VARIABLE, SoftHsm, softhsm};
use ethkms_test_support::{service_from_env, unique};

/// The `[backends.hsm]` section for the test token (`token` in its place when given).
fn hsm_backend(hsm: &SoftHsm, token: &str) -> String {
    format!(
        "\n[backends.hsm]\ntype = \"pkcs11\"\nmodule = \"{}\"\ntoken = \"{token}\"\npin_env = \"{PIN_VARIABLE}\"\n",
        hsm.module
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_key_and_an_hsm_key_withdraw_side_by_side() {
    let Some(hsm) = softhsm() else { return };
    let Some((_, kms)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let first_block = block_number(&rpc_url).await;
    let (kms_key, kms_address) = funded_key(&kms, &rpc_url).await;
    let token = hsm.backend().await;
    let alias = format!("alias/{}", unique("withdrawals-cold"));
    let info = token.create_key(&CreateKeyRequest::new().alias(alias.clone())).await.unwrap();
    let hsm_address: Address = info.address.unwrap().to_string().parse().unwrap();
    set_balance(&rpc_url, hsm_address, U256::from(10) * U256::from(ETHER)).await;

    let paths = Paths::new();
    let text = format!(
        "{head}{cold}backend = \"hsm\"\n{backends}{client}",
        head = config_head("127.0.0.1:0", &rpc_url, &kms_key, &paths),
        cold = config_key("cold", &alias),
        backends = hsm_backend(&hsm, &hsm.token),
        client = config_client_of_keys("exchange", TOKEN, &["hot", "cold"], &["withdrawals"]),
    );
    let api = serve_in_process(&text, kms).await;
    let run = unique("run");
    let mut expected = Vec::new();
    for (index, key, from) in [(1, "hot", kms_address), (2, "cold", hsm_address), (3, "cold", hsm_address)] {
        let to = recipient(&run, index);
        let (status, accepted) =
            api.post(&withdrawal_from(key, &format!("{run}-{index}"), to, "ETH", "0.01ether")).await;
        assert_eq!(status, 202, "{accepted}");
        expected.push((accepted["id"].as_str().unwrap().to_owned(), from, to));
    }
    for (id, from, to) in &expected {
        let settled = api.wait_until(id, std::time::Duration::from_secs(60), |w| w["status"] == "confirmed").await;
        assert_eq!(settled["status"], "confirmed", "{settled}");
        assert_eq!(balance(&rpc_url, *to).await, U256::from(ETHER / 100), "paid once, by {from}");
    }
    // Each key paid its own recipients from its own address: the KMS key once, the HSM key twice, nonces 0
    // and 1 (in either order: the service promises no order between two withdrawals of one key).
    let from_kms = transactions_from(&rpc_url, kms_address, first_block).await;
    let from_hsm = transactions_from(&rpc_url, hsm_address, first_block).await;
    assert_eq!(from_kms.keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(from_kms[&0].0, expected[0].2);
    assert_eq!(from_hsm.keys().copied().collect::<Vec<_>>(), [0, 1]);
    let mut paid_by_hsm: Vec<Address> = from_hsm.values().map(|(to, ..)| *to).collect();
    let mut hsm_recipients = vec![expected[1].2, expected[2].2];
    paid_by_hsm.sort();
    hsm_recipients.sort();
    assert_eq!(paid_by_hsm, hsm_recipients);
}

#[tokio::test]
async fn a_token_that_is_not_there_stops_the_start_naming_the_backend() {
    let Some(hsm) = softhsm() else { return };
    let backend: std::sync::Arc<dyn KeyBackend> = std::sync::Arc::new(ethkms::backend::MemoryBackend::new());
    let paths = Paths::new();
    let text = format!(
        "{head}{cold}backend = \"hsm\"\n{backends}",
        head = config_head("127.0.0.1:0", "http://127.0.0.1:9", "alias/unused", &paths),
        cold = config_key("cold", "alias/cold"),
        backends = hsm_backend(&hsm, "no-such-token"),
    );
    let error = Service::start(Config::parse(&text).unwrap(), backend).await.unwrap_err();
    assert!(matches!(&error, StartError::Backend { name, .. } if name == "hsm"), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with("backend `hsm`: ") && message.contains("no-such-token"), "{message}");
}
