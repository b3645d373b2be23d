//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a while; `cargo xtask fuzz-seeds`
//! rewrites the committed seed corpus from the Wycheproof vectors.
//!
//! Targets run against a scratch corpus in `target/fuzz-corpus/<target>` seeded from the committed
//! `fuzz/corpus/<target>`, so a run never changes the repository. cargo-fuzz needs nightly compiler
//! flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain accept them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Result;
use crate::command::{cargo, run as run_command, workspace_root};
use crate::tools;

/// Default seconds per target for `cargo xtask fuzz`.
pub(crate) const DEFAULT_SECONDS: u64 = 60;

/// `cargo xtask fuzz [--seconds N] [TARGET...]`.
pub(crate) fn run(options: &[&str]) -> Result {
    let mut seconds = DEFAULT_SECONDS;
    let mut chosen = Vec::new();
    let mut options = options.iter();
    while let Some(&option) = options.next() {
        match option {
            "--seconds" => {
                let value = options.next().ok_or("--seconds needs a number")?;
                seconds = value.parse().map_err(|_| format!("--seconds: `{value}` is not a whole number"))?;
            }
            target => chosen.push(target.to_owned()),
        }
    }
    let available = targets()?;
    if let Some(unknown) = chosen.iter().find(|target| !available.contains(*target)) {
        return Err(format!("no fuzz target `{unknown}`; the targets are: {}", available.join(", ")).into());
    }
    let selected = if chosen.is_empty() { available } else { chosen };
    fuzz(&selected, seconds)
}

/// Builds all targets once, then runs each for `seconds`.
pub(crate) fn fuzz(targets: &[String], seconds: u64) -> Result {
    tools::ensure(tools::CARGO_FUZZ)?;
    let root = workspace_root();
    run_command(cargo().env("RUSTC_BOOTSTRAP", "1").args(["fuzz", "build", "--fuzz-dir", "fuzz"]))?;
    for target in targets {
        let scratch = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&scratch)?;
        let seeds = root.join("fuzz/corpus").join(target);
        run_command(
            cargo()
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
                .arg(&scratch)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-print_final_stats=1"),
        )
        .map_err(|error| {
            format!("fuzz target {target} failed (the crashing input is in fuzz/artifacts/{target}): {error}")
        })?;
    }
    eprintln!("xtask: {} fuzz targets ran {seconds} s each without a failure", targets.len());
    Ok(())
}

/// The target names: `fuzz/fuzz_targets/*.rs`.
pub(crate) fn targets() -> Result<Vec<String>> {
    let directory = workspace_root().join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&directory).map_err(|error| format!("{}: {error}", directory.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `cargo xtask fuzz-seeds`: seeds from the Wycheproof DER file: distinct signatures for
/// `der_signature`, distinct keys (plus a P-256 and an RSA key) for `spki`, and for `kms_to_ethereum`
/// every valid case and a sample of invalid ones in that target's layout.
pub(crate) fn write_seeds() -> Result {
    let root = workspace_root();
    let path = root.join("crates/ethkms-core/tests/data/wycheproof/ecdsa_secp256k1_sha256_test.json");
    let text = fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let file: Value = serde_json::from_str(&text)?;
    let groups = file["testGroups"].as_array().ok_or("no testGroups")?;

    let mut signatures = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut whole = BTreeSet::new();
    for group in groups {
        let key = hex(group["publicKeyDer"].as_str().ok_or("no publicKeyDer")?)?;
        keys.insert(key.clone());
        for (index, case) in group["tests"].as_array().ok_or("no tests")?.iter().enumerate() {
            let sig = hex(case["sig"].as_str().ok_or("no sig")?)?;
            let message = hex(case["msg"].as_str().ok_or("no msg")?)?;
            let valid = case["result"] == "valid";
            if valid || index % 4 == 0 {
                let mut input = vec![u8::try_from(key.len())?];
                input.extend_from_slice(&key);
                input.extend_from_slice(&Sha256::digest(&message));
                input.extend_from_slice(&sig);
                whole.insert(input);
            }
            signatures.insert(sig);
        }
    }
    keys.insert(hex(P256_SPKI)?);
    keys.insert(hex(RSA_SPKI)?);

    let requests: BTreeSet<Vec<u8>> = RPC_SEEDS.iter().map(|seed| seed.as_bytes().to_vec()).collect();
    let withdrawals: BTreeSet<Vec<u8>> = WITHDRAWAL_SEEDS.iter().map(|seed| seed.as_bytes().to_vec()).collect();
    for (target, inputs) in [
        ("der_signature", signatures),
        ("spki", keys),
        ("kms_to_ethereum", whole),
        ("rpc_request", requests),
        ("withdrawal_body", withdrawals),
    ] {
        let directory = root.join("fuzz/corpus").join(target);
        if directory.exists() {
            fs::remove_dir_all(&directory)?;
        }
        fs::create_dir_all(&directory)?;
        let count = inputs.len();
        for input in inputs {
            let name = Sha256::digest(&input).iter().take(10).map(|byte| format!("{byte:02x}")).collect::<String>();
            fs::write(directory.join(name), input)?;
        }
        eprintln!("xtask: wrote {count} seeds to {}", relative(&directory));
    }
    Ok(())
}

/// JSON-RPC bodies the signing service receives, well-formed and not.
const RPC_SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_accounts","params":[]}"#,
    r#"{"jsonrpc":"2.0","id":"a","method":"personal_sign","params":["0x68656c6c6f","0x000000000000000000000000000000000000dEaD"]}"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"eth_sendTransaction","params":[{"from":"0x000000000000000000000000000000000000dEaD","to":"0x0000000000000000000000000000000000000001","value":"0x1"}]}"#,
    r#"{"jsonrpc":"2.0","id":3,"method":"eth_signTypedData_v4","params":["0x000000000000000000000000000000000000dEaD","{\"types\":{}}"]}"#,
    r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]"#,
    r#"{"jsonrpc":"1.0","id":null,"method":7,"params":{}}"#,
    r#"[]"#,
    r#"{"#,
];

/// Bodies of `POST /v1/withdrawals`, accepted and refused for each reason.
const WITHDRAWAL_SEEDS: &[&str] = &[
    r#"{"idempotency_key":"payout-1","key":"hot","to":"0x000000000000000000000000000000000000dEaD","asset":"ETH","amount":"0.25ether"}"#,
    r#"{"idempotency_key":"payout-2","key":"hot","to":"0x000000000000000000000000000000000000dead","asset":"0x6B175474E89094C44Da98b954EedeAC495271d0F","amount":"5000"}"#,
    r#"{"idempotency_key":"é","key":"","to":"0X000000000000000000000000000000000000DEAD","asset":"eth","amount":"1"}"#,
    r#"{"idempotency_key":"","key":"hot","to":"0x000000000000000000000000000000000000dEaD","asset":"ETH","amount":"1"}"#,
    r#"{"idempotency_key":"x","key":"hot","to":"0x000000000000000000000000000000000000dEAD","asset":"ETH","amount":"1"}"#,
    r#"{"idempotency_key":"x","key":"hot","to":"0x12","asset":"DOGE","amount":"1"}"#,
    r#"{"idempotency_key":"x","key":"hot","to":"0x000000000000000000000000000000000000dEaD","asset":"ETH","amount":"1","memo":1}"#,
    r#"{"idempotency_key":7,"key":null}"#,
    r#"["not", "an", "object"]"#,
    r#"{"#,
];

/// A KMS `ECC_NIST_P256` public key, to seed the rejection path for other curves.
const P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
/// A (short, structurally valid) RSA SubjectPublicKeyInfo, to seed the rejection path for RSA keys.
const RSA_SPKI: &str = "301c300d06092a864886f70d0101010500030b003008020300c35f020103";

fn hex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex `{text}`").into());
    }
    (0..text.len())
        .step_by(2)
        .map(|index| {
            u8::from_str_radix(&text[index..index + 2], 16).map_err(|error| format!("hex `{text}`: {error}").into())
        })
        .collect()
}

fn relative(path: &Path) -> String {
    let root: PathBuf = workspace_root();
    path.strip_prefix(&root).unwrap_or(path).display().to_string()
}
