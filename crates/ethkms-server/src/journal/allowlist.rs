//! What the journal keeps of time-locked allowlist additions ([`AllowlistStore`]): an address proposed
//! for a key's destination allowlist is stored `proposed` with the time it may take effect
//! (`effective_ms`) and the quorum it needs; each approver's [`Decision`] is stored once, and the approval
//! that completes the quorum makes it `approved` in the same transaction. A rejection before it takes
//! effect makes it `cancelled`; a removal makes it `removed` at once. At most one entry per key and
//! address is live (`proposed` or `approved`); a cancelled or removed address may be proposed again, as
//! a new entry. Every transition is one conditional write, so two replicas (or two approvers at once)
//! cannot both complete a quorum, and nothing revives a cancelled or removed entry.

use alloy_primitives::Address;
use async_trait::async_trait;

use super::{Decision, DecisionRow, JournalError};

/// Where an allowlist addition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllowlistStatus {
    /// Waiting for its quorum (and its delay).
    Proposed,
    /// Approved by its quorum: allowed from `effective_ms` on.
    Approved,
    /// Rejected by an approver before it took effect (final).
    Cancelled,
    /// Removed (final).
    Removed,
}

impl AllowlistStatus {
    /// The status as stored and shown.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Approved => "approved",
            Self::Cancelled => "cancelled",
            Self::Removed => "removed",
        }
    }

    /// The status named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Proposed, Self::Approved, Self::Cancelled, Self::Removed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

impl std::fmt::Display for AllowlistStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An addition to propose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAddition {
    /// The key's name.
    pub key: String,
    /// The destination to allow.
    pub address: Address,
    /// The client that proposed it.
    pub client: String,
    /// A label for people, if given.
    pub label: Option<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// When it was proposed, Unix milliseconds.
    pub proposed_ms: u64,
    /// When it may take effect (with its quorum), Unix milliseconds.
    pub effective_ms: u64,
}

/// An addition as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addition {
    /// Its id.
    pub id: String,
    /// The key's name.
    pub key: String,
    /// The destination.
    pub address: Address,
    /// Where it is.
    pub status: AllowlistStatus,
    /// The client that proposed it.
    pub client: String,
    /// Its label.
    pub label: Option<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// When it was proposed, Unix milliseconds.
    pub proposed_ms: u64,
    /// When it may take effect, Unix milliseconds.
    pub effective_ms: u64,
    /// When its status last changed, Unix milliseconds.
    pub updated_ms: u64,
    /// The decisions on it, oldest first.
    pub decisions: Vec<DecisionRow>,
}

impl Addition {
    /// Whether it allows its address at `now_ms`.
    #[must_use]
    pub fn active(&self, now_ms: u64) -> bool {
        self.status == AllowlistStatus::Approved && self.effective_ms <= now_ms
    }
}

/// What became of a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// Stored (the entry as it is).
    New(Addition),
    /// Not stored: the address has a live entry already (that entry).
    Exists(Addition),
}

/// What became of a [`Decision`] on an addition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdditionDecided {
    /// Stored; the quorum is not complete yet: how many approvals it has.
    Counted(u32),
    /// Stored, and it completed the quorum (the entry as it is: `approved`).
    Approved(Addition),
    /// Stored: a rejection before the entry took effect cancelled it.
    Cancelled(Addition),
    /// Not stored: this approver decided before.
    Duplicate,
    /// Not stored: the entry is approved and in effect (removal is the way out), or final (its status).
    NotPending(AllowlistStatus),
    /// No live entry for this key and address.
    NotFound,
}

/// The journal's part in time-locked allowlists; both journals implement it.
#[async_trait]
pub trait AllowlistStore: Send + Sync {
    /// Stores `addition` as `proposed`, unless its key and address have a live entry.
    async fn propose_addition(&self, addition: NewAddition) -> Result<Proposed, JournalError>;

    /// The live (`proposed` or `approved`) entry of `key` and `address`, if there is one.
    async fn live_addition(&self, key: &str, address: Address) -> Result<Option<Addition>, JournalError>;

    /// The entries of `key`, every status, oldest first, at most `limit` (the newest ones).
    async fn additions(&self, key: &str, limit: usize) -> Result<Vec<Addition>, JournalError>;

    /// Stores `decision` on the live entry of `key` and `address` if the approver has not decided before:
    /// an approval that reaches the quorum makes a `proposed` entry `approved`; a rejection before
    /// `effective_ms` cancels it (`approved` or not). An entry in effect takes no decision.
    async fn decide_addition(
        &self,
        key: &str,
        address: Address,
        decision: Decision,
    ) -> Result<AdditionDecided, JournalError>;

    /// Makes the live entry of `key` and `address` `removed`, at `now_ms`; the entry removed, if there was
    /// one.
    async fn remove_addition(&self, key: &str, address: Address, now_ms: u64)
    -> Result<Option<Addition>, JournalError>;

    /// Every `approved` entry, of every key (those not in effect yet too: their `effective_ms` says when).
    async fn approved_additions(&self) -> Result<Vec<Addition>, JournalError>;
}
