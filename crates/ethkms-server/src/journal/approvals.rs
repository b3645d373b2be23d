//! What the journal keeps of four-eyes approvals ([`ApprovalStore`]): a withdrawal at or above its key's
//! approval threshold is stored `pending_approval` with its [`ApprovalTerms`] (quorum and expiry), its
//! amount already counted against the daily limit; each approver's [`Decision`] is stored once, and the
//! decision that completes the quorum moves it to `accepted` in the same transaction — the engine's from
//! then on. A rejection moves it to `rejected`, and expiry to `expired`; both final, the amount given back
//! to the limit. Every transition is one conditional write, so two replicas (or two approvers at once)
//! cannot both complete a quorum, and a decision can never revive a final withdrawal.

use alloy_primitives::{Address, Bytes};
use async_trait::async_trait;

use super::{JournalError, Withdrawal};

/// What a withdrawal needs before the engine may sign it, stored with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalTerms {
    /// Distinct approvals needed.
    pub quorum: u32,
    /// When it expires unapproved, Unix milliseconds.
    pub expires_ms: u64,
}

/// One approver's decision, its signature checked by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The approver.
    pub approver: Address,
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// The approver's EIP-712 signature (65 bytes).
    pub signature: Bytes,
    /// When it was received, Unix milliseconds (a decision at or after the expiry expires the withdrawal).
    pub at_ms: u64,
}

/// A decision as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRow {
    /// The approver.
    pub approver: Address,
    /// Approve or reject.
    pub approve: bool,
    /// The signature.
    pub signature: Bytes,
    /// When it was stored, Unix milliseconds.
    pub at_ms: u64,
}

/// A withdrawal's approval state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalState {
    /// Its terms.
    pub terms: ApprovalTerms,
    /// The decisions so far, oldest first.
    pub decisions: Vec<DecisionRow>,
}

/// What became of a [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Stored; the quorum is not complete yet: how many approvals it has.
    Counted(u32),
    /// Stored, and it completed the quorum: the withdrawal is `accepted` now (the row as it is).
    Approved(Withdrawal),
    /// Stored: the withdrawal is `rejected` (the row as it is).
    Rejected(Withdrawal),
    /// Not stored: this approver decided before.
    Duplicate,
    /// Not stored: the withdrawal had expired (it is `expired` now, if it was still pending).
    Expired,
    /// Not stored: the withdrawal is not waiting for approvals (its status).
    NotPending(super::Status),
    /// No such withdrawal, or one that never needed approvals.
    NotFound,
}

/// The journal's part in approvals; both journals implement it.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// The approval state of withdrawal `id`, if it needed approvals.
    async fn approval_state(&self, id: &str) -> Result<Option<ApprovalState>, JournalError>;

    /// Stores `decision` on withdrawal `id` if it is `pending_approval`, unexpired, and the approver has
    /// not decided before; moves it to `accepted` when approvals reach its quorum, to `rejected` on a
    /// rejection (the amount given back to the daily limit).
    async fn decide(&self, id: &str, decision: Decision) -> Result<Decided, JournalError>;

    /// Moves every `pending_approval` withdrawal whose expiry is at or before `now_ms` to `expired`, its
    /// amount given back; the rows expired.
    async fn expire_approvals(&self, now_ms: u64) -> Result<Vec<Withdrawal>, JournalError>;

    /// The `pending_approval` withdrawals of `keys`, oldest first, at most `limit`.
    async fn pending_approvals(&self, keys: &[String], limit: usize) -> Result<Vec<Withdrawal>, JournalError>;
}
