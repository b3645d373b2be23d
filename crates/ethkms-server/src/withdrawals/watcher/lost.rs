//! The key's next transaction lost by the node: sent and accepted, still unmined a while later, and the
//! node counts nothing pending at its nonce — it dropped the transaction from its pool (evicted it,
//! restarted) or parked it and never looked at it again (anvil can, when the gap below a transaction
//! closes while it is being added). Every later transaction of the key waits behind it, so the watcher does
//! not wait `rebroadcast_after`: it sends the same bytes again at once, and if the node still counts nothing
//! pending there after another while, replaces the transaction with bumped fees (within the key's caps),
//! which the node must look at anew. Either is safe: the same nonce, so at most one of them is mined.

use std::sync::PoisonError;
use std::time::Duration;

use super::action::Action;
use super::{Engine, InFlight};
use crate::shared::{Key, redact_urls};

/// How long the key's next transaction may stay unmined after it was signed, or sent again as lost, before
/// the node's pending count is read: four poll intervals, at least 5 s, at most `rebroadcast_after`.
pub(super) fn lost_after(poll_interval: Duration, rebroadcast_after: Duration) -> Duration {
    (poll_interval * 4).max(Duration::from_secs(5)).min(rebroadcast_after)
}

impl Engine {
    /// The followed row holding `key`'s next nonce (`mined_count`), if the node has lost its transaction,
    /// with what to do about it: broadcast again the first time, replace after that.
    pub(super) async fn lost_head(&self, key: &Key, mined_count: u64, now_ms: u64) -> Option<(InFlight, Action)> {
        let after = lost_after(self.settings.poll_interval, self.settings.rebroadcast_after);
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let waited = |since: u64| now_ms.saturating_sub(since) >= after;
        let head = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).values().find_map(|entry| {
            let candidate = entry.row.key == key.name
                && entry.row.nonce == Some(mined_count)
                && entry.row.block_number.is_none()
                && entry.submitted
                && entry.foreign.is_none()
                && entry.row.attempts.last().is_some_and(|last| waited(last.signed_ms))
                && entry.lost_sent_ms.is_none_or(waited);
            candidate.then(|| entry.clone())
        })?;
        let pending = match ethkms::eth::chain::nonce(self.shared.manager.provider(), key.address()).await {
            Ok(pending) => pending,
            Err(error) => {
                let error = redact_urls(&error.to_string());
                tracing::debug!(key = %key.name, %error, "pending nonce; the next round reads it again");
                return None;
            }
        };
        if pending > mined_count {
            return None; // the node has a transaction there: it may yet be mined
        }
        let cancel = head.row.attempts.last().is_some_and(|last| last.cancel);
        let action = if head.lost_sent_ms.is_some() { Action::Replace { cancel } } else { Action::Rebroadcast };
        self.update(&head.row.id, |entry| entry.lost_sent_ms = Some(now_ms));
        self.shared.metrics.lost_transactions.inc();
        tracing::warn!(
            withdrawal = %head.row.id, key = %key.name, nonce = mined_count, tx_hash = ?head.row.tx_hash, ?action,
            "the node holds nothing pending at the key's next nonce: its transaction is sent again"
        );
        Some((head, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_transaction_is_looked_for_after_four_polls_at_least_five_seconds_at_most_rebroadcast_after() {
        let second = Duration::from_secs(1);
        assert_eq!(lost_after(Duration::from_millis(500), 60 * second), 5 * second);
        assert_eq!(lost_after(2 * second, 60 * second), 8 * second);
        assert_eq!(lost_after(Duration::from_millis(500), 3 * second), 3 * second);
    }
}
