//! The engine's settlement rules as pure functions: what a broadcast answer does to a row, when a mined
//! transaction is final, when it was dropped by a reorg, and when another transaction's use of a row's
//! nonce proves the row unpaid. The engine and the watcher decide only through these, and the property tests drive them (with the real allocator and journal) through random
//! interleavings of signatures, broadcast answers, mining by whomever, restarts and reorgs.

use super::rejections::BroadcastOutcome;

/// What a broadcast answer does to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterBroadcast {
    /// The node has it: `submitted`.
    Submitted,
    /// Unknown whether anyone has it: keep the nonce, broadcast again later, settle by nonce.
    Keep,
    /// Definitely never in any pool: the row fails unpaid and its nonce is given back.
    FailUnpaid,
}

/// The rule: only a definite refusal of the very first broadcast of a row's only transaction frees its
/// nonce. `first_broadcast` is true only for that broadcast (not after a restart, when an earlier broadcast
/// of the same bytes may have happened before the crash, and never for a replacement, whose predecessors may
/// be in a pool).
#[must_use]
pub const fn after_broadcast(outcome: BroadcastOutcome, first_broadcast: bool) -> AfterBroadcast {
    match outcome {
        BroadcastOutcome::Accepted => AfterBroadcast::Submitted,
        BroadcastOutcome::Refused(_) if first_broadcast => AfterBroadcast::FailUnpaid,
        _ => AfterBroadcast::Keep,
    }
}

/// Whether a transaction mined in `block` is final at chain head `head` with `confirmations` (the including
/// block counted).
#[must_use]
pub const fn is_final(block: u64, head: u64, confirmations: u64) -> bool {
    head.saturating_add(1) >= block.saturating_add(confirmations)
}

/// Whether a row with `nonce`, seen mined, was dropped by a reorg: the key's mined count no longer covers it.
#[must_use]
pub const fn reorged(nonce: u64, mined_count: u64) -> bool {
    nonce >= mined_count
}

/// What the watcher concludes about a row whose nonce is below the key's mined count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceSettled {
    /// One of the row's own transactions has a receipt: mined (then final after its confirmations).
    Ours,
    /// Another transaction is at the nonce, and final: the row failed, provably unpaid.
    TakenFinal,
    /// Not known yet, or the other transaction not final yet: wait (never re-signed with another nonce).
    Wait,
}

/// `ours_mined`: one of the row's transactions has a receipt; `foreign_block`: the block of another
/// transaction found at the nonce.
#[must_use]
pub const fn settle(ours_mined: bool, foreign_block: Option<u64>, head: u64, confirmations: u64) -> NonceSettled {
    if ours_mined {
        return NonceSettled::Ours;
    }
    match foreign_block {
        Some(block) if is_final(block, head, confirmations) => NonceSettled::TakenFinal,
        _ => NonceSettled::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::withdrawals::rejections::Refusal;

    #[test]
    fn only_the_first_broadcast_definitely_refused_frees_the_nonce() {
        let refused = BroadcastOutcome::Refused(Refusal::InsufficientFunds);
        assert_eq!(after_broadcast(refused, true), AfterBroadcast::FailUnpaid);
        assert_eq!(after_broadcast(refused, false), AfterBroadcast::Keep);
        for outcome in [BroadcastOutcome::Ambiguous, BroadcastOutcome::NonceUsed, BroadcastOutcome::Underpriced] {
            assert_eq!(after_broadcast(outcome, true), AfterBroadcast::Keep);
        }
        assert_eq!(after_broadcast(BroadcastOutcome::Accepted, false), AfterBroadcast::Submitted);
    }

    #[test]
    fn confirmations_count_the_including_block_and_a_foreign_transaction_must_be_final() {
        assert!(is_final(10, 10, 1));
        assert!(!is_final(10, 10, 2));
        assert!(is_final(10, 11, 2));
        assert!(reorged(5, 5) && !reorged(5, 6));
        assert_eq!(settle(true, Some(3), 0, 12), NonceSettled::Ours);
        assert_eq!(settle(false, Some(10), 20, 12), NonceSettled::Wait);
        assert_eq!(settle(false, Some(10), 21, 12), NonceSettled::TakenFinal);
        assert_eq!(settle(false, None, 100, 1), NonceSettled::Wait);
    }
}
