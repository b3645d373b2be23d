//! Tests of the configuration: a full file parses, and each mistake is named.

use super::*;
use alloy_primitives::{Address, U256};

use crate::policy::{ArgConstraint, ArgKind, Asset};

fn example(token: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:8600"
upstream = "http://127.0.0.1:8545"
audit_log = "audit.jsonl"

journal = "withdrawals.sqlite"

[keys.hot]
key = "alias/hot-wallet"
chain_id = 1
confirmations = 3
fees = {{ max_fee_per_gas = "200gwei" }}
[keys.hot.policy]
destination_allowlist = ["0x000000000000000000000000000000000000dEaD"]
max_value = {{ ETH = "1ether", "0x6B175474E89094C44Da98b954EedeAC495271d0F" = "5000" }}
daily_limit = {{ ETH = "10ether" }}
contract_calls = [{{ address = "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D", selector = "0x38ed1739", args = [
{{ index = 0, kind = "address_allowlisted" }}, {{ index = 1, kind = "amount_max", max = "1000", asset = "ETH" }},
] }}]
[keys.hot.policy.typed_data]
max_deadline_seconds = 600
domains = [{{ verifying_contract = "0x6B175474E89094C44Da98b954EedeAC495271d0F", primary_types = ["Permit"] }}]

[clients.withdrawals]
token_sha256 = "{}"
keys = ["hot"]
methods = ["eth_sendTransaction", "eth_signTransaction"]
"#,
        token_hash(token)
    )
}

#[test]
fn a_full_configuration_parses() {
    let config = Config::parse(&example("s3cret")).unwrap();
    let hot = &config.keys["hot"];
    assert_eq!((hot.key.as_str(), hot.chain_id), ("alias/hot-wallet", 1));
    assert_eq!(hot.confirmations, 3);
    assert_eq!(hot.fees.max_fee_per_gas, 200_000_000_000);
    assert_eq!(hot.fees.max_priority_fee_per_gas, FeeCaps::default().max_priority_fee_per_gas);
    assert_eq!(hot.policy.max_value[&Asset::Ether], U256::from(10u64.pow(18)));
    let dai: Address = "0x6B175474E89094C44Da98b954EedeAC495271d0F".parse().unwrap();
    assert_eq!(hot.policy.max_value[&Asset::Token(dai)], U256::from(5000));
    let call = &hot.policy.contract_calls.as_ref().unwrap()[0];
    assert_eq!(call.selector, [0x38, 0xed, 0x17, 0x39]);
    assert_eq!(call.args[0], ArgConstraint { index: 0, kind: ArgKind::AddressAllowlisted });
    // `asset = "ETH"`: the cap takes units, here 1,000 wei.
    assert_eq!(call.args[1].kind, ArgKind::AmountMax { max: U256::from(1000), asset: Some(Asset::Ether) });
    assert_eq!(hot.policy.fees, hot.fees, "the policy knows the key's fee caps");
    let typed = hot.policy.typed_data.as_ref().unwrap();
    assert_eq!(typed.max_deadline, std::time::Duration::from_secs(600));
    assert_eq!(
        (typed.domains[0].verifying_contract, typed.domains[0].primary_types.as_slice()),
        (Some(dai), ["Permit".to_owned()].as_slice())
    );
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn clients_authenticate_by_token_and_are_limited_to_their_keys_and_methods() {
    let config = Config::parse(&example("s3cret")).unwrap();
    let (name, client) = config.authenticate("s3cret").unwrap();
    assert_eq!(name, "withdrawals");
    assert!(client.may("eth_sendTransaction", "hot"));
    assert!(!client.may("personal_sign", "hot"));
    assert!(!client.may("eth_sendTransaction", "cold"));
    assert!(config.authenticate("s3cret ").is_none());
    assert!(config.authenticate("").is_none());
}

#[test]
fn mistakes_are_named() {
    let good = example("t");
    let cases = [
        (good.replace("listen =", "listn ="), "listn"),
        (
            good.replace("0x000000000000000000000000000000000000dEaD", "0x000000000000000000000000000000000000DEaD"),
            "checksum",
        ),
        (good.replace("\"10ether\"", "\"10 dogecoin\""), "daily_limit"),
        (good.replace("0x38ed1739", "0x38ed17"), "selector"),
        (good.replace("keys = [\"hot\"]", "keys = [\"cold\"]"), "no key named `cold`"),
        (good.replace("\"eth_signTransaction\"", "\"eth_steal\""), "eth_steal"),
        (good.replace(&token_hash("t"), "abcd"), "64 hexadecimal digits"),
        (good.replace("confirmations = 3", "confirmations = 0"), "confirmations: must be at least 1"),
        (good.replace("chain_id = 1\n", "chain_id = 0\n"), "chain_id: 0 names no chain"),
        (good.replace("\"200gwei\"", "\"lots\""), "fees.max_fee_per_gas"),
        (good.replace("journal = \"withdrawals.sqlite\"", ""), "`eth_sendTransaction` needs `journal`"),
        (
            good.replace("kind = \"amount_max\"", "kind = \"amount_min\""),
            "contract_calls[0].args[1]: kind `amount_min`",
        ),
        (good.replace(", max = \"1000\"", ""), "`amount_max` needs `max`"),
        (good.replace("max = \"1000\"", "max = \"lots\""), "contract_calls[0].args[1]"),
        (good.replace("index = 0, kind", "index = 0, max = \"1\", kind"), "takes no `max`"),
        (
            good.replace("destination_allowlist = [\"0x000000000000000000000000000000000000dEaD\"]", ""),
            "needs a destination_allowlist",
        ),
        (
            good.replace("primary_types = [\"Permit\"]", "primary_types = []"),
            "typed_data.domains[0]: primary_types is empty",
        ),
        (good.replace("verifying_contract = \"0x6B", "verifying_contract = \"0xZZ"), "typed_data.domains[0]"),
        (good.replace("max_deadline_seconds", "max_deadline"), "unknown field `max_deadline`"),
        (good.replace("index = 0", "position = 0"), "unknown field `position`"),
    ];
    for (text, expected) in cases {
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains(expected), "expected `{expected}` in: {error}");
    }
}

#[test]
fn keys_choose_their_backend_and_the_pin_stays_out_of_the_file() {
    let base = "listen = \"127.0.0.1:8600\"\nupstream = \"http://127.0.0.1:8545\"\naudit_log = \"a.jsonl\"\n";
    let hsm = "[backends.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"treasury\"\n";
    let keys = "[keys.hot]\nkey = \"alias/hot\"\nchain_id = 1\n[keys.cold]\nkey = \"alias/cold\"\nbackend = \"hsm\"\nchain_id = 1\n";
    let config = Config::parse(&format!("{base}{hsm}pin_file = \"/run/pin\"\nmax_sessions = 3\n{keys}")).unwrap();
    assert_eq!(config.keys["hot"].backend, None);
    assert_eq!(config.keys["cold"].backend.as_deref(), Some("hsm"));
    let BackendConfig::Pkcs11(token) = &config.backends["hsm"];
    assert_eq!((token.token_label.as_str(), token.max_sessions), ("treasury", 3));
    assert_eq!(token.pin, ethkms::pkcs11::PinSource::File("/run/pin".into()));
    let defaults = Config::parse(&format!("{base}{hsm}{keys}")).unwrap();
    let BackendConfig::Pkcs11(token) = &defaults.backends["hsm"];
    assert_eq!(token.pin, ethkms::pkcs11::PinSource::Env("ETHKMS_PKCS11_PIN".into()));

    for (extra, expected) in [
        ("pin = \"1234\"\n", "backends.hsm.pin: the PIN is never read from the configuration"),
        ("pin_env = \"A\"\npin_file = \"/f\"\n", "backends.hsm.pin_file: give pin_env or pin_file, not both"),
        ("max_sessions = 0\n", "backends.hsm.max_sessions: must be at least 1"),
    ] {
        let error = Config::parse(&format!("{base}{hsm}{extra}{keys}")).unwrap_err().to_string();
        assert!(error.contains(expected), "{extra}: {error}");
        assert!(!error.contains("1234"), "{error}");
    }
    let error = Config::parse(&format!("{base}[backends.hsm]\ntype = \"vault\"\n{keys}")).unwrap_err().to_string();
    assert!(error.contains("backends.hsm.type: `vault` is not a backend type"), "{error}");
    let error = Config::parse(&format!("{base}[backends.hsm]\ntype = \"pkcs11\"\ntoken = \"t\"\n{keys}")).unwrap_err();
    assert!(error.to_string().contains("backends.hsm.module: missing"), "{error}");
    let error = Config::parse(&format!("{base}{keys}")).unwrap_err().to_string();
    assert!(error.contains("keys.cold.backend: no backend named `hsm` in [backends]"), "{error}");
}
