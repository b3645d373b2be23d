//! Four-eyes approvals of large withdrawals. A withdrawal at or above its key's approval threshold
//! (`[keys.NAME.approvals]`, [`ApprovalSettings`](crate::config::ApprovalSettings)) is checked against the
//! policy, counted against the daily limit and stored `pending_approval` — out of the engine's hands. Each
//! approver signs an EIP-712 [approval](typed) of its full content; a client with the `approvals` method
//! posts it (`POST /v1/withdrawals/{id}/approvals`, in `api`), and it counts only if it recovers to an
//! approver of the key, over exactly this withdrawal's content on the key's chain, before the expiry, once
//! per approver. The approval that completes the quorum moves the withdrawal to `accepted` in the same
//! journal transaction, and the engine signs it as any other; one rejection ends it `rejected`; unapproved,
//! it ends `expired` (both final, the amount given back to the daily limit). Every decision, approval and
//! expiry goes to the audit log.
//!
//! The same approvers and quorum guard time-locked additions to a key's destination allowlist
//! (`allowlist`): an address proposed through the API is allowed only once the quorum has approved it and
//! its delay (`allowlist_delay_seconds`) has passed; any approver may cancel it until then.

pub(crate) mod allowlist;
pub(crate) mod api;
pub mod typed;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::journal::{ApprovalTerms, Withdrawal, now_ms};
use crate::shared::Key;
use crate::withdrawals::Engine;
use typed::ApprovalContent;

/// How often pending withdrawals past their expiry are expired.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(2);

/// The message an approver signs to decide (`approve`) on `withdrawal` of `key`, under `terms`.
pub(crate) fn content(key: &Key, withdrawal: &Withdrawal, terms: &ApprovalTerms, approve: bool) -> ApprovalContent {
    ApprovalContent {
        id: withdrawal.id.clone(),
        key: key.address(),
        chain_id: key.chain_id,
        to: withdrawal.recipient,
        asset: withdrawal.asset,
        amount: withdrawal.amount,
        expiry: terms.expires_ms / 1000,
        approve,
    }
}

/// The terms of a withdrawal that needs approvals, made now: whole seconds, so that the expiry signed
/// (Unix seconds) is exactly the one stored.
pub(crate) fn terms(quorum: u32, expiry: Duration) -> ApprovalTerms {
    ApprovalTerms { quorum, expires_ms: (now_ms() / 1000 + expiry.as_secs()) * 1000 }
}

/// Expires, every [`EXPIRY_INTERVAL`] until the engine stops, the pending withdrawals past their expiry,
/// each in the audit log once (by the replica whose write expired it).
pub(crate) fn expire_in_background(engine: Arc<Engine>) {
    tokio::spawn(async move {
        while !engine.stopping.load(Ordering::Relaxed) {
            match engine.journal.expire_approvals(now_ms()).await {
                Ok(expired) => {
                    for row in expired {
                        engine.shared.metrics.withdrawals.inc("expired");
                        tracing::info!(withdrawal = %row.id, key = %row.key, "expired without its approvals");
                        let event = json!({
                            "kind": "approval_expired", "withdrawal": row.id, "key": row.key,
                            "client": row.client, "amount": row.amount.to_string(), "asset": row.asset.to_string(),
                        });
                        if let Err(error) = engine.shared.audit(event).await {
                            tracing::error!(withdrawal = %row.id, %error, "the audit log did not take an expiry");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "expiring pending approvals; the next round tries again"),
            }
            tokio::time::sleep(EXPIRY_INTERVAL).await;
        }
    });
}
