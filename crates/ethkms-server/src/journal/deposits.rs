//! What the journal keeps of customer deposits ([`DepositStore`]): the deposit addresses handed out (one
//! per reference, however often or concurrently asked), the deposits found on chain (each once: its
//! transaction hash and log index are unique), the blocks read (so that a restart resumes and a reorg is
//! noticed against what was read), and each deposit's status — `pending` until it is deep enough,
//! `confirmed` (credit it) — or `removed` if its block left the chain first (never credited), `reversed`
//! if that happened after it was confirmed (a reorg deeper than the confirmations: an alarm; debit only
//! what was credited). A deposit removed or reversed whose transaction is mined again is `pending` again.
//!
//! Every change of a deposit takes the next number of one sequence (`change`), so a client reads what
//! changed since the last number it saw (`GET /v1/deposits?since=`).
//!
//! Apart from that status, each deposit has a [`SweepStatus`]: `unswept` while its value sits at the deposit
//! address, `sweeping` once a sweep (a row of the withdrawal engine, kind `sweep`) includes its address —
//! no other sweep includes it until that one is final — and `swept` once a sweep of its address is confirmed
//! after it (or its address held nothing of it when read: a deployed forwarder passes ether on at once).
//! A sweep that fails (provably unpaid) takes its deposits back to `unswept`.
//!
//! The watcher's writes carry the [`Fence`] of its lease (the journal lease named `@deposits`) and are
//! refused once another replica watches.

use std::fmt;

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;

use super::{Fence, JournalError, Withdrawal};
use crate::policy::Asset;

/// A deposit address as handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositAddressRow {
    /// Its place in the order addresses were handed out (from 1).
    pub seq: u64,
    /// The customer reference it was derived from.
    pub reference: String,
    /// The address.
    pub address: Address,
    /// The client that first asked for it.
    pub client: String,
    /// When, Unix milliseconds.
    pub created_ms: u64,
}

/// Where a deposit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DepositStatus {
    /// Seen in a block not yet deep enough.
    Pending,
    /// Deep enough: credit it.
    Confirmed,
    /// Its block left the chain before it was confirmed: never credited.
    Removed,
    /// Its block left the chain after it was confirmed (a reorg deeper than the confirmations).
    Reversed,
}

impl DepositStatus {
    /// Its name, in the journal and the REST API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Removed => "removed",
            Self::Reversed => "reversed",
        }
    }

    /// The status of `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Confirmed, Self::Removed, Self::Reversed]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

impl fmt::Display for DepositStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a deposit's value is: at its deposit address, in a sweep under way, or swept to the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SweepStatus {
    /// At the deposit address.
    Unswept,
    /// A sweep of its address is under way ([`DepositRow::sweep`]).
    Sweeping,
    /// With the parent: a sweep of its address was confirmed after it (or it never stayed at the address).
    Swept,
}

impl SweepStatus {
    /// Its name, in the journal and the REST API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unswept => "unswept",
            Self::Sweeping => "sweeping",
            Self::Swept => "swept",
        }
    }

    /// The sweep status of `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Unswept, Self::Sweeping, Self::Swept].into_iter().find(|status| status.as_str() == name)
    }
}

impl fmt::Display for SweepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deposit's key in the journal: its transaction hash and log index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DepositKey {
    /// Its transaction.
    pub tx_hash: B256,
    /// Its log's index in the block; `None` for a transaction's own value.
    pub log_index: Option<u64>,
}

/// A sweep to store ([`DepositStore::start_sweep`]): a row of the withdrawal engine of kind `sweep` — a call
/// of the factory by the sweeping key — and the deposits whose value it moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSweep {
    /// The row's id (`sweep-` and a UUID).
    pub id: String,
    /// The sweeping key's name.
    pub key: String,
    /// The factory called.
    pub factory: Address,
    /// What the engine signs from (JSON: the calldata), as an RPC row's request.
    pub request: String,
    /// The deposits it sweeps: each must be confirmed and unswept.
    pub deposits: Vec<DepositKey>,
}

/// A deposit found in a block, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeposit {
    /// Its transaction.
    pub tx_hash: B256,
    /// Its log's index in the block; `None` for a transaction's own value.
    pub log_index: Option<u64>,
    /// The deposit address.
    pub address: Address,
    /// What.
    pub asset: Asset,
    /// How much.
    pub amount: U256,
    /// Who sent it.
    pub sender: Address,
}

/// A block read for deposits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
}

/// A deposit as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRow {
    /// The number of its last change.
    pub change: u64,
    /// Its transaction.
    pub tx_hash: B256,
    /// Its log's index in the block; `None` for a transaction's own value.
    pub log_index: Option<u64>,
    /// The deposit address.
    pub address: Address,
    /// The reference of the address, if it was handed out by this journal.
    pub reference: Option<String>,
    /// What.
    pub asset: Asset,
    /// How much.
    pub amount: U256,
    /// Who sent it.
    pub sender: Address,
    /// The block it is in (or was, when removed).
    pub block_number: u64,
    /// That block's hash.
    pub block_hash: B256,
    /// Where it is.
    pub status: DepositStatus,
    /// Where its value is.
    pub sweep_status: SweepStatus,
    /// The sweep that moves (or moved) it: a row of the withdrawal engine.
    pub sweep: Option<String>,
    /// That sweep's transaction (mined, or the latest signed).
    pub sweep_tx_hash: Option<B256>,
    /// When it was first seen, Unix milliseconds.
    pub seen_ms: u64,
    /// When it last changed, Unix milliseconds.
    pub updated_ms: u64,
}

/// What the deposit watcher needs of a journal.
#[async_trait]
pub trait DepositStore: Send + Sync + fmt::Debug {
    /// The deposit address row of `reference`: stored with `address` and `client` the first time, the same
    /// row every time after (even if asked concurrently, on any replica).
    ///
    /// # Errors
    /// [`JournalError::Refused`] if `address` is already another reference's (a derivation mismatch).
    async fn deposit_address(
        &self,
        reference: &str,
        address: Address,
        client: &str,
    ) -> Result<DepositAddressRow, JournalError>;

    /// Up to `limit` deposit addresses handed out after `after_seq`, in order.
    async fn deposit_addresses(&self, after_seq: u64, limit: usize) -> Result<Vec<DepositAddressRow>, JournalError>;

    /// Records block `block` as read, with its deposits — in one transaction. A deposit already recorded is
    /// left as it is, unless a reorg took it back (`removed` or `reversed`) and it is now in this block (its
    /// transaction mined again): then it is pending again, with what it is now, and unswept (in no sweep). Answers how many were new or
    /// brought back.
    ///
    /// # Errors
    /// [`JournalError::Refused`] if another block of that number is recorded: a reader that lost the chain
    /// (or its lease) records nothing over what another recorded; it removes the block first.
    ///
    /// [`JournalError::Fenced`] if `fence` is no longer the watcher's lease.
    async fn record_block(
        &self,
        fence: &Fence,
        block: BlockRecord,
        deposits: Vec<NewDeposit>,
    ) -> Result<usize, JournalError>;

    /// The blocks read most recently, newest first, at most `limit`.
    async fn recent_blocks(&self, limit: usize) -> Result<Vec<BlockRecord>, JournalError>;

    /// Block `block` (that number with that hash) left the chain: forgets it as read, and its deposits become
    /// `removed` (or `reversed` if they were confirmed). Answers them; nothing if that block is not recorded.
    /// Fenced as [`record_block`](Self::record_block).
    async fn remove_block(&self, fence: &Fence, block: BlockRecord) -> Result<Vec<DepositRow>, JournalError>;

    /// Confirms the pending deposits in blocks up to `block` (deep enough now) that are recorded as read.
    /// Answers them.
    /// Fenced as [`record_block`](Self::record_block).
    async fn confirm_deposits(&self, fence: &Fence, block: u64) -> Result<Vec<DepositRow>, JournalError>;

    /// Up to `limit` deposits whose last change came after change `since`, in the order of their changes.
    async fn deposits(&self, since: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError>;

    /// Up to `limit` confirmed deposits still `unswept` whose last change came after change `after`, in the
    /// order of their changes: what a sweep may take (a sweeper pages through them, so that old deposits not
    /// worth sweeping do not hide newer ones).
    async fn unswept(&self, after: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError>;

    /// Stores `sweep` as an `accepted` row of kind `sweep` and marks its deposits `sweeping` — in one
    /// transaction, fenced by the watcher's lease — and wakes the key's owner. `None` (nothing stored) if one
    /// of its deposits is no longer confirmed and unswept: no deposit is ever in two sweeps at once.
    async fn start_sweep(&self, fence: &Fence, sweep: NewSweep) -> Result<Option<Withdrawal>, JournalError>;

    /// The sweeps that still have deposits `sweeping`, each with the addresses of those deposits: pairs of
    /// the sweep's id and an address.
    async fn open_sweeps(&self) -> Result<Vec<(String, Address)>, JournalError>;

    /// Sweep `id` is final. Mined and confirmed in block `Some(block)`: its deposits are `swept`, and so is
    /// every deposit not yet swept at the same address and asset in an earlier block (its value went too).
    /// Failed (`None`: provably unpaid, or reverted): its deposits are `unswept` again. Answers the deposits
    /// changed. Fenced as [`record_block`](Self::record_block). (Earlier deposits must be confirmed: a
    /// pending one may yet leave the chain and come back in a later block.)
    async fn finish_sweep(&self, fence: &Fence, id: &str, block: Option<u64>) -> Result<Vec<DepositRow>, JournalError>;

    /// Deposits `unswept` whose address holds nothing of their asset any more (a deployed forwarder passed
    /// ether on as it came, or a sweep from outside the service took it): `swept`, with no sweep. Answers
    /// those changed. Fenced as [`record_block`](Self::record_block).
    async fn mark_swept(&self, fence: &Fence, deposits: Vec<DepositKey>) -> Result<Vec<DepositRow>, JournalError>;

    /// For each of `addresses` that has any, the ether its deposits had brought it as of block `at`: deposits
    /// recorded in block `at` or before, not removed, and not swept by then — unswept, in a sweep, or swept by
    /// a sweep mined after `at`. What a balance check at `at` expects the address to hold (more is ether that
    /// no recorded deposit accounts for).
    async fn unswept_ether(&self, addresses: Vec<Address>, at: u64) -> Result<Vec<(Address, U256)>, JournalError>;
}
