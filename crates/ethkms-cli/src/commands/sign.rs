//! `ethkms sign message|typed-data|tx`.

use alloy_eips::eip7702::Authorization;
use alloy_network::{TransactionBuilder, TransactionBuilder7702};
use alloy_primitives::{Address, U256, keccak256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::TransactionRequest;
use ethkms::WalletManager;
use ethkms::backend::KeyRef;
use ethkms::eth::chain;
use serde_json::json;

use super::send::base_request;
use super::{Output, address, connect, decode_hex, key_ref, read_input, value};
use crate::cli::{Global, SignCommand, SignTxArgs, TxType};
use crate::exit::CliError;

pub(super) async fn run(global: &Global, output: Output, command: SignCommand) -> Result<(), CliError> {
    match command {
        SignCommand::Message(args) => {
            let key = key_ref(&args.key)?;
            let message = if args.hex { decode_hex("message", &args.message)? } else { args.message.into_bytes() };
            let manager = connect(global).await?;
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
            let manager = connect(global).await?;
            let signature = manager.sign_typed_data(&key, &text).await?;
            let address = manager.address(&key).await?;
            output.emit(
                &json!({ "address": address.to_string(), "hash": hash, "signature": signature.to_string() }),
                || signature.to_string(),
            );
            Ok(())
        }
        SignCommand::Tx(args) => {
            let (key, request, delegate) = transaction(&args)?;
            sign_tx(output, &connect(global).await?, &args, &key, request, delegate).await
        }
    }
}

/// The key, the transaction as far as the arguments give it, and the 7702 delegate: everything
/// `ethkms sign tx` can check before it connects.
fn transaction(args: &SignTxArgs) -> Result<(KeyRef, TransactionRequest, Option<Address>), CliError> {
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
            if let Some(price) = fee(&args.gas_price)? {
                request.set_gas_price(price);
            }
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
    let delegate = match (args.kind, args.delegate.as_deref()) {
        (TxType::Eip7702, Some(delegate)) => Some(address(delegate)?),
        (TxType::Eip7702, None) => return Err(CliError::usage("--type 7702 needs --delegate ADDRESS")),
        (_, Some(_)) => return Err(CliError::usage("--delegate is only for --type 7702")),
        (_, None) => None,
    };
    Ok((key, request, delegate))
}

async fn sign_tx(
    output: Output,
    manager: &WalletManager,
    args: &SignTxArgs,
    key: &KeyRef,
    mut request: TransactionRequest,
    delegate: Option<Address>,
) -> Result<(), CliError> {
    if matches!(args.kind, TxType::Legacy | TxType::Eip2930) && request.gas_price.is_none() {
        let gas_price = manager.provider().get_gas_price().await.map_err(ethkms::eth::SignerError::from)?;
        request.set_gas_price(gas_price);
    }
    if let Some(delegate) = delegate {
        let signer = manager.signer(key).await?;
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
    }
    let raw = manager.sign_transaction(key, request).await?;
    let from = manager.address(key).await?;
    let value = json!({ "from": from.to_string(), "hash": keccak256(&raw), "raw": raw });
    output.emit(&value, || raw.to_string());
    Ok(())
}
