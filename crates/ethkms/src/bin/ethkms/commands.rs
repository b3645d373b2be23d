//! What each command does. Output goes to standard output, as text or (with `--json`) one JSON object
//! per line whose shape the CLI tests pin down; progress and spinners go to standard error.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use alloy_eips::eip7702::Authorization;
use alloy_network::{TransactionBuilder, TransactionBuilder7702};
use alloy_primitives::utils::{format_units, parse_units};
use alloy_primitives::{Address, Bytes, U256, hex, keccak256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::aws::AwsKmsConfig;
use ethkms::backend::{CreateKeyRequest, KeyFilter, KeyRef, KeySpec, KeyState, Tag};
use ethkms::eth::chain;
use ethkms::units::{parse_address, parse_value};
use ethkms::{BackendSettings, ChainSettings, WalletManager};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::{
    AuditCommand, AuditVerifyArgs, BackendKind, BalanceArgs, Cli, Command, CreateArgs, Global, IamArgs, ListArgs,
    PolicyCommand, RotateArgs, SendArgs, ServeArgs, SignCommand, SignTxArgs, TransactionArgs, TxType, VerifyArgs,
    WalletCommand,
};
use crate::{CliError, Exit, policy};

const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Prints results as text or JSON lines.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn emit(self, value: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }
}

pub(crate) async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let output = Output { json: global.json };
    match command {
        Command::Policy(PolicyCommand::Iam(args)) => policy_iam(&args),
        Command::Verify(args) => verify(output, &args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(output, &args),
        Command::Serve(args) => serve(&global, &args),
        Command::Wallet(command) => {
            let manager = manager(&global).await?;
            match command {
                WalletCommand::Create(args) => create(output, &manager, &args).await,
                WalletCommand::List(args) => list(output, &manager, &args).await,
                WalletCommand::Address(args) => {
                    let key = key_ref(&args.key)?;
                    let address = manager.address(&key).await?;
                    output
                        .emit(&json!({ "key": key.as_str(), "address": address.to_string() }), || address.to_string());
                    Ok(())
                }
                WalletCommand::Rotate(args) => rotate(output, &manager, &args).await,
            }
        }
        Command::Balance(args) => balance(output, &manager(&global).await?, &args).await,
        Command::Sign(command) => {
            let manager = manager(&global).await?;
            match command {
                SignCommand::Message(args) => {
                    let key = key_ref(&args.key)?;
                    let message =
                        if args.hex { decode_hex("message", &args.message)? } else { args.message.into_bytes() };
                    let signature = manager.sign_message(&key, &message).await?;
                    let address = manager.address(&key).await?;
                    output.emit(&json!({ "address": address.to_string(), "signature": signature.to_string() }), || {
                        signature.to_string()
                    });
                    Ok(())
                }
                SignCommand::TypedData(args) => {
                    let key = key_ref(&args.key)?;
                    let text = read_input(&args.file)?;
                    let hash = ethkms::eth::typed_data_hash(&text)?;
                    let signature = manager.sign_typed_data(&key, &text).await?;
                    let address = manager.address(&key).await?;
                    output.emit(
                        &json!({ "address": address.to_string(), "hash": hash, "signature": signature.to_string() }),
                        || signature.to_string(),
                    );
                    Ok(())
                }
                SignCommand::Tx(args) => sign_tx(output, &manager, &args).await,
            }
        }
        Command::Send(args) => send(output, &manager(&global).await?, &args).await,
    }
}

async fn manager(global: &Global) -> Result<WalletManager, CliError> {
    let backend = match global.backend {
        BackendKind::Aws => BackendSettings::Aws(AwsKmsConfig {
            region: global.aws_region.clone(),
            profile: global.aws_profile.clone(),
            endpoint_url: global.kms_endpoint.clone(),
            ..AwsKmsConfig::default()
        }),
        BackendKind::Memory => BackendSettings::Memory { seed: None },
    };
    let chain = ChainSettings { chain_id: global.chain_id, ..ChainSettings::new(global.rpc_url.clone()) };
    tracing::info!(backend = ?global.backend, rpc_url = %global.rpc_url, "connecting");
    Ok(WalletManager::new(backend, chain).await?)
}

fn key_ref(text: &str) -> Result<KeyRef, CliError> {
    Ok(KeyRef::new(text)?)
}

fn parse_tags(tags: &[String]) -> Result<Vec<Tag>, CliError> {
    tags.iter().map(|tag| tag.parse::<Tag>().map_err(CliError::from)).collect()
}

fn decode_hex(what: &str, text: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(text.trim()).map_err(|error| CliError::usage(format!("{what} `{text}` is not hexadecimal: {error}")))
}

fn read_input(path: &std::path::Path) -> Result<String, CliError> {
    let mut text = String::new();
    let result = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|read| text = read)
    };
    result.map_err(|error| CliError::usage(format!("cannot read {}: {error}", path.display())))?;
    Ok(text)
}

fn value(text: &str) -> Result<U256, CliError> {
    parse_value(text).map_err(CliError::usage)
}

fn address(text: &str) -> Result<Address, CliError> {
    parse_address(text).map_err(CliError::usage)
}

fn progress(length: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(length).with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn wallet_json(address: Address, key_id: &str, arn: &str, alias: Option<&str>) -> Value {
    json!({ "address": address.to_string(), "key_id": key_id, "arn": arn, "alias": alias })
}

async fn create(output: Output, manager: &WalletManager, args: &CreateArgs) -> Result<(), CliError> {
    let tags = parse_tags(&args.tags)?;
    let description = args.description.clone().unwrap_or_else(|| "ethkms wallet".into());
    if args.count == 0 {
        return Err(CliError::usage("--count must be at least 1"));
    }
    let base = CreateKeyRequest { description: Some(description), tags, ..CreateKeyRequest::default() };
    if args.count == 1 && args.batch.is_none() {
        let request = match &args.alias {
            Some(alias) => base.alias(alias.clone()),
            None => base,
        };
        let wallet = manager.create_wallet(request).await?;
        let value = wallet_json(wallet.address, &wallet.key_id, &wallet.arn, wallet.alias.as_deref());
        output
            .emit(&value, || format!("{}  {}{}", wallet.address, wallet.key_id, alias_suffix(wallet.alias.as_deref())));
        return Ok(());
    }

    // Bulk: every key carries the batch name and its index, so a rerun with the same batch finds
    // what exists and creates only the rest.
    let batch = args.batch.clone().unwrap_or_else(|| format!("batch-{}", std::process::id()));
    eprintln!(
        "batch `{batch}`: if interrupted, run the same command with --batch {batch} to create only what is missing"
    );
    let existing = manager.backend().list_keys(&KeyFilter::all().tag("ethkms:batch", batch.clone())).await?;
    let mut done: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for key in existing {
        let index = key.tags.iter().find(|tag| tag.key == "ethkms:index").and_then(|tag| tag.value.parse().ok());
        if let Some(index) = index {
            done.insert(index, (key.key_id, key.arn));
        }
    }
    let bar = progress(u64::from(args.count), "creating wallets");
    for index in 0..args.count {
        let (address, key_id, arn, alias, resumed) = if let Some((key_id, arn)) = done.remove(&index) {
            let address = manager.address(&key_ref(&key_id)?).await?;
            (address, key_id, arn, None, true)
        } else {
            let mut request = base.clone().tag("ethkms:batch", batch.clone()).tag("ethkms:index", index.to_string());
            if let Some(alias) = &args.alias {
                request = request.alias(format!("{alias}-{index}"));
            }
            let wallet = manager.create_wallet(request).await?;
            (wallet.address, wallet.key_id, wallet.arn, wallet.alias, false)
        };
        let mut value = wallet_json(address, &key_id, &arn, alias.as_deref());
        value["batch"] = json!(batch);
        value["index"] = json!(index);
        value["resumed"] = json!(resumed);
        bar.suspend(|| {
            output.emit(&value, || {
                let note = if resumed { "  (already existed)" } else { "" };
                format!("{address}  {key_id}{}{note}", alias_suffix(alias.as_deref()))
            });
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn alias_suffix(alias: Option<&str>) -> String {
    alias.map(|alias| format!("  {alias}")).unwrap_or_default()
}

async fn list(output: Output, manager: &WalletManager, args: &ListArgs) -> Result<(), CliError> {
    let filter = KeyFilter { tags: parse_tags(&args.tags)? };
    for key in manager.backend().list_keys(&filter).await? {
        let address = if key.key_spec == KeySpec::EccSecgP256k1 && key.state == KeyState::Enabled {
            Some(manager.address(&key_ref(&key.key_id)?).await?)
        } else {
            None
        };
        let tags: BTreeMap<&str, &str> = key.tags.iter().map(|tag| (tag.key.as_str(), tag.value.as_str())).collect();
        let value = json!({
            "key_id": key.key_id, "arn": key.arn, "state": key.state.as_str(), "key_spec": key.key_spec.as_str(),
            "aliases": key.aliases, "tags": tags, "address": address.map(|address| address.to_string()),
        });
        output.emit(&value, || {
            let address = address.map_or_else(|| "-".repeat(42), |address| address.to_string());
            format!("{address}  {}  {}  {}", key.key_id, key.state, key.aliases.join(","))
        });
    }
    Ok(())
}

async fn rotate(output: Output, manager: &WalletManager, args: &RotateArgs) -> Result<(), CliError> {
    let alias = if args.alias.starts_with("alias/") { args.alias.clone() } else { format!("alias/{}", args.alias) };
    let old = manager.backend().describe_key(&key_ref(&alias)?).await?;
    let old_key = key_ref(&old.key_id)?;
    let old_address = manager.address(&old_key).await?;
    let request = CreateKeyRequest::new().description(format!("ethkms wallet; rotated from {} ({alias})", old.key_id));
    let new = manager.create_wallet(request).await?;
    manager.backend().set_alias(&alias, &key_ref(&new.key_id)?).await.map_err(|error| {
        CliError::new(
            Exit::Failure,
            format!("created key {} ({}) but moving {alias} to it failed: {error}", new.key_id, new.address),
        )
    })?;
    let sweep = if args.sweep { sweep(manager, &old_key, old_address, new.address).await? } else { Value::Null };
    let value = json!({
        "alias": alias, "old_key_id": old.key_id, "old_address": old_address.to_string(),
        "new_key_id": new.key_id, "new_address": new.address.to_string(), "sweep": sweep,
    });
    output.emit(&value, || {
        let mut text = format!("{alias}: {old_address} ({}) -> {} ({})", old.key_id, new.address, new.key_id);
        if let Some(hash) = sweep["hash"].as_str() {
            text.push_str(&format!("\nswept {} wei in {hash}", sweep["value"].as_str().unwrap_or("?")));
        }
        text
    });
    Ok(())
}

/// Sends the old key's ether, less the most the transfer can cost, to the new address.
async fn sweep(manager: &WalletManager, old: &KeyRef, from: Address, to: Address) -> Result<Value, CliError> {
    let balance = chain::balance(manager.provider(), from).await?.wei;
    let fees = chain::fees(manager.provider()).await?;
    let price = match fees {
        chain::Fees::Eip1559 { max_fee_per_gas, .. } => max_fee_per_gas,
        chain::Fees::Legacy { gas_price } => gas_price,
    };
    let cost = U256::from(price) * U256::from(21_000u64);
    if balance <= cost {
        return Ok(json!({ "hash": null, "value": "0", "note": "balance does not cover the fee; nothing swept" }));
    }
    let request =
        fees.apply(TransactionRequest::default().with_to(to).with_value(balance - cost).with_gas_limit(21_000));
    let receipt = manager.send_request(old, request).await?;
    Ok(json!({ "hash": receipt.transaction_hash, "value": (balance - cost).to_string() }))
}

async fn balance(output: Output, manager: &WalletManager, args: &BalanceArgs) -> Result<(), CliError> {
    let owner = if args.target.starts_with("0x") && args.target.len() == 42 {
        address(&args.target)?
    } else {
        manager.address(&key_ref(&args.target)?).await?
    };
    match &args.token {
        None => {
            let balance = chain::balance(manager.provider(), owner).await?;
            let value =
                json!({ "address": owner.to_string(), "wei": balance.wei.to_string(), "ether": balance.ether() });
            output.emit(&value, || format!("{} ETH", balance.ether()));
        }
        Some(token) => {
            let token = address(token)?;
            let amount = chain::token_balance(manager.provider(), token, owner).await?;
            let decimals = chain::token_decimals(manager.provider(), token).await?;
            let formatted = format_units(amount, decimals).unwrap_or_else(|_| amount.to_string());
            let value = json!({
                "address": owner.to_string(), "token": token.to_string(), "balance": amount.to_string(),
                "decimals": decimals, "formatted": formatted,
            });
            output.emit(&value, || formatted.clone());
        }
    }
    Ok(())
}

fn base_request(args: &TransactionArgs) -> Result<TransactionRequest, CliError> {
    let mut request = TransactionRequest::default().with_to(address(&args.to)?).with_value(value(&args.value)?);
    if let Some(data) = &args.data {
        request = request.with_input(Bytes::from(decode_hex("--data", data)?));
    }
    Ok(request)
}

async fn sign_tx(output: Output, manager: &WalletManager, args: &SignTxArgs) -> Result<(), CliError> {
    let key = key_ref(&args.key)?;
    let mut request = base_request(&args.transaction)?;
    if let Some(nonce) = args.nonce {
        request.set_nonce(nonce);
    }
    if let Some(gas) = args.gas {
        request.set_gas_limit(gas);
    }
    let fee = |text: &Option<String>| -> Result<Option<u128>, CliError> {
        text.as_deref()
            .map(|text| {
                value(text).and_then(|fee| {
                    u128::try_from(fee).map_err(|_| CliError::usage(format!("fee `{text}` is too large")))
                })
            })
            .transpose()
    };
    match args.kind {
        TxType::Legacy | TxType::Eip2930 => {
            if args.max_fee.is_some() || args.priority_fee.is_some() {
                return Err(CliError::usage(
                    "legacy and 2930 transactions take --gas-price, not --max-fee/--priority-fee",
                ));
            }
            let gas_price = match fee(&args.gas_price)? {
                Some(price) => price,
                None => manager.provider().get_gas_price().await.map_err(ethkms::eth::SignerError::from)?,
            };
            request.set_gas_price(gas_price);
            request.transaction_type = Some(if args.kind == TxType::Legacy { 0 } else { 1 });
            if args.kind == TxType::Eip2930 {
                request.set_access_list(Default::default());
            }
        }
        TxType::Eip1559 | TxType::Eip7702 => {
            if args.gas_price.is_some() {
                return Err(CliError::usage(
                    "1559 and 7702 transactions take --max-fee/--priority-fee, not --gas-price",
                ));
            }
            if let Some(max_fee) = fee(&args.max_fee)? {
                request.set_max_fee_per_gas(max_fee);
                request.set_max_priority_fee_per_gas(fee(&args.priority_fee)?.unwrap_or(0).min(max_fee));
            }
        }
    }
    if args.kind == TxType::Eip7702 {
        let delegate =
            address(args.delegate.as_deref().ok_or_else(|| CliError::usage("--type 7702 needs --delegate ADDRESS"))?)?;
        let signer = manager.signer(&key).await?;
        let from = alloy_signer::Signer::address(&signer);
        let nonce = match request.nonce {
            Some(nonce) => nonce,
            None => chain::nonce(manager.provider(), from).await?,
        };
        request.set_nonce(nonce);
        // The sender is also the authority: its nonce is used by the transaction first.
        let chain_id = U256::from(manager.chain_id().await?);
        let authorization =
            signer.sign_authorization(Authorization { chain_id, address: delegate, nonce: nonce + 1 }).await?;
        request.set_authorization_list(vec![authorization]);
    } else if args.delegate.is_some() {
        return Err(CliError::usage("--delegate is only for --type 7702"));
    }
    let raw = manager.sign_transaction(&key, request).await?;
    let from = manager.address(&key).await?;
    let value = json!({ "from": from.to_string(), "hash": keccak256(&raw), "raw": raw });
    output.emit(&value, || raw.to_string());
    Ok(())
}

async fn send(output: Output, manager: &WalletManager, args: &SendArgs) -> Result<(), CliError> {
    let key = key_ref(&args.key)?;
    let to = address(&args.transaction.to)?;
    let request = match &args.token {
        None => base_request(&args.transaction)?,
        Some(token) => {
            if args.transaction.data.is_some() {
                return Err(CliError::usage("--data cannot be combined with --token"));
            }
            let token = address(token)?;
            let decimals = chain::token_decimals(manager.provider(), token).await?;
            let amount: U256 = parse_units(&args.transaction.value, decimals)
                .map_err(|error| CliError::usage(format!("token amount `{}`: {error}", args.transaction.value)))?
                .into();
            chain::token_transfer_request(token, to, amount)
        }
    };
    let raw = manager.sign_transaction(&key, request).await?;
    let pending = manager.provider().send_raw_transaction(&raw).await.map_err(ethkms::eth::SignerError::from)?;
    let hash = *pending.tx_hash();
    if !output.json {
        println!("{hash}");
    }
    let bar = spinner(format!("waiting for {hash} to be mined"));
    let receipt = chain::wait_for_receipt(pending, RECEIPT_TIMEOUT).await;
    bar.finish_and_clear();
    let receipt = receipt?;
    let value = json!({
        "hash": hash, "from": receipt.from.to_string(), "to": to.to_string(), "token": args.token, "block": receipt.block_number,
        "status": receipt.status(), "gas_used": receipt.gas_used,
    });
    output.emit(&value, || format!("mined in block {}", receipt.block_number.unwrap_or_default()));
    Ok(())
}

fn verify(output: Output, args: &VerifyArgs) -> Result<(), CliError> {
    let expected = address(&args.address)?;
    let message = if args.hex { decode_hex("message", &args.message)? } else { args.message.clone().into_bytes() };
    let bytes = decode_hex("signature", &args.signature)?;
    let signature = ethkms::core::Signature::from_bytes(&bytes)
        .map_err(|error| CliError::usage(format!("signature `{}`: {error}", args.signature)))?;
    let digest = ethkms::core::eip191_hash_message(&message);
    let recovered = signature
        .recover_address(&digest)
        .map_err(|error| CliError::new(Exit::InvalidSignature, format!("no signer can be recovered: {error}")))?;
    let recovered = Address::from(recovered.0);
    let valid = recovered == expected;
    output.emit(
        &json!({ "valid": valid, "address": expected.to_string(), "recovered": recovered.to_string() }),
        || {
            if valid {
                format!("valid: signed by {expected}")
            } else {
                format!("invalid: signed by {recovered}, not {expected}")
            }
        },
    );
    if valid {
        Ok(())
    } else {
        Err(CliError::new(Exit::InvalidSignature, format!("the signature is by {recovered}, not {expected}")))
    }
}

fn policy_iam(args: &IamArgs) -> Result<(), CliError> {
    let tag = args
        .principal_tag
        .as_deref()
        .map(|tag| {
            tag.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| CliError::usage(format!("--principal-tag `{tag}`: expected KEY=VALUE")))
        })
        .transpose()?;
    let document = policy::policy(&args.key_arn, args.role, tag).map_err(CliError::usage)?;
    println!("{}", serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string()));
    Ok(())
}

/// `ethkms serve`: the signing service lives in the `ethkms-server` crate, which depends on this one,
/// so this runs its binary (as `cargo foo` runs `cargo-foo`), replacing this process on Unix so that
/// signals reach the server directly.
fn serve(global: &Global, args: &ServeArgs) -> Result<(), CliError> {
    const SERVER: &str = "ethkms-server";
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(SERVER)));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|directory| directory.join(SERVER)).find(|path| path.is_file())
    });
    let Some(binary) = beside.filter(|path| path.is_file()).or(on_path) else {
        return Err(CliError::new(
            Exit::Failure,
            format!(
                "`ethkms serve` runs the `{SERVER}` binary, which is neither next to ethkms nor on PATH; install it \
                 with `cargo install {SERVER}`"
            ),
        ));
    };
    let mut command = std::process::Command::new(&binary);
    command.arg("--config").arg(&args.config);
    if let Some(endpoint) = &global.kms_endpoint {
        command.env("AWS_ENDPOINT_URL_KMS", endpoint);
    }
    if let Some(region) = &global.aws_region {
        command.env("AWS_REGION", region);
    }
    if let Some(profile) = &global.aws_profile {
        command.env("AWS_PROFILE", profile);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let error = command.exec();
        Err(CliError::new(Exit::Failure, format!("running {}: {error}", binary.display())))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .map_err(|error| CliError::new(Exit::Failure, format!("running {}: {error}", binary.display())))?;
        if status.success() {
            Ok(())
        } else {
            Err(CliError::new(Exit::Failure, format!("{SERVER} exited with {status}")))
        }
    }
}

fn audit_verify(output: Output, args: &AuditVerifyArgs) -> Result<(), CliError> {
    match ethkms::audit::verify(&args.file) {
        Ok(verified) => {
            output.emit(&json!({ "valid": true, "records": verified.records, "head": verified.head }), || {
                format!("valid: {} records, head {}", verified.records, verified.head)
            });
            Ok(())
        }
        Err(ethkms::audit::AuditError::Broken { line, seq, reason, .. }) => {
            output.emit(&json!({ "valid": false, "line": line, "seq": seq, "reason": reason }), || {
                format!("broken at line {line} (record {seq}): {reason}")
            });
            Err(CliError::new(
                Exit::InvalidSignature,
                format!("{} is broken at line {line}: {reason}", args.file.display()),
            ))
        }
        Err(error) => Err(CliError::usage(error.to_string())),
    }
}
