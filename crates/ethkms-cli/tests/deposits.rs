//! `ethkms deposits`, run as a program: arguments checked before anything else, and the whole job
//! against LocalStack KMS and anvil — a factory deployed by a KMS key, addresses derived (as the library
//! derives them), deposits of ether and a token found by a scan, a stranger's sweep refused before any
//! transaction, a dry run that moves nothing, a sweep that moves exactly what was deposited to the
//! treasury, and a second sweep that finds nothing left. In CI a missing service fails it.

mod common;

use alloy_network::TransactionBuilder as _;
use alloy_primitives::{Address, U256, keccak256};
use alloy_provider::Provider as _;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_sol_types::{SolCall as _, SolValue as _};
use common::{bare, ethkms, fails, fund, json_lines, manager, ok};
use ethkms::backend::KeyRef;
use ethkms_deposits::contracts::{self, Erc20};
use ethkms_deposits::{DepositAddresses, Reference};
use ethkms_test_support::{services, unique};

alloy_sol_types::sol! {
    function mint(address to, uint256 amount) external;
}

const FACTORY: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PARENT: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

#[test]
fn bad_deposit_arguments_are_usage_errors_before_any_request() {
    let derive = |extra: &[&str]| {
        let mut command = bare();
        command.args(["deposits", "address", "--factory", FACTORY, "--parent", PARENT]).args(extra);
        fails(&mut command)
    };
    let (code, stderr) = derive(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("name customer references"), "{stderr}");
    let (code, stderr) = derive(&["--range", "5..5"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--range 5..5"), "{stderr}");
    let (code, stderr) = derive(&["a\u{7}b"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("control character"), "{stderr}");
    let (code, stderr) = fails(bare().args(["deposits", "address", "--factory", "0x12", "--parent", PARENT, "x"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("0x12"), "{stderr}");
    // Derivation needs neither a node nor KMS: the library's addresses, as text and as JSON.
    let text = ok(bare().args(["deposits", "address", "--factory", FACTORY, "--parent", PARENT, "alice", "--json"]));
    let addresses = DepositAddresses::new(FACTORY.parse().unwrap(), PARENT.parse().unwrap());
    let expected = addresses.address(&Reference::new("alice").unwrap()).to_string();
    assert_eq!(json_lines(&text)[0]["address"], expected);
    let range = ok(bare().args(["deposits", "address", "--factory", FACTORY, "--parent", PARENT, "--range", "7..9"]));
    let lines: Vec<&str> = range.lines().collect();
    assert_eq!(
        lines,
        [format!("{}  7", addresses.address_of_index(7)), format!("{}  8", addresses.address_of_index(8))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_deposits_a_scan_and_a_sweep_to_the_treasury() {
    let Some(services) = services() else { return };
    let manager = manager(&services).await;
    let create = |services| json_lines(&ok(ethkms(services).args(["--json", "wallet", "create"])))[0].clone();
    let (sweeper, stranger) = (create(&services), create(&services));
    for wallet in [&sweeper, &stranger] {
        fund(&manager, wallet["address"].as_str().unwrap().parse().unwrap()).await;
    }
    let key = sweeper["key_id"].as_str().unwrap().to_owned();
    let deployed = json_lines(&ok(ethkms(&services).args(["--json", "deposits", "deploy-factory", &key])))[0].clone();
    let factory = deployed["factory"].as_str().unwrap().to_owned();
    assert_eq!(deployed["owner"], sweeper["address"]);
    let parent = Address::from_word(keccak256(unique("treasury")));
    let parent_text = parent.to_string();
    let target = ["--factory", factory.as_str(), "--parent", parent_text.as_str()];

    let derived =
        json_lines(&ok(ethkms(&services).args(["--json", "deposits", "address"]).args(target).args(["alice", "bob"])));
    let (alice, bob): (Address, Address) = (
        derived[0]["address"].as_str().unwrap().parse().unwrap(),
        derived[1]["address"].as_str().unwrap().parse().unwrap(),
    );
    let start = manager.provider().get_block_number().await.unwrap() + 1;
    ok(ethkms(&services).args(["send", &key, "--to", &alice.to_string(), "--value", "0.5ether"]));
    let key_ref = KeyRef::new(key.clone()).unwrap();
    let token_code = [
        contracts::test_token_artifact().bytecode.as_ref(),
        &("Test USD".to_owned(), "TUSD".to_owned(), true).abi_encode_params(),
    ]
    .concat();
    let token = manager
        .send_request(&key_ref, TransactionRequest::default().with_deploy_code(token_code))
        .await
        .unwrap()
        .contract_address
        .unwrap();
    let mint = mintCall { to: bob, amount: U256::from(777) }.abi_encode();
    manager.send_request(&key_ref, TransactionRequest::default().with_to(token).with_input(mint)).await.unwrap();
    let token_text = token.to_string();

    // The scan finds both: ether by its transaction, the token by its log.
    let from = start.to_string();
    let found = json_lines(&ok(ethkms(&services).args(["--json", "deposits", "scan"]).args(target).args([
        "alice",
        "bob",
        "--from-block",
        &from,
        "--token",
        &token_text,
    ])));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0]["reference"].as_str(), found[0]["asset"].as_str()), (Some("alice"), Some("ETH")));
    assert_eq!(found[0]["amount"], "500000000000000000");
    assert!(found[0]["log_index"].is_null());
    assert_eq!((found[1]["reference"].as_str(), found[1]["amount"].as_str()), (Some("bob"), Some("777")));
    assert_eq!(found[1]["asset"], token_text);

    // A stranger's sweep is refused before any transaction; a dry run moves nothing.
    let stranger_key = stranger["key_id"].as_str().unwrap();
    let sweep = |key: &str, extra: &[&str]| {
        let mut command = ethkms(&services);
        command
            .args(["--json", "deposits", "sweep", "--key", key])
            .args(target)
            .args(["alice", "bob", "carol", "--token", &token_text])
            .args(extra);
        command
    };
    let (code, stderr) = fails(&mut sweep(stranger_key, &[]));
    assert_eq!(code, 2);
    assert!(stderr.contains("neither the factory's owner"), "{stderr}");
    let dry = json_lines(&ok(&mut sweep(&key, &["--dry-run"])));
    assert_eq!(dry[0]["addresses"].as_array().unwrap().len(), 2, "{dry:?}");
    assert_eq!(manager.provider().get_balance(parent).await.unwrap(), U256::ZERO);

    let swept = json_lines(&ok(&mut sweep(&key, &[])));
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert!(swept[0]["tx_hash"].is_string());
    assert_eq!(manager.provider().get_balance(parent).await.unwrap(), U256::from(5 * 10_u128.pow(17)));
    let balance = Erc20::balanceOfCall { owner: parent }.abi_encode();
    let answer =
        manager.provider().call(TransactionRequest::default().with_to(token).with_input(balance)).await.unwrap();
    assert_eq!(Erc20::balanceOfCall::abi_decode_returns(&answer).unwrap(), U256::from(777));
    for address in [alice, bob] {
        assert!(!manager.provider().get_code_at(address).await.unwrap().is_empty(), "deployed by the sweep");
    }
    assert!(json_lines(&ok(&mut sweep(&key, &[]))).is_empty(), "nothing left to sweep");
}
