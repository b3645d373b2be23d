//! What a node's JSON-RPC error answer to `eth_sendRawTransaction` says about the transaction.
//!
//! The withdrawal engine's invariant is that a withdrawal's value leaves the key at most once. A
//! withdrawal may be marked failed (and its nonce given back) only on [`BroadcastOutcome::Refused`],
//! which [`classify`] returns only for texts that clients produce after validating the transaction and
//! *before* adding it to their pool. Everything else — rate limits, proxies, timeouts, internal
//! errors, "nonce too high", a full pool, text not known here — is [`BroadcastOutcome::Ambiguous`]:
//! keep the nonce and broadcast again. A refusal speaks only of the transaction just sent: an earlier
//! broadcast at the same nonce (the one a fee bump replaces) may still be pending or be mined.
//!
//! Matching: the message and `data` are folded into lowercase ASCII words (`camelCase`, `PascalCase`
//! and `SNAKE_CASE` split into words, apostrophes dropped, anything else separates), and `RULES`
//! phrases match whole words only ("unknown transaction" never matches "known transaction"). The
//! groups are tried in order and the first match wins; those that keep the nonce come first. JSON-RPC
//! codes that say the request never reached the pool (parse error, invalid request, method not
//! found, HTTP 429 passed through) are `Ambiguous` whatever the text says.
//!
//! Sources of the texts (each client block of the test table names its files; row comments mark
//! texts not seen verbatim in source):
//! - geth: `core/txpool/errors.go`, `core/error.go`, `core/txpool/validation.go`,
//!   `core/txpool/legacypool/legacypool.go`, `core/types/transaction_signing.go`,
//!   `core/types/transaction.go`, `core/state_transition.go`, `internal/ethapi/api.go`.
//! - Nethermind: `Nethermind.TxPool/AcceptTxResult.cs` (older releases print the result's name,
//!   e.g. `OldNonce`, then `, detail`; newer ones the phrases of `TxPoolErrorMessages.cs`),
//!   `Nethermind.TxPool/Filters/*.cs`, `Nethermind.Core/Messages/TxErrorMessages.cs`.
//! - Erigon: `txnprovider/txpool/txpoolcfg/txpoolcfg.go` (`DiscardReason::String`),
//!   `txnprovider/txpool/txpool_grpc_server.go` (reason to `ImportResult`),
//!   `rpc/jsonrpc/send_transaction.go` (prints `"{ImportResult}: {reason}"`), `pool_txn_parser.go`.
//! - Besu: `RpcErrorType.java`, `JsonRpcErrorConverter.java`, `JsonRpcError.java` (`"message (reason)"`),
//!   `TransactionInvalidReason.java` (enum names: not Besu's RPC message, kept for wrappers and logs that print them).
//! - Reth: `crates/transaction-pool/src/error.rs`, `crates/rpc/rpc-eth-types/src/error/mod.rs`.
//! - anvil: `crates/anvil/src/eth/error/mod.rs` (foundry).
//!
//! Adding a row: put the client's exact text, its source file and the expected outcome in the test
//! table `CASES`. If it fails, add the shortest distinctive phrase, written as folded words (lowercase,
//! single spaces, no punctuation), to the right group of `RULES`; a test checks that every phrase
//! is already folded. When unsure whether a text is a definite refusal, expect `Ambiguous`.

use core::fmt;

use BroadcastOutcome::{Accepted, Ambiguous, NonceUsed, Refused, Underpriced};

/// What the node's answer says about the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// The node has it: accepted now, or it already knew it.
    Accepted,
    /// The nonce is already used by a mined transaction (ours or someone else's): settle by nonce.
    NonceUsed,
    /// Fees too low: a replacement not paying enough more, or max fee below the base fee, or below the
    /// pool's minimum. Keep the nonce; a later bump raises the fees.
    Underpriced,
    /// The transaction was definitely refused and not added to the pool, for this reason.
    Refused(Refusal),
    /// Anything else (rate limits, internal errors, timeouts reported as errors, "nonce too high", txpool full,
    /// unfamiliar text): the node may or may not have it. Keep the nonce and broadcast again later.
    Ambiguous,
}

/// A definite refusal (the node validated the transaction and rejected it; it was not added, so not propagated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The balance does not cover value plus gas limit × max fee.
    InsufficientFunds,
    /// The gas limit is below the transaction's intrinsic (or floor data) gas.
    IntrinsicGasTooLow,
    /// The signature is invalid or the sender cannot be recovered.
    InvalidSender,
    /// Wrong chain id, or the node requires replay protection the transaction lacks.
    ChainIdMismatch,
    /// The gas limit is above the block gas limit or the per-transaction gas limit cap.
    ExceedsBlockGasLimit,
    /// The fee is above the node's own RPC fee cap (geth `--rpc.txfeecap`, Besu `--rpc-tx-feecap`).
    FeeCapExceeded,
    /// The max priority fee per gas is above the max fee per gas.
    TipAboveFeeCap,
    /// The transaction is larger than the node's pool accepts.
    OversizedData,
    /// The value is negative.
    NegativeValue,
    /// The node does not support (or not yet) this transaction type.
    TxTypeNotSupported,
}

impl Refusal {
    /// Every refusal, e.g. to register metric labels up front.
    pub const ALL: [Self; 10] = [
        Self::InsufficientFunds,
        Self::IntrinsicGasTooLow,
        Self::InvalidSender,
        Self::ChainIdMismatch,
        Self::ExceedsBlockGasLimit,
        Self::FeeCapExceeded,
        Self::TipAboveFeeCap,
        Self::OversizedData,
        Self::NegativeValue,
        Self::TxTypeNotSupported,
    ];

    /// The `snake_case` name used as a metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::IntrinsicGasTooLow => "intrinsic_gas_too_low",
            Self::InvalidSender => "invalid_sender",
            Self::ChainIdMismatch => "chain_id_mismatch",
            Self::ExceedsBlockGasLimit => "exceeds_block_gas_limit",
            Self::FeeCapExceeded => "fee_cap_exceeded",
            Self::TipAboveFeeCap => "tip_above_fee_cap",
            Self::OversizedData => "oversized_data",
            Self::NegativeValue => "negative_value",
            Self::TxTypeNotSupported => "tx_type_not_supported",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InsufficientFunds => "the balance does not cover the value and the maximum gas cost",
            Self::IntrinsicGasTooLow => "the gas limit is below the transaction's intrinsic gas",
            Self::InvalidSender => "the signature is invalid or the sender cannot be recovered",
            Self::ChainIdMismatch => "the chain id is wrong or missing",
            Self::ExceedsBlockGasLimit => "the gas limit is above the block's or the per-transaction limit",
            Self::FeeCapExceeded => "the fee is above the node's configured transaction fee cap",
            Self::TipAboveFeeCap => "the max priority fee per gas is above the max fee per gas",
            Self::OversizedData => "the transaction is larger than the node accepts",
            Self::NegativeValue => "the value is negative",
            Self::TxTypeNotSupported => "the node does not support this transaction type",
        })
    }
}

/// JSON-RPC codes meaning the request never reached the pool: parse error, invalid request, method not
/// found, and HTTP 429 passed through by some proxies.
const AMBIGUOUS_CODES: [i64; 4] = [-32700, -32600, -32601, 429];

/// Phrases (folded words), grouped by outcome, in the order they are tried: the first match wins.
#[rustfmt::skip]
const RULES: &[(BroadcastOutcome, &[&str])] = &[
    // Not an answer about this transaction, or a nonce ahead of the node's (parallel broadcasts arrive
    // out of order): keep the nonce. First, so that no definite phrase further down can override them.
    (
        Ambiguous,
        &[
            "rate limit", "rate limited", "too many requests", "timeout", "timed out", "upstream",
            "nonce too high", "nonce gap", "gapped nonce", "nonce too far", "too distant",
            "authority nonce too low", "txpool is full", "pool is full",
        ],
    ),
    (
        Accepted,
        &["already known", "known transaction", "already imported", "already exists", "existing txn with same hash"],
    ),
    (NonceUsed, &["nonce too low", "old nonce"]),
    (
        Underpriced,
        &[
            "underpriced", "fee too low", "price too low", "gas price below", "below current base fee",
            "less than block base fee", "priority fee below minimum", "insufficient gas price to replace",
            "could not replace existing tx", "replacement not allowed",
        ],
    ),
    (Refused(Refusal::FeeCapExceeded), &["exceeds the configured cap", "fee cap exceeded", "feecap exceeded"]),
    (
        Refused(Refusal::TipAboveFeeCap),
        &[
            "max priority fee per gas higher than max fee per gas",
            "max priority fee per gas exceeds max fee per gas",
            "invalid max priority fee per gas",
        ],
    ),
    // Before the sender group: geth prints "invalid sender: invalid chain id for signer".
    (
        Refused(Refusal::ChainIdMismatch),
        &[
            "invalid chain id", "invalid tx chain id", "wrong chain id", "chain id not supported",
            "chain id is required", "signed for another chain", "replay protected",
        ],
    ),
    (
        Refused(Refusal::InvalidSender),
        &[
            "invalid sender", "invalid signature", "invalid transaction signature", "invalid tx signature",
            "failed to recover sender", "failed to resolve sender",
        ],
    ),
    (
        Refused(Refusal::InsufficientFunds),
        &["insufficient funds", "upfront cost exceeds account balance", "upfront cost exceeds balance"],
    ),
    // Before the intrinsic gas group: anvil prints "intrinsic gas too high" for a gas limit above the block's.
    (
        Refused(Refusal::ExceedsBlockGasLimit),
        &[
            "exceeds block gas limit", "exceeds blocks gas limit", "greater than the block gas limit",
            "gas limit exceeded", "gas limit reached", "gas limit too high", "gas limit is too high",
            "gas limit cap exceeded", "exceeds max transaction gas limit", "exceeds transaction gas limit",
            "exceeds maximum per transaction gas limit", "intrinsic gas too high",
        ],
    ),
    (Refused(Refusal::IntrinsicGasTooLow), &["intrinsic gas", "insufficient gas for floor data gas cost"]),
    (
        Refused(Refusal::OversizedData),
        &["oversized data", "transaction too large", "max tx size exceeded", "rlp too long"],
    ),
    (Refused(Refusal::NegativeValue), &["negative value"]),
    (
        Refused(Refusal::TxTypeNotSupported),
        &[
            "transaction type not supported", "unsupported transaction type", "not supported tx type",
            "invalid transaction type",
        ],
    ),
];

/// Classifies a JSON-RPC error (`code`, `message`, and `data` if the error had a string data field).
#[must_use]
pub fn classify(code: i64, message: &str, data: Option<&str>) -> BroadcastOutcome {
    if AMBIGUOUS_CODES.contains(&code) {
        return Ambiguous;
    }
    let mut words = String::with_capacity(message.len() + data.map_or(0, str::len) + 2);
    words.push(' ');
    push_words(&mut words, message);
    if let Some(data) = data {
        push_words(&mut words, data);
    }
    RULES
        .iter()
        .find(|(_, phrases)| phrases.iter().any(|phrase| has_phrase(&words, phrase)))
        .map_or(Ambiguous, |&(outcome, _)| outcome)
}

/// Appends `text` to `out` as lowercase ASCII words, each followed by one space (`out` must end with one).
fn push_words(out: &mut String, text: &str) {
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if !c.is_ascii_alphanumeric() {
            prev = None;
            if !out.ends_with(' ') {
                out.push(' ');
            }
            continue;
        }
        if let Some(p) = prev {
            // "nonceGap" and "OldNonce" split before the capital; "RLPTooLong" before the last capital of a run.
            let next_lower = chars.peek().is_some_and(char::is_ascii_lowercase);
            if c.is_ascii_uppercase() && (!p.is_ascii_uppercase() || next_lower) {
                out.push(' ');
            }
        }
        out.push(c.to_ascii_lowercase());
        prev = Some(c);
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Whether `phrase` occurs in `words` (as built by [`push_words`]) as whole words.
fn has_phrase(words: &str, phrase: &str) -> bool {
    let bytes = words.as_bytes();
    let mut from = 0;
    while let Some(found) = words.get(from..).and_then(|rest| rest.find(phrase)) {
        let start = from + found;
        let before = start.checked_sub(1).and_then(|i| bytes.get(i));
        if before == Some(&b' ') && bytes.get(start + phrase.len()) == Some(&b' ') {
            return true;
        }
        from = start + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (client, text as the client prints it, expected outcome). Comments name the source file.
    #[rustfmt::skip]
    const CASES: &[(&str, &str, BroadcastOutcome)] = &[
        // geth: core/txpool/errors.go, core/error.go, core/txpool/validation.go (the ": detail" formats),
        // legacypool.go, core/types/{transaction_signing,transaction}.go, state_transition.go, internal/ethapi/api.go.
        ("geth", "already known", Accepted),
        ("geth", "nonce too low: next nonce 7, tx nonce 5", NonceUsed),
        ("geth", "nonce too high: tx nonce 9, gapped nonce 7", Ambiguous),
        ("geth", "replacement transaction underpriced", Underpriced),
        ("geth", "transaction underpriced", Underpriced),
        ("geth", "transaction gas price below minimum: gas tip cap 1, minimum needed 2", Underpriced),
        ("geth", "max fee per gas less than block base fee: address 0xAbC1, maxFeePerGas: 1, baseFee: 7", Underpriced),
        ("geth", "insufficient funds for gas * price + value: balance 0, tx cost 21000, overshot 21000", Refused(Refusal::InsufficientFunds)),
        ("geth", "insufficient funds for gas * price + value: address 0xAbC1 have 1 want 2", Refused(Refusal::InsufficientFunds)),
        ("geth", "intrinsic gas too low: gas 20000, minimum needed 21000", Refused(Refusal::IntrinsicGasTooLow)),
        ("geth", "insufficient gas for floor data gas cost: gas 21000, minimum needed 21600", Refused(Refusal::IntrinsicGasTooLow)),
        ("geth", "invalid sender: invalid transaction v, r, s values", Refused(Refusal::InvalidSender)),
        ("geth", "invalid sender: invalid chain id for signer", Refused(Refusal::ChainIdMismatch)),
        ("geth", "exceeds block gas limit", Refused(Refusal::ExceedsBlockGasLimit)),
        ("geth", "transaction gas limit too high (cap: 16777216, tx: 30000000)", Refused(Refusal::ExceedsBlockGasLimit)),
        ("geth", "only replay-protected (EIP-155) transactions allowed over RPC", Refused(Refusal::ChainIdMismatch)),
        ("geth", "tx fee (1.10 ether) exceeds the configured cap (1.00 ether)", Refused(Refusal::FeeCapExceeded)),
        ("geth", "max priority fee per gas higher than max fee per gas", Refused(Refusal::TipAboveFeeCap)),
        ("geth", "oversized data: transaction size 131200, limit 131072", Refused(Refusal::OversizedData)),
        ("geth", "negative value", Refused(Refusal::NegativeValue)),
        ("geth", "transaction type not supported: type 4 rejected, pool not yet in Prague", Refused(Refusal::TxTypeNotSupported)),
        ("geth", "txpool is full", Ambiguous),
        ("geth", "account limit exceeded: pooled 16 txs", Ambiguous),
        ("geth", "future transaction tries to replace pending", Ambiguous),
        ("geth", "address already reserved", Ambiguous),
        ("geth", "authority nonce too low", Ambiguous),
        ("geth", "gapped-nonce tx from delegated accounts", Ambiguous),
        // Nethermind: AcceptTxResult.cs (names; ToString is "Name, detail"), TxPoolErrorMessages.cs (newer
        // phrases), Filters/*.cs (details), TxErrorMessages.cs. Old texts also in issues #4829 and #4845.
        ("nethermind", "AlreadyKnown", Accepted),
        ("nethermind", "OldNonce, Current nonce: 7, nonce of rejected tx: 5", NonceUsed),
        ("nethermind", "NonceGap, Future nonce. Expected nonce: 62", Ambiguous),
        ("nethermind", "NonceTooFarInFuture", Ambiguous),
        ("nethermind", "FeeTooLow, MaxFeePerGas too low. MaxFeePerGas: 1, BaseFee: 7, MaxPriorityFeePerGas:1, Block number: 9", Underpriced),
        ("nethermind", "FeeTooLowToCompete", Underpriced),
        ("nethermind", "ReplacementNotAllowed", Underpriced),
        ("nethermind", "InsufficientFunds, Account balance: 3020000000000000000, cumulative cost: 5809177184380485770", Refused(Refusal::InsufficientFunds)),
        ("nethermind", "InsufficientFunds, Balance is zero, cannot pay gas", Refused(Refusal::InsufficientFunds)),
        ("nethermind", "GasLimitExceeded", Refused(Refusal::ExceedsBlockGasLimit)),
        ("nethermind", "FailedToResolveSender", Refused(Refusal::InvalidSender)),
        ("nethermind", "Invalid, InvalidTxSignature: Signature is invalid.", Refused(Refusal::InvalidSender)), // composed, not seen verbatim
        ("nethermind", "Invalid, InvalidTxChainId: Expected 1, got 5.", Refused(Refusal::ChainIdMismatch)), // composed, not seen verbatim
        ("nethermind", "Invalid", Ambiguous), // refused, but for a reason not given: stays ambiguous
        ("nethermind", "Syncing", Ambiguous),
        ("nethermind", "Int256Overflow", Ambiguous),
        ("nethermind", "PendingTxsOfConflictingType", Ambiguous),
        ("nethermind", "already known", Accepted),
        ("nethermind", "nonce too low", NonceUsed),
        ("nethermind", "nonce too high", Ambiguous),
        ("nethermind", "transaction underpriced", Underpriced),
        ("nethermind", "gas limit reached", Refused(Refusal::ExceedsBlockGasLimit)),
        ("nethermind", "failed to recover sender", Refused(Refusal::InvalidSender)),
        ("nethermind", "transaction too large", Refused(Refusal::OversizedData)),
        ("nethermind", "unsupported transaction type", Refused(Refusal::TxTypeNotSupported)),
        ("nethermind", "node is syncing", Ambiguous),
        // Erigon: rpc/jsonrpc/send_transaction.go prints "{ImportResult}: {DiscardReason}" (txpoolcfg.go,
        // txpool_grpc_server.go); chain id and fee cap checks in send_transaction.go; parser in pool_txn_parser.go.
        ("erigon", "ALREADY_EXISTS: already known", Accepted),
        ("erigon", "INTERNAL_ERROR: existing txn with same hash", Accepted),
        ("erigon", "INTERNAL_ERROR: nonce too low", NonceUsed),
        ("erigon", "INTERNAL_ERROR: insufficient funds", Refused(Refusal::InsufficientFunds)),
        ("erigon", "FEE_TOO_LOW: underpriced", Underpriced),
        ("erigon", "FEE_TOO_LOW: replacement transaction underpriced", Underpriced),
        ("erigon", "FEE_TOO_LOW: fee too low", Underpriced),
        ("erigon", "INTERNAL_ERROR: could not replace existing tx", Underpriced),
        ("erigon", "INVALID: invalid sender", Refused(Refusal::InvalidSender)),
        ("erigon", "INVALID: oversized data", Refused(Refusal::OversizedData)),
        ("erigon", "INVALID: RLPTooLong", Refused(Refusal::OversizedData)),
        ("erigon", "INVALID: negative value", Refused(Refusal::NegativeValue)),
        ("erigon", "INTERNAL_ERROR: IntrinsicGas", Refused(Refusal::IntrinsicGasTooLow)),
        ("erigon", "INTERNAL_ERROR: gas limit is too high", Refused(Refusal::ExceedsBlockGasLimit)),
        ("erigon", "invalid chain id, expected: 1 got: 5", Refused(Refusal::ChainIdMismatch)),
        ("erigon", "INTERNAL_ERROR: rlp parse transaction: invalid chainID, 5 (expected 1)", Refused(Refusal::ChainIdMismatch)), // prefix not seen verbatim
        ("erigon", "tx fee (1.10 ether) exceeds the configured cap (1.00 ether)", Refused(Refusal::FeeCapExceeded)),
        ("erigon", "INVALID: fork supporting this transaction type is not activated yet", Ambiguous), // Erigon's own TODO: may be transient
        ("erigon", "INTERNAL_ERROR: spammer", Ambiguous),
        ("erigon", "INTERNAL_ERROR: pending sub-pool is full", Ambiguous),
        ("erigon", "INTERNAL_ERROR: mined", Ambiguous),
        ("erigon", "tx is invalid", Ambiguous), // older send_transaction.go: no reason given
        ("erigon", "ALREADY_KNOWN", Accepted), // not found in Erigon source: enum-style spelling from the brief
        ("erigon", "INSUFFICIENT_FUNDS", Refused(Refusal::InsufficientFunds)), // not found in Erigon source, as above
        // Besu: RpcErrorType.java messages, chosen by JsonRpcErrorConverter.java; JsonRpcError.java may append
        // " (reason)"; the upper-case names are TransactionInvalidReason.java's.
        ("besu", "Known transaction", Accepted),
        ("besu", "Nonce too low", NonceUsed),
        ("besu", "Nonce too high", Ambiguous),
        ("besu", "Transaction nonce is too distant from current sender nonce", Ambiguous),
        ("besu", "Replacement transaction underpriced", Underpriced),
        ("besu", "Gas price below configured minimum gas price", Underpriced),
        ("besu", "Gas price below current base fee", Underpriced),
        ("besu", "Upfront cost exceeds account balance", Refused(Refusal::InsufficientFunds)),
        ("besu", "Upfront cost exceeds account balance (transaction up-front cost 0x5208 exceeds balance 0x0)", Refused(Refusal::InsufficientFunds)), // reason text not seen verbatim
        ("besu", "Intrinsic gas exceeds gas limit", Refused(Refusal::IntrinsicGasTooLow)),
        ("besu", "Invalid signature", Refused(Refusal::InvalidSender)),
        ("besu", "Transaction gas limit exceeds block gas limit", Refused(Refusal::ExceedsBlockGasLimit)),
        ("besu", "Transaction gas limit cap exceeded", Refused(Refusal::ExceedsBlockGasLimit)),
        ("besu", "Wrong chainId", Refused(Refusal::ChainIdMismatch)),
        ("besu", "ChainId not supported", Refused(Refusal::ChainIdMismatch)),
        ("besu", "ChainId is required", Refused(Refusal::ChainIdMismatch)),
        ("besu", "Transaction fee cap exceeded", Refused(Refusal::FeeCapExceeded)),
        ("besu", "Max priority fee per gas exceeds max fee per gas", Refused(Refusal::TipAboveFeeCap)),
        ("besu", "Invalid transaction type", Refused(Refusal::TxTypeNotSupported)),
        ("besu", "Initial sync is still in progress", Ambiguous),
        ("besu", "Transaction pool not enabled. (Either txpool explicitly disabled, or node not yet in sync).", Ambiguous),
        ("besu", "An invalid transaction with a lower nonce exists", Ambiguous),
        ("besu", "Sender account not authorized to send transactions", Ambiguous), // definite, but no Refusal for it
        ("besu", "Internal error", Ambiguous), // also what Besu answers for TRANSACTION_PRICE_TOO_LOW and others
        ("besu", "Timeout expired", Ambiguous),
        ("besu", "TRANSACTION_ALREADY_KNOWN", Accepted),
        ("besu", "NONCE_TOO_LOW", NonceUsed),
        ("besu", "NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER", Ambiguous),
        ("besu", "UPFRONT_COST_EXCEEDS_BALANCE", Refused(Refusal::InsufficientFunds)),
        ("besu", "WRONG_CHAIN_ID", Refused(Refusal::ChainIdMismatch)),
        ("besu", "REPLAY_PROTECTED_SIGNATURE_REQUIRED", Refused(Refusal::ChainIdMismatch)),
        // Reth: crates/rpc/rpc-eth-types/src/error/mod.rs (RpcPoolError, RpcInvalidTransactionError), and
        // crates/transaction-pool/src/error.rs (pool-side texts, normally mapped to the former).
        ("reth", "already known", Accepted),
        ("reth", "nonce too low: next nonce 7, tx nonce 5", NonceUsed),
        ("reth", "nonce too high", Ambiguous),
        ("reth", "replacement transaction underpriced", Underpriced),
        ("reth", "transaction underpriced", Underpriced),
        ("reth", "max fee per gas less than block base fee", Underpriced),
        ("reth", "transaction priority fee below minimum required priority fee 1000000", Underpriced),
        ("reth", "insufficient gas price to replace existing transaction", Underpriced),
        ("reth", "insufficient funds for gas * price + value: have 0 want 21000000000000", Refused(Refusal::InsufficientFunds)),
        ("reth", "intrinsic gas too low", Refused(Refusal::IntrinsicGasTooLow)),
        ("reth", "invalid sender", Refused(Refusal::InvalidSender)),
        ("reth", "invalid transaction signature", Refused(Refusal::InvalidSender)),
        ("reth", "invalid chain ID", Refused(Refusal::ChainIdMismatch)),
        ("reth", "exceeds block gas limit", Refused(Refusal::ExceedsBlockGasLimit)),
        ("reth", "transaction's gas limit 40000000 exceeds block's gas limit 30000000", Refused(Refusal::ExceedsBlockGasLimit)),
        ("reth", "exceeds max transaction gas limit", Refused(Refusal::ExceedsBlockGasLimit)),
        ("reth", "gas limit too high", Refused(Refusal::ExceedsBlockGasLimit)),
        ("reth", "tx fee (2000000000000000000 wei) exceeds the configured cap (1000000000000000000 wei)", Refused(Refusal::FeeCapExceeded)),
        ("reth", "max priority fee per gas higher than max fee per gas", Refused(Refusal::TipAboveFeeCap)),
        ("reth", "oversized data: transaction size 200000, limit 131072", Refused(Refusal::OversizedData)),
        ("reth", "transaction type not supported", Refused(Refusal::TxTypeNotSupported)),
        ("reth", "txpool is full", Ambiguous),
        ("reth", "address already reserved", Ambiguous),
        ("reth", "max priority fee per gas higher than 2^256-1", Ambiguous), // definite, but kept ambiguous
        // anvil (foundry): crates/anvil/src/eth/error/mod.rs (pool errors rewritten in its ToRpcResponseResult).
        ("anvil", "transaction already imported", Accepted),
        ("anvil", "nonce too low", NonceUsed),
        ("anvil", "Nonce too high", Ambiguous),
        ("anvil", "replacement transaction underpriced", Underpriced),
        ("anvil", "max fee per gas less than block base fee", Underpriced),
        ("anvil", "Insufficient funds for gas * price + value", Refused(Refusal::InsufficientFunds)),
        ("anvil", "intrinsic gas too low", Refused(Refusal::IntrinsicGasTooLow)),
        ("anvil", "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit", Refused(Refusal::ExceedsBlockGasLimit)),
        ("anvil", "Transaction gas limit is greater than the block gas limit, gas_limit: 30000001, cap: 30000000", Refused(Refusal::ExceedsBlockGasLimit)),
        ("anvil", "max priority fee per gas higher than max fee per gas", Refused(Refusal::TipAboveFeeCap)),
        ("anvil", "invalid chain id for signer", Refused(Refusal::ChainIdMismatch)),
        ("anvil", "Incompatible EIP-155 transaction, signed for another chain", Refused(Refusal::ChainIdMismatch)),
        ("anvil", "Unknown transaction type not supported", Refused(Refusal::TxTypeNotSupported)),
        ("anvil", "Out of gas: gas required exceeds allowance: 21000", Ambiguous), // execution, not admission
        ("anvil", "execution reverted", Ambiguous),
        // Providers and proxies (not from any client source): never a definite answer.
        ("provider", "rate limit exceeded", Ambiguous),
        ("provider", "Too Many Requests", Ambiguous),
        ("provider", "daily request count exceeded, request rate limited", Ambiguous),
        ("provider", "internal error", Ambiguous),
        ("provider", "request timed out", Ambiguous),
        ("provider", "upstream connect error or disconnect/reset before headers. reset reason: connection failure", Ambiguous),
        ("provider", "upstream error: insufficient funds for gas * price + value", Ambiguous),
        ("provider", "", Ambiguous),
        ("provider", "tx rejected: unknown reason 0xdead", Ambiguous),
    ];

    /// Asserts every row of `client`, naming each failing row.
    fn check_client(client: &str) {
        let rows: Vec<_> = CASES.iter().filter(|(c, ..)| *c == client).collect();
        assert!(!rows.is_empty(), "no rows for {client}");
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|&&(_, text, want)| {
                let got = classify(-32000, text, None);
                (got != want).then(|| format!("  {client} {text:?}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    }

    macro_rules! client_tests {
        ($($client:ident),* $(,)?) => {
            const CLIENTS: &[&str] = &[$(stringify!($client)),*];
            $(#[test] fn $client() { check_client(stringify!($client)); })*
        };
    }
    client_tests!(geth, nethermind, erigon, besu, reth, anvil, provider);

    #[test]
    fn every_row_belongs_to_a_tested_client() {
        for (client, text, _) in CASES {
            assert!(CLIENTS.contains(client), "row {text:?} has untested client {client:?}");
        }
    }

    #[test]
    fn every_phrase_is_already_folded() {
        for (_, phrases) in RULES {
            for phrase in *phrases {
                let mut folded = String::from(" ");
                push_words(&mut folded, phrase);
                assert_eq!(folded, format!(" {phrase} "), "phrase {phrase:?} is not written as folded words");
            }
        }
    }

    #[test]
    fn data_codes_and_case() {
        assert_eq!(classify(-32000, "error", Some("INSUFFICIENT funds")), Refused(Refusal::InsufficientFunds));
        assert_eq!(classify(-32010, "", Some("OldNonce")), NonceUsed);
        assert_eq!(classify(-32000, "NONCE TOO LOW", Some("")), NonceUsed);
        assert_eq!(classify(-32601, "insufficient funds", None), Ambiguous);
        assert_eq!(classify(429, "nonce too low", None), Ambiguous);
        assert_eq!(classify(-32000, "already known", Some("insufficient funds")), Accepted);
        assert_eq!(classify(-32000, "unknown transaction", None), Ambiguous);
    }

    #[test]
    fn odd_input_never_panics() {
        let huge = "x".repeat(1 << 20) + " nonce too low";
        assert_eq!(classify(-32000, &huge, None), NonceUsed);
        assert_eq!(classify(i64::MIN, "\u{0}\u{7f}\u{ffff}", Some("\u{10ffff}")), Ambiguous);
        assert_eq!(classify(i64::MAX, "ñonce too lów — 日本語 🚀", None), Ambiguous);
        assert_eq!(classify(-32000, "ошибка: nonce too low", Some("’'\"")), NonceUsed);
        assert_eq!(classify(0, "''''", Some("A")), Ambiguous);
        assert!(!has_phrase(" a ", ""));
    }

    #[test]
    fn refusal_names() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let name = r.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert!(Refusal::ALL[..i].iter().all(|o| o.as_str() != name), "duplicate {name}");
            assert!(!r.to_string().is_empty());
        }
    }
}
