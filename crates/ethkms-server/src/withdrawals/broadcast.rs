//! Broadcasting a stored transaction and reading the node's answer ([`rejections`](super::rejections)),
//! and re-signing a stored transaction: with other fees (a bump), or as a cancellation (a zero-value
//! transfer to the key itself with the same nonce).

use alloy_consensus::{EthereumTypedTransaction, TxEip1559, TxEnvelope, TxLegacy, TypedTransaction};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use alloy_provider::Provider;
use ethkms::eth::chain::Fees;

use super::rejections::{BroadcastOutcome, classify};

/// Sends `raw` to the node. An answer that is not a JSON-RPC error response (a dropped connection, a 502)
/// is [`BroadcastOutcome::Ambiguous`]: the node may have it.
pub(crate) async fn send<P: Provider>(provider: &P, raw: &Bytes) -> BroadcastOutcome {
    match provider.send_raw_transaction(raw).await {
        Ok(_) => BroadcastOutcome::Accepted,
        Err(error) => match error.as_error_resp() {
            Some(payload) => {
                let data = payload.data.as_ref().map(|data| data.get().trim_matches('"').to_owned());
                classify(payload.code, &payload.message, data.as_deref())
            }
            None => BroadcastOutcome::Ambiguous,
        },
    }
}

/// The name of an outcome in metrics.
pub(crate) const fn outcome_name(outcome: BroadcastOutcome) -> &'static str {
    match outcome {
        BroadcastOutcome::Accepted => "accepted",
        BroadcastOutcome::NonceUsed => "nonce_used",
        BroadcastOutcome::Underpriced => "underpriced",
        BroadcastOutcome::Refused(_) => "refused",
        BroadcastOutcome::Ambiguous => "ambiguous",
    }
}

/// The fees `envelope` pays.
pub(crate) fn fees_of(envelope: &TxEnvelope) -> Fees {
    use alloy_consensus::Transaction as _;
    match envelope.max_priority_fee_per_gas() {
        Some(priority) => {
            Fees::Eip1559 { max_fee_per_gas: envelope.max_fee_per_gas(), max_priority_fee_per_gas: priority }
        }
        None => Fees::Legacy { gas_price: envelope.gas_price().unwrap_or_default() },
    }
}

/// Decodes a stored transaction.
pub(crate) fn decode(raw: &Bytes) -> Result<TxEnvelope, String> {
    TxEnvelope::decode_2718(&mut raw.as_ref()).map_err(|error| format!("a stored transaction does not decode: {error}"))
}

/// `envelope`'s transaction, unsigned, with `fees` (a legacy gas price is set from the max fee when the fees
/// are EIP-1559, and the other way round).
pub(crate) fn with_fees(envelope: TxEnvelope, fees: Fees) -> Result<TypedTransaction, String> {
    let (max_fee, priority) = fees.max_and_priority();
    Ok(match envelope {
        TxEnvelope::Legacy(signed) => {
            let mut tx = signed.strip_signature();
            tx.gas_price = max_fee;
            EthereumTypedTransaction::Legacy(tx)
        }
        TxEnvelope::Eip2930(signed) => {
            let mut tx = signed.strip_signature();
            tx.gas_price = max_fee;
            EthereumTypedTransaction::Eip2930(tx)
        }
        TxEnvelope::Eip1559(signed) => {
            let mut tx = signed.strip_signature();
            tx.max_fee_per_gas = max_fee;
            tx.max_priority_fee_per_gas = priority;
            EthereumTypedTransaction::Eip1559(tx)
        }
        TxEnvelope::Eip7702(signed) => {
            let mut tx = signed.strip_signature();
            tx.max_fee_per_gas = max_fee;
            tx.max_priority_fee_per_gas = priority;
            EthereumTypedTransaction::Eip7702(tx)
        }
        TxEnvelope::Eip4844(_) => {
            return Err("a blob transaction is not re-signed by the service (its sidecar is not kept)".into());
        }
    })
}

/// A cancellation of `envelope`: a zero-value transfer from `from` to itself with the same chain and nonce,
/// 21,000 gas and `fees`.
pub(crate) fn cancellation(envelope: &TxEnvelope, from: Address, fees: Fees) -> TypedTransaction {
    use alloy_consensus::Transaction as _;
    let (chain_id, nonce) = (envelope.chain_id(), envelope.nonce());
    match fees {
        Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => EthereumTypedTransaction::Eip1559(TxEip1559 {
            chain_id: chain_id.unwrap_or_default(),
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas,
            max_priority_fee_per_gas,
            to: TxKind::Call(from),
            value: U256::ZERO,
            ..TxEip1559::default()
        }),
        Fees::Legacy { gas_price } => EthereumTypedTransaction::Legacy(TxLegacy {
            chain_id,
            nonce,
            gas_price,
            gas_limit: 21_000,
            to: TxKind::Call(from),
            value: U256::ZERO,
            ..TxLegacy::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction as _, Transaction as _};
    use alloy_eips::eip2718::Encodable2718 as _;
    use alloy_primitives::Signature;

    fn stored(tx: TxEip1559) -> Bytes {
        let envelope: TxEnvelope = tx.into_signed(Signature::test_signature()).into();
        envelope.encoded_2718().into()
    }

    #[test]
    fn a_bump_keeps_everything_but_the_fees_and_a_cancellation_only_the_chain_and_nonce() {
        let to = Address::with_last_byte(9);
        let tx = TxEip1559 {
            chain_id: 5,
            nonce: 7,
            gas_limit: 60_000,
            max_fee_per_gas: 100,
            max_priority_fee_per_gas: 10,
            to: TxKind::Call(to),
            value: U256::from(3),
            input: Bytes::from_static(&[1, 2, 3]),
            ..TxEip1559::default()
        };
        let envelope = decode(&stored(tx.clone())).unwrap();
        assert_eq!(fees_of(&envelope), Fees::Eip1559 { max_fee_per_gas: 100, max_priority_fee_per_gas: 10 });
        let fees = Fees::Eip1559 { max_fee_per_gas: 113, max_priority_fee_per_gas: 12 };
        let EthereumTypedTransaction::Eip1559(bumped) = with_fees(envelope.clone(), fees).unwrap() else { panic!() };
        assert_eq!(bumped, TxEip1559 { max_fee_per_gas: 113, max_priority_fee_per_gas: 12, ..tx });
        let me = Address::with_last_byte(1);
        let cancel = cancellation(&envelope, me, fees);
        assert_eq!((cancel.chain_id(), cancel.nonce(), cancel.gas_limit()), (Some(5), 7, 21_000));
        assert_eq!((cancel.to(), cancel.value(), cancel.input().len()), (Some(me), U256::ZERO, 0));
        assert!(decode(&Bytes::from_static(b"junk")).unwrap_err().contains("does not decode"));
    }
}
