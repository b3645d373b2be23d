//! `ethkms send`: sign and send ether or an ERC-20 token, and wait for the receipt.

use std::time::Duration;

use alloy_network::TransactionBuilder;
use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::eth::chain;
use indicatif::ProgressBar;
use serde_json::json;

use super::{Output, address, connect, decode_hex, key_ref, value};
use crate::cli::{Global, SendArgs, TransactionArgs};
use crate::exit::CliError;

const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `--to`, `--value` and `--data` as a transaction request.
pub(super) fn base_request(args: &TransactionArgs) -> Result<TransactionRequest, CliError> {
    let mut request = TransactionRequest::default().with_to(address(&args.to)?).with_value(value(&args.value)?);
    if let Some(data) = &args.data {
        request = request.with_input(Bytes::from(decode_hex("--data", data)?));
    }
    Ok(request)
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// What is sent: ether (the request is complete) or a token (its amount is scaled by the token's
/// decimals, which only the node knows).
enum Payment {
    Ether(Box<TransactionRequest>),
    Token { token: Address, to: Address },
}

pub(super) async fn send(global: &Global, output: Output, args: &SendArgs) -> Result<(), CliError> {
    let key = key_ref(&args.key)?;
    let to = address(&args.transaction.to)?;
    let payment = match &args.token {
        None => Payment::Ether(Box::new(base_request(&args.transaction)?)),
        Some(token) => {
            if args.transaction.data.is_some() {
                return Err(CliError::usage("--data cannot be combined with --token"));
            }
            Payment::Token { token: address(token)?, to }
        }
    };
    let manager = connect(global).await?;
    let request = match payment {
        Payment::Ether(request) => *request,
        Payment::Token { token, to } => {
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
