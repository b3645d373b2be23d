//! What the watcher does this round for one followed row: one [`Action`], decided once from the row, the
//! key's mined count and the head, by the settlement rules.

use std::time::Instant;

use ethkms::eth::chain::Fees;

use crate::withdrawals::engine::InFlight;
use crate::withdrawals::settlement;

/// What the watcher does this round for one followed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Mined, and a reorg took it away.
    Reorged,
    /// Mined, and deep enough: check and confirm.
    Confirm,
    /// Its nonce is mined: find by which transaction.
    Settle,
    /// Its nonce is free again after a reorg: forget the outside transaction found there.
    ForgetForeign,
    /// Sign a replacement: a cancellation, or the same with bumped fees.
    Replace { cancel: bool },
    /// Broadcast the latest transaction again.
    Rebroadcast,
}

/// What `entry` needs this round, if anything: `long` says it has been unmined for `rebroadcast_after`.
pub(super) fn action(
    entry: &InFlight,
    mined_count: u64,
    head: u64,
    confirmations: u64,
    market: Option<Fees>,
    long: bool,
) -> Option<Action> {
    let nonce = entry.row.nonce?;
    let last_is_cancel = entry.row.attempts.last().is_some_and(|last| last.cancel);
    let below_market = market.is_some_and(|market| {
        entry.row.attempts.last().is_some_and(|last| last.max_fee_per_gas < market.max_and_priority().0)
    });
    if let Some(block) = entry.row.block_number {
        return if settlement::reorged(nonce, mined_count) {
            Some(Action::Reorged)
        } else {
            settlement::is_final(block, head, confirmations).then_some(Action::Confirm)
        };
    }
    if nonce < mined_count {
        Some(Action::Settle)
    } else if entry.foreign.is_some() {
        Some(Action::ForgetForeign)
    } else if entry.row.cancel_requested && !last_is_cancel {
        Some(Action::Replace { cancel: true })
    } else if long && (nonce == mined_count || below_market) {
        Some(Action::Replace { cancel: last_is_cancel })
    } else if !entry.submitted && Instant::now() >= entry.next_broadcast {
        Some(Action::Rebroadcast)
    } else {
        None
    }
}
