//! `ethkms deposits`: customer deposit addresses (see `ethkms-deposits`) — deploying a factory, deriving
//! addresses, finding deposits in a range of blocks, and sweeping what is worth it to the treasury.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::ops::Range;

use alloy_network::TransactionBuilder as _;
use alloy_primitives::Address;
use alloy_provider::Provider as _;
use alloy_rpc_types_eth::{BlockId, TransactionRequest};
use alloy_sol_types::SolCall as _;
use ethkms_deposits::contracts::{self, DepositFactory};
use ethkms_deposits::{
    Asset, DepositAddresses, HoldingError, Reference, SweepBatch, SweepCosts, read_holding, scan_block,
};
use futures_util::StreamExt as _;
use serde_json::json;

use super::{Output, address, connect, key_ref};
use crate::cli::{
    DepositAddressArgs, DepositScanArgs, DepositSweepArgs, DepositTargetArgs, DepositsCommand, Global, KeyArgs,
};
use crate::exit::{CliError, Exit};

/// Ranges longer than this get a progress bar.
const PROGRESS_FROM: u64 = 100_000;

/// How many addresses' balances are read at once.
const READS_AT_ONCE: usize = 16;

pub(super) async fn run(global: &Global, output: Output, command: DepositsCommand) -> Result<(), CliError> {
    match command {
        DepositsCommand::DeployFactory(args) => deploy_factory(global, output, &args).await,
        DepositsCommand::Address(args) => addresses(output, &args),
        DepositsCommand::Scan(args) => scan(global, output, &args).await,
        DepositsCommand::Sweep(args) => sweep(global, output, &args).await,
    }
}

/// The deposit addresses named: references, or the indices of a range.
struct Targets {
    addresses: DepositAddresses,
    references: Vec<Reference>,
    range: Option<Range<u64>>,
}

impl Targets {
    fn parse(args: &DepositTargetArgs) -> Result<Self, CliError> {
        let addresses = DepositAddresses::new(address(&args.factory)?, address(&args.parent)?);
        let references = args
            .references
            .iter()
            .map(|text| Reference::new(text).map_err(|error| CliError::usage(format!("reference {text:?}: {error}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let range = args.range.as_deref().map(parse_range).transpose()?;
        if references.is_empty() && range.is_none() {
            return Err(CliError::usage("name customer references, or a range of indices with --range START..END"));
        }
        Ok(Self { addresses, references, range })
    }

    fn len(&self) -> u64 {
        self.range.as_ref().map_or(self.references.len() as u64, |range| range.end - range.start)
    }

    /// Each reference (as text) and its address, in order.
    fn each(&self) -> Box<dyn Iterator<Item = (String, Address)> + '_> {
        match &self.range {
            Some(range) => {
                Box::new(range.clone().map(|index| (index.to_string(), self.addresses.address_of_index(index))))
            }
            None => Box::new(
                self.references.iter().map(|reference| (reference.to_string(), self.addresses.address(reference))),
            ),
        }
    }

    /// The salt of reference `text` (one of [`Self::each`]'s).
    fn salt(text: &str) -> Result<alloy_primitives::B256, CliError> {
        Reference::new(text).map(|reference| reference.salt()).map_err(|error| CliError::usage(error.to_string()))
    }
}

/// `START..END` with START < END.
fn parse_range(text: &str) -> Result<Range<u64>, CliError> {
    let bad = || CliError::usage(format!("--range {text}: expected START..END, whole numbers, START below END"));
    let (start, end) = text.split_once("..").ok_or_else(bad)?;
    let (start, end): (u64, u64) = (start.trim().parse().map_err(|_| bad())?, end.trim().parse().map_err(|_| bad())?);
    if start >= end {
        return Err(bad());
    }
    Ok(start..end)
}

fn progress(length: u64, message: &'static str) -> Option<indicatif::ProgressBar> {
    (length >= PROGRESS_FROM).then(|| {
        let bar = indicatif::ProgressBar::new(length).with_message(message);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    })
}

async fn deploy_factory(global: &Global, output: Output, args: &KeyArgs) -> Result<(), CliError> {
    let key = key_ref(&args.key)?;
    let manager = connect(global).await?;
    let owner = manager.address(&key).await?;
    let request = TransactionRequest::default().with_deploy_code(contracts::factory_creation_code(owner));
    let receipt = manager.send_request(&key, request).await?;
    let factory =
        receipt.contract_address.ok_or_else(|| CliError::new(Exit::Transaction, "no contract was created"))?;
    let value = json!({
        "factory": factory.to_string(), "owner": owner.to_string(), "tx_hash": receipt.transaction_hash,
        "block": receipt.block_number, "gas_used": receipt.gas_used,
    });
    output.emit(&value, || format!("{factory}  (owner {owner}, transaction {})", receipt.transaction_hash));
    Ok(())
}

fn addresses(output: Output, args: &DepositAddressArgs) -> Result<(), CliError> {
    let targets = Targets::parse(&args.target)?;
    let bar = progress(targets.len(), "deriving");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (done, (reference, address)) in targets.each().enumerate() {
        let line = if output.json {
            json!({ "reference": reference, "address": address.to_string() }).to_string()
        } else {
            format!("{address}  {reference}")
        };
        writeln!(out, "{line}")
            .map_err(|error| CliError::new(Exit::Failure, format!("writing the output: {error}")))?;
        if let Some(bar) = &bar
            && done % 4096 == 0
        {
            bar.set_position(done as u64);
        }
    }
    out.flush().map_err(|error| CliError::new(Exit::Failure, format!("writing the output: {error}")))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

fn tokens(texts: &[String]) -> Result<Vec<Address>, CliError> {
    let mut tokens = Vec::new();
    for text in texts {
        let token = address(text)?;
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    Ok(tokens)
}

fn asset_name(asset: Asset) -> String {
    match asset {
        Asset::Ether => "ETH".to_owned(),
        Asset::Token(token) => token.to_string(),
    }
}

async fn scan(global: &Global, output: Output, args: &DepositScanArgs) -> Result<(), CliError> {
    let targets = Targets::parse(&args.target)?;
    let tokens = tokens(&args.tokens)?;
    let by_address: HashMap<Address, String> =
        targets.each().map(|(reference, address)| (address, reference)).collect();
    let watched: HashSet<Address> = by_address.keys().copied().collect();
    let manager = connect(global).await?;
    let provider = manager.provider();
    let last = match args.to_block {
        Some(block) => block,
        None => provider.get_block_number().await.map_err(ethkms::eth::SignerError::from)?,
    };
    if args.from_block > last {
        return Err(CliError::usage(format!("--from-block {} is after the last block, {last}", args.from_block)));
    }
    let bar = progress(last - args.from_block + 1, "scanning blocks");
    let mut found = 0_u64;
    for number in args.from_block..=last {
        let block = scan_block(provider, number, &watched, &tokens)
            .await
            .map_err(|error| CliError::new(Exit::Network, error.to_string()))?;
        for deposit in block.deposits {
            found += 1;
            let reference = by_address.get(&deposit.to).cloned().unwrap_or_default();
            let value = json!({
                "block": deposit.block_number, "block_hash": deposit.block_hash, "tx_hash": deposit.id.tx_hash,
                "log_index": deposit.id.log_index, "reference": reference, "address": deposit.to.to_string(),
                "from": deposit.from.to_string(), "asset": asset_name(deposit.asset), "amount": deposit.amount.to_string(),
            });
            output.emit(&value, || {
                format!(
                    "block {}  {}  {} {}  from {}  tx {}",
                    deposit.block_number,
                    reference,
                    deposit.amount,
                    asset_name(deposit.asset),
                    deposit.from,
                    deposit.id.tx_hash
                )
            });
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !output.json {
        eprintln!("{found} deposits in blocks {}..={last}", args.from_block);
    }
    Ok(())
}

async fn sweep(global: &Global, output: Output, args: &DepositSweepArgs) -> Result<(), CliError> {
    let key = key_ref(&args.key)?;
    let targets = Targets::parse(&args.target)?;
    let tokens = tokens(&args.tokens)?;
    let manager = connect(global).await?;
    let provider = manager.provider();
    let rpc = |error| CliError::from(ethkms::eth::SignerError::from(error));
    let (factory, parent) = (targets.addresses.factory(), targets.addresses.parent());
    let sweeper = manager.address(&key).await?;
    let owner_call =
        TransactionRequest::default().with_to(factory).with_input(DepositFactory::ownerCall {}.abi_encode());
    let owner = DepositFactory::ownerCall::abi_decode_returns(&provider.call(owner_call).await.map_err(rpc)?)
        .map_err(|_| CliError::usage(format!("--factory {factory} is not a deposit factory (no owner)")))?;
    if sweeper != owner && sweeper != parent {
        return Err(CliError::usage(format!(
            "{} ({sweeper}) is neither the factory's owner ({owner}) nor the treasury: the factory would refuse its sweep",
            args.key
        )));
    }
    let gas_price = provider.get_gas_price().await.map_err(rpc)?;
    let costs = SweepCosts::default();
    let bar = progress(targets.len(), "reading balances");
    let read = |(reference, address): (String, Address)| {
        let tokens = &tokens;
        async move {
            let salt = Targets::salt(&reference)?;
            let holding =
                read_holding(provider, address, salt, tokens, BlockId::latest()).await.map_err(
                    |error| match error {
                        HoldingError::NotAToken(_) => CliError::usage(format!("--token {error}")),
                        HoldingError::Node { .. } => CliError::new(Exit::Network, error.to_string()),
                    },
                )?;
            Ok::<_, CliError>((reference, holding))
        }
    };
    let mut reads = futures_util::stream::iter(targets.each()).map(read).buffered(READS_AT_ONCE);
    let mut chosen = Vec::new();
    while let Some(read) = reads.next().await {
        let (reference, holding) = read?;
        if let Some(bar) = &bar {
            bar.inc(1);
        }
        if costs.worth_sweeping(&holding, gas_price, args.margin_percent) {
            chosen.push((reference, holding));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut swept = 0;
    for batch in chosen.chunks(usize::from(args.batch)) {
        let mut sweep = SweepBatch::new(parent);
        for (_, holding) in batch {
            sweep.add_holding(holding).map_err(|error| CliError::usage(error.to_string()))?;
        }
        let listed: Vec<serde_json::Value> = batch
            .iter()
            .map(|(reference, holding)| {
                json!({
                    "reference": reference, "address": holding.address.to_string(), "deploy": !holding.deployed,
                    "ether": holding.ether.to_string(),
                    "tokens": holding.tokens.iter().map(|(token, amount)| json!({ "token": token.to_string(), "amount": amount.to_string() })).collect::<Vec<_>>(),
                })
            })
            .collect();
        if args.dry_run {
            output.emit(&json!({ "dry_run": true, "addresses": listed }), || {
                format!("would sweep {} addresses", batch.len())
            });
            continue;
        }
        let request = TransactionRequest::default().with_to(factory).with_input(sweep.calldata());
        let receipt = manager.send_request(&key, request).await?;
        swept += batch.len();
        let value = json!({
            "tx_hash": receipt.transaction_hash, "block": receipt.block_number, "gas_used": receipt.gas_used,
            "addresses": listed,
        });
        output.emit(&value, || {
            format!("swept {} addresses in {} ({} gas)", batch.len(), receipt.transaction_hash, receipt.gas_used)
        });
    }
    if !output.json {
        eprintln!("{swept} of {} addresses swept to {parent} ({} worth sweeping)", targets.len(), chosen.len());
    }
    Ok(())
}
