//! The services' tables and the environment they export, checked without starting anything.

use std::ffi::OsStr;

use super::*;

#[test]
fn env_file_values_are_quoted() {
    assert_eq!(shell_quote("http://127.0.0.1:4566"), "'http://127.0.0.1:4566'");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}

#[test]
fn env_pairs_name_every_variable() {
    let env = ServiceEnv {
        kms_endpoint: "http://127.0.0.1:4566".to_owned(),
        rpc_url: "http://127.0.0.1:8545".to_owned(),
        cast: "/c/cast".into(),
        anvil: "/c/anvil".into(),
        node_modules: "/c/node_modules".into(),
        python: "/c/python".into(),
        postgres_url: "postgres://postgres@127.0.0.1:55432/postgres".to_owned(),
        postgres_control: postgres::Control {
            data: "/tmp/ethkms-postgres-55432".into(),
            binaries: "/usr/lib/postgresql/15/bin".into(),
            run_as: "postgres".to_owned(),
            log: "/c/target/services/postgres.log".into(),
        },
        softhsm: softhsm::SoftHsm { module: "/m/libsofthsm2.so".into(), conf: "/c/softhsm2.conf".into() },
    };
    let names: Vec<String> = env.pairs().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "ETHKMS_TEST_KMS_ENDPOINT",
            "ETHKMS_TEST_RPC_URL",
            "ETHKMS_TEST_CAST",
            "ETHKMS_TEST_ANVIL",
            "ETHKMS_TEST_NODE_MODULES",
            "ETHKMS_TEST_PYTHON",
            "ETHKMS_TEST_POSTGRES_URL",
            "ETHKMS_TEST_POSTGRES_DATA",
            "ETHKMS_TEST_POSTGRES_BIN",
            "ETHKMS_TEST_POSTGRES_RUN_AS",
            "ETHKMS_TEST_POSTGRES_LOG",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED",
            "SOFTHSM2_CONF",
            "ETHKMS_TEST_PKCS11_MODULE",
            "ETHKMS_TEST_PKCS11_TOKEN",
            "ETHKMS_TEST_PKCS11_SPARE_TOKEN",
            "ETHKMS_TEST_PKCS11_PIN",
        ]
    );
    let mut command = Command::new("true");
    env.apply(&mut command);
    let region = Some(OsStr::new("us-east-1"));
    assert!(command.get_envs().any(|(name, value)| name == "AWS_REGION" && value == region));
}

#[test]
fn the_table_tells_the_services_apart() {
    let names: Vec<&str> = Service::ALL.iter().map(|service| service.name).collect();
    assert_eq!(names, ["localstack", "anvil", "postgres"]);
    let ports: Vec<u16> = Service::ALL.iter().map(|service| service.default_port).collect();
    assert_eq!(ports, [4566, 8545, 55432]);
    assert_eq!(Service::LOCALSTACK.signature, "run_localstack.py");
    assert!(Service::ALL.iter().all(|service| service.timeout >= Duration::from_secs(30)));
    assert_eq!(Service::ANVIL.url(8545), "http://127.0.0.1:8545");
    assert_eq!(Service::POSTGRES.url(55432), "postgres://postgres@127.0.0.1:55432/postgres");
}
