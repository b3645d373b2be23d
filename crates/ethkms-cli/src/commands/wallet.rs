//! `ethkms wallet create|list|address|rotate` and `ethkms balance`.

use std::collections::BTreeMap;

use alloy_network::TransactionBuilder;
use alloy_primitives::utils::format_units;
use alloy_primitives::{Address, U256};
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::WalletManager;
use ethkms::backend::{CreateKeyRequest, KeyFilter, KeyRef, KeySpec, KeyState, validate_alias};
use ethkms::eth::chain;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::{Output, address, connect, key_ref, parse_tags};
use crate::cli::{BalanceArgs, CreateArgs, Global, RotateArgs, WalletCommand};
use crate::exit::{CliError, Exit};

pub(super) async fn run(global: &Global, output: Output, command: WalletCommand) -> Result<(), CliError> {
    match command {
        WalletCommand::Create(args) => {
            let base = create_request(&args)?;
            create(output, &connect(global).await?, &args, base).await
        }
        WalletCommand::List(args) => {
            let filter = KeyFilter { tags: parse_tags(&args.tags)? };
            list(output, &connect(global).await?, &filter).await
        }
        WalletCommand::Address(args) => {
            let key = key_ref(&args.key)?;
            let address = connect(global).await?.address(&key).await?;
            output.emit(&json!({ "key": key.as_str(), "address": address.to_string() }), || address.to_string());
            Ok(())
        }
        WalletCommand::Rotate(args) => {
            let alias =
                if args.alias.starts_with("alias/") { args.alias.clone() } else { format!("alias/{}", args.alias) };
            validate_alias(&alias)?;
            let alias_key = key_ref(&alias)?;
            rotate(output, &connect(global).await?, &args, &alias, &alias_key).await
        }
    }
}

/// The request every wallet of `ethkms wallet create` starts from, once its arguments are checked.
fn create_request(args: &CreateArgs) -> Result<CreateKeyRequest, CliError> {
    let tags = parse_tags(&args.tags)?;
    if args.count == 0 {
        return Err(CliError::usage("--count must be at least 1"));
    }
    if let Some(alias) = &args.alias {
        let alias = if alias.starts_with("alias/") { alias.clone() } else { format!("alias/{alias}") };
        // With --count, the aliases are NAME-0, NAME-1, …
        validate_alias(&if args.count == 1 && args.batch.is_none() { alias } else { format!("{alias}-0") })?;
    }
    let description = args.description.clone().unwrap_or_else(|| "ethkms wallet".into());
    Ok(CreateKeyRequest { description: Some(description), tags, ..CreateKeyRequest::default() })
}

fn progress(length: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(length).with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn wallet_json(address: Address, key_id: &str, arn: &str, alias: Option<&str>) -> Value {
    json!({ "address": address.to_string(), "key_id": key_id, "arn": arn, "alias": alias })
}

async fn create(
    output: Output,
    manager: &WalletManager,
    args: &CreateArgs,
    base: CreateKeyRequest,
) -> Result<(), CliError> {
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

async fn list(output: Output, manager: &WalletManager, filter: &KeyFilter) -> Result<(), CliError> {
    for key in manager.backend().list_keys(filter).await? {
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

async fn rotate(
    output: Output,
    manager: &WalletManager,
    args: &RotateArgs,
    alias: &str,
    alias_key: &KeyRef,
) -> Result<(), CliError> {
    let old = manager.backend().describe_key(alias_key).await?;
    let old_key = key_ref(&old.key_id)?;
    let old_address = manager.address(&old_key).await?;
    let request = CreateKeyRequest::new().description(format!("ethkms wallet; rotated from {} ({alias})", old.key_id));
    let new = manager.create_wallet(request).await?;
    manager.backend().set_alias(alias, &key_ref(&new.key_id)?).await.map_err(|error| {
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

/// Whose balance `ethkms balance` shows.
enum Owner {
    Address(Address),
    Key(KeyRef),
}

pub(super) async fn balance(global: &Global, output: Output, args: &BalanceArgs) -> Result<(), CliError> {
    let owner = if args.target.starts_with("0x") && args.target.len() == 42 {
        Owner::Address(address(&args.target)?)
    } else {
        Owner::Key(key_ref(&args.target)?)
    };
    let token = args.token.as_deref().map(address).transpose()?;
    let manager = connect(global).await?;
    let owner = match owner {
        Owner::Address(address) => address,
        Owner::Key(key) => manager.address(&key).await?,
    };
    match token {
        None => {
            let balance = chain::balance(manager.provider(), owner).await?;
            let value =
                json!({ "address": owner.to_string(), "wei": balance.wei.to_string(), "ether": balance.ether() });
            output.emit(&value, || format!("{} ETH", balance.ether()));
        }
        Some(token) => {
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
