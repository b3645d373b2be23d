//! Tests of the configuration: a full file parses, and each mistake is named.

use std::time::Duration;

use super::*;
use alloy_primitives::{Address, U256};
use ethkms::pkcs11::CallPlacement;

use crate::policy::{ArgConstraint, ArgKind, Asset};
use crate::webhooks::signature::WebhookSecret;

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
    assert_eq!(typed.max_deadline, Duration::from_secs(600));
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
    assert_eq!(token.calls, CallPlacement::BlockInPlace, "the service's calls run in place by default");
    for placement in [CallPlacement::BlockingPool, CallPlacement::Inline] {
        let chosen = Config::parse(&format!("{base}{hsm}calls = \"{placement}\"\n{keys}")).unwrap();
        let BackendConfig::Pkcs11(token) = &chosen.backends["hsm"];
        assert_eq!(token.calls, placement);
    }

    for (extra, expected) in [
        ("pin = \"1234\"\n", "backends.hsm.pin: the PIN is never read from the configuration"),
        ("pin_env = \"A\"\npin_file = \"/f\"\n", "backends.hsm.pin_file: give pin_env or pin_file, not both"),
        ("max_sessions = 0\n", "backends.hsm.max_sessions: must be at least 1"),
        (
            "calls = \"in-place\"\n",
            "backends.hsm.calls: `in-place` is not a placement of PKCS#11 calls; choose blocking-pool, block-in-place or inline",
        ),
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

#[test]
fn a_webhook_reads_its_secret_from_a_file_or_the_environment_and_never_shows_it_or_its_url() {
    let directory = std::env::temp_dir().join(format!("ethkms-webhook-config-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let secret_file = directory.join("secret");
    std::fs::write(&secret_file, "whsec_from_file\n").unwrap();
    let empty_file = directory.join("empty");
    std::fs::write(&empty_file, "\n").unwrap();
    let url = "https://user:hunter2@hooks.example.com/ethkms?token=abc";
    let with = |webhook: &str| {
        example("t").replace(
            "methods = [\"eth_sendTransaction\", \"eth_signTransaction\"]\n",
            &format!("methods = [\"eth_sendTransaction\", \"eth_signTransaction\"]\nwebhook = {webhook}\n"),
        )
    };

    let config =
        Config::parse(&with(&format!("{{ url = \"{url}\", secret_file = \"{}\" }}", secret_file.display()))).unwrap();
    let webhook = config.clients["withdrawals"].webhook.as_ref().unwrap();
    assert_eq!(webhook.url.as_str(), url);
    assert_eq!(webhook.secret, WebhookSecret::new("whsec_from_file").unwrap());
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("token=abc") && !shown.contains("whsec"), "{shown}");
    assert_eq!(config.webhooks, WebhookSettings::default());
    // PATH is set in every test environment: its value is the secret.
    let from_env = Config::parse(&with(&format!("{{ url = \"{url}\", secret_env = \"PATH\" }}"))).unwrap();
    let path = std::env::var("PATH").unwrap();
    assert_eq!(from_env.clients["withdrawals"].webhook.as_ref().unwrap().secret, WebhookSecret::new(&path).unwrap());
    let tuned = format!(
        "webhooks = {{ timeout_ms = 250, max_backoff_ms = 2000 }}\n{}",
        with(&format!("{{ url = \"{url}\", secret_env = \"PATH\" }}"))
    );
    let tuned = Config::parse(&tuned).unwrap().webhooks;
    assert_eq!((tuned.timeout, tuned.max_backoff), (Duration::from_millis(250), Duration::from_secs(2)));

    let unset = "ETHKMS_TEST_SURELY_UNSET_WEBHOOK_SECRET";
    let missing_file = directory.join("missing");
    for (webhook, expected) in [
        (
            format!("{{ url = \"{url}\", secret_env = \"{unset}\" }}"),
            format!("clients.withdrawals.webhook.secret_env: the environment variable `{unset}` is not set"),
        ),
        (
            format!("{{ url = \"{url}\", secret_file = \"{}\" }}", empty_file.display()),
            format!("clients.withdrawals.webhook.secret_file: `{}` is empty", empty_file.display()),
        ),
        (
            format!("{{ url = \"{url}\", secret_file = \"{}\" }}", missing_file.display()),
            format!("`{}` cannot be read", missing_file.display()),
        ),
        (format!("{{ url = \"{url}\" }}"), "give exactly one of `secret_env`".to_owned()),
        (
            format!("{{ url = \"{url}\", secret_env = \"PATH\", secret_file = \"/f\" }}"),
            "give exactly one of `secret_env`".to_owned(),
        ),
        (format!("{{ url = \"{url}\", secret = \"whsec_inline\" }}"), "unknown field `secret`".to_owned()),
        (
            "{ url = \"ftp://user:hunter2@host/x\", secret_env = \"PATH\" }".to_owned(),
            "clients.withdrawals.webhook.url: not an http:// or https:// URL".to_owned(),
        ),
        ("{ url = \"hunter2\", secret_env = \"PATH\" }".to_owned(), "webhook.url: not an http".to_owned()),
    ] {
        let error = Config::parse(&with(&webhook)).unwrap_err().to_string();
        assert!(error.contains(&expected), "expected `{expected}` in: {error}");
        assert!(!error.contains("hunter2") && !error.contains("whsec_inline"), "{error}");
    }
    let without_journal = with(&format!("{{ url = \"{url}\", secret_env = \"PATH\" }}"))
        .replace("journal = \"withdrawals.sqlite\"", "")
        .replace("\"eth_sendTransaction\", \"eth_signTransaction\"", "\"personal_sign\"");
    let error = Config::parse(&without_journal).unwrap_err().to_string();
    assert!(error.contains("webhooks need `journal`"), "{error}");
    for (settings, expected) in [
        ("timeout_ms = 0", "must be more than zero"),
        ("min_backoff_ms = 5000, max_backoff_ms = 1000", "max_backoff_ms: must be at least min_backoff_ms"),
        ("retries = 3", "unknown field `retries`"),
    ] {
        let error = Config::parse(&format!("webhooks = {{ {settings} }}\n{}", example("t"))).unwrap_err().to_string();
        assert!(error.contains(expected), "{settings}: {error}");
    }
    std::fs::remove_dir_all(&directory).unwrap();
}
