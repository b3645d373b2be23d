//! The journal: every transaction the service signs — client withdrawals, `eth_sendTransaction` and
//! `eth_signTransaction` requests, gap fills — with its nonce and each signed attempt, and every amount
//! counted against a daily limit, so that a crash loses nothing and replays nothing twice.
//!
//! [`JournalStore`] is what the withdrawal engine needs of a journal; [`SqliteJournal`] implements it in
//! one SQLite file (the embedded default), [`PostgresJournal`] in a PostgreSQL database that several
//! replicas share. Every transition the engine's invariant depends on is one
//! conditional write:
//!
//! - [`claim`](JournalStore::claim): `accepted → signing` with a nonce, only if the row is still
//!   `accepted` and has no nonce — so exactly one task signs a withdrawal, however many try;
//! - [`add_attempt`](JournalStore::add_attempt): stores a signed transaction before it is broadcast, and
//!   refuses one whose nonce is not the row's — so a withdrawal never holds two nonces;
//! - [`mark_failed`](JournalStore::mark_failed) and [`cancel`](JournalStore::cancel) give the amount back
//!   to the daily limit only for rows whose value provably never left.

pub mod allowlist;
#[cfg(test)]
mod allowlist_conformance;
#[cfg(test)]
mod approval_conformance;
pub mod approvals;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod deposit_conformance;
pub mod deposits;
mod postgres;
mod row;
mod sqlite;
#[cfg(test)]
mod webhook_conformance;
pub mod webhooks;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;

pub use crate::nonces::Nonces;
use crate::policy::{Asset, Denial};

pub use allowlist::{Addition, AdditionDecided, AllowlistStatus, AllowlistStore, NewAddition, Proposed};
pub use approvals::{ApprovalState, ApprovalStore, ApprovalTerms, Decided, Decision, DecisionRow};
pub use deposits::{
    BlockRecord, DepositAddressRow, DepositKey, DepositRow, DepositStatus, DepositStore, NewDeposit, NewSweep,
    SweepStatus,
};
pub use postgres::PostgresJournal;
pub use row::{Attempt, Kind, Status, SweepRequest, Withdrawal};
pub use sqlite::{SCHEMA_VERSION, SqliteJournal, now_ms};
pub use webhooks::{DeliveryState, Outcome, WEBHOOK_LEASE, WebhookEvent, WebhookStore};

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// SQLite failed.
    #[error("withdrawal journal {path}: {source}")]
    Sqlite {
        /// The database file.
        path: std::path::PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file holds something this version cannot read, or cannot be used.
    #[error("withdrawal journal {path}: {reason}")]
    Corrupt {
        /// The database file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A write that would break the engine's invariant (a second nonce for one withdrawal, say) was
    /// refused; nothing was stored.
    #[error("withdrawal journal refused a write: {0}")]
    Refused(String),
    /// The journal's thread has stopped (after a fatal error, or after [`JournalStore::close`]).
    #[error("the withdrawal journal has stopped")]
    Closed,
    /// The journal's write queue is full: nothing was stored; try again in a moment.
    #[error("the withdrawal journal's write queue is full ({0} writes waiting); nothing was stored")]
    Busy(usize),
    /// An engine write carried a lease that is no longer the key's: another replica holds the key now.
    #[error("key `{key}`: this replica's lease (epoch {epoch}) is no longer current; nothing was stored")]
    Fenced {
        /// The key.
        key: String,
        /// The epoch the write carried.
        epoch: u64,
    },
    /// PostgreSQL failed (or could not be reached); nothing of the operation was stored.
    #[error("withdrawal journal (PostgreSQL): {0}")]
    Postgres(String),
}

/// A client withdrawal to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWithdrawal {
    /// The client.
    pub client: String,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// The key's name.
    pub key: String,
    /// Who receives it.
    pub recipient: Address,
    /// What is sent.
    pub asset: Asset,
    /// How much.
    pub amount: U256,
    /// Its approval terms, if it needs approvals before the engine may sign it (stored `pending_approval`).
    pub approval: Option<ApprovalTerms>,
}

impl NewWithdrawal {
    /// Whether `existing` was made from the same request.
    #[must_use]
    pub fn same_as(&self, existing: &Withdrawal) -> bool {
        existing.key == self.key
            && existing.recipient == self.recipient
            && existing.asset == self.asset
            && existing.amount == self.amount
    }
}

/// An RPC client's transaction to store (status `accepted`): `eth_sendTransaction` or `eth_signTransaction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRpc {
    /// Its id, chosen by the caller (`tx-` and a UUID), so that the caller can mark it as its own before it
    /// is stored.
    pub id: String,
    /// The client.
    pub client: String,
    /// The key's name.
    pub key: String,
    /// The transaction's `to`.
    pub recipient: Address,
    /// The ether value.
    pub amount: U256,
    /// The client's request (JSON), from which it is signed.
    pub request: String,
}

/// The answer to [`JournalStore::insert`].
#[derive(Debug)]
pub enum Inserted {
    /// Stored as new.
    New(Withdrawal),
    /// The client has used this idempotency key before: the withdrawal it made.
    Existing(Withdrawal),
    /// The check run before storing refused it; nothing was stored.
    Refused(Denial),
}

/// What a key has moved of each asset in the 24 hours before now, over every replica.
pub type Spent = BTreeMap<Asset, U256>;

/// The daily-limit check a journal runs in the same transaction as the write it guards, after reading what
/// the key has moved in the last 24 hours — under a lock on the key's limits, so that two requests (on any
/// replicas) cannot both pass a limit that only one fits under.
pub struct LimitCheck {
    /// The assets whose last 24 hours the check reads (those with a daily limit); the others count as zero.
    pub assets: Vec<Asset>,
    /// Given what was moved, the amounts to count now (a total per asset), or the denial.
    pub check: CheckFn,
}

/// See [`LimitCheck::check`].
pub type CheckFn = Box<dyn FnOnce(&Spent) -> Result<Vec<(Asset, U256)>, Denial> + Send>;

impl LimitCheck {
    /// A check that counts `amounts` without reading anything (no daily limit applies).
    #[must_use]
    pub fn count(amounts: Vec<(Asset, U256)>) -> Self {
        Self { assets: Vec::new(), check: Box::new(move |_| Ok(amounts)) }
    }
}

impl fmt::Debug for LimitCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitCheck").field("assets", &self.assets).finish_non_exhaustive()
    }
}

/// The right of one replica to process one key's rows: the key and its lease's epoch. Every write of the
/// engine carries it, and the journal refuses ([`JournalError::Fenced`]) one whose epoch is no longer the
/// key's — in the same transaction as the write — so a replica that lost its lease (a long pause, a
/// partition) can store nothing more for the key, and therefore broadcast nothing new.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The key's name.
    pub key: String,
    /// The lease's epoch: one more at every change of holder.
    pub epoch: u64,
}

/// A running replica, as [`JournalStore::replicas`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Its name (`[replica] name`).
    pub name: String,
    /// How many keys' leases it holds.
    pub leases: usize,
}

/// A key's lease as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The key's name.
    pub key: String,
    /// The replica holding it.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// When it runs out unless renewed, Unix milliseconds (the journal's clock).
    pub expires_ms: u64,
}

/// The answer to [`JournalStore::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed with `nonce`; the key's nonces after it.
    Claimed {
        /// The nonce taken.
        nonce: u64,
        /// The key's nonces now.
        nonces: Nonces,
    },
    /// No longer `accepted` (claimed by another task, cancelled): nothing changed.
    NotAccepted,
    /// The client asked for a nonce that is not the next: nothing changed.
    NotNext {
        /// The nonce the key would take next.
        next: u64,
    },
}

/// What [`JournalStore::mark_failed`] gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// The row's amounts, to the daily limits: its value provably never left.
    pub spends: bool,
    /// The row's nonce, to the key's free nonces: nothing with it was ever in a pool.
    pub nonce: bool,
}

impl Release {
    /// Both: the row was refused before anything of it could be mined.
    pub const UNPAID: Self = Self { spends: true, nonce: true };
}

/// How a row's nonce was settled on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinedAs {
    /// A payment attempt was mined and succeeded: [`Status::Mined`].
    Paid,
    /// A payment attempt was mined and reverted: [`Status::Failed`] (no value moved; fees were paid).
    Reverted,
    /// The cancellation was mined: [`Status::Cancelled`].
    Cancelled,
}

/// The answer to [`JournalStore::cancel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It had not been signed: now [`Status::Cancelled`], its amounts given back to the daily limits.
    Now(Vec<Released>),
    /// It is signed: a cancellation has been requested (a zero-value transaction with its nonce).
    Requested,
    /// Too late or nothing to do: its status.
    Unchanged(Status),
    /// No such row.
    NotFound,
}

/// An amount given back to a daily limit (a row that failed or was cancelled before its value left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The key.
    pub key: String,
    /// The asset.
    pub asset: Asset,
    /// The amount.
    pub amount: U256,
    /// When it had been counted, Unix milliseconds.
    pub at_ms: u64,
}

/// What the service needs of a journal. Every method answers only once its write is durable.
///
/// Requests write from any replica: [`insert`](Self::insert), [`insert_rpc`](Self::insert_rpc),
/// [`cancel`](Self::cancel) and the rest of the first group. The engine's writes — everything that takes
/// a nonce, stores a transaction or moves a row's status — carry the [`Fence`] of the key's lease and are
/// refused once another replica holds it.
#[async_trait]
pub trait JournalStore: ApprovalStore + AllowlistStore + Send + Sync + fmt::Debug {
    /// Stores a client withdrawal under a fresh id, unless its client has used its idempotency key before
    /// (then the withdrawal stored then is returned). `check` runs first, in the same transaction, under the
    /// key's limit lock, so two requests with the same idempotency key cannot both pass it and two requests
    /// cannot both pass a daily limit; its amounts are recorded in the same commit.
    async fn insert(&self, withdrawal: NewWithdrawal, check: LimitCheck) -> Result<Inserted, JournalError>;

    /// Stores an RPC client's transaction (status `accepted`) after `check`, as [`insert`](Self::insert).
    async fn insert_rpc(&self, row: NewRpc, check: LimitCheck) -> Result<Result<Withdrawal, Denial>, JournalError>;

    /// Runs `check` for `key` and records its amounts under `tag` (typed data whose permits count against
    /// the limits), as [`insert`](Self::insert) does.
    async fn record_spends(
        &self,
        key: &str,
        tag: &str,
        check: LimitCheck,
    ) -> Result<Result<Vec<(Asset, U256)>, Denial>, JournalError>;

    /// Gives back the amounts recorded under `tag` (what was counted was not signed after all).
    async fn release_spends(&self, tag: &str) -> Result<Vec<Released>, JournalError>;

    /// A client asks to cancel row `id` (see [`Cancelled`]).
    async fn cancel(&self, id: &str) -> Result<Cancelled, JournalError>;

    /// `accepted → failed` for `reason`, its amounts given back, only if nobody claimed it yet (an RPC client
    /// that stopped waiting). Returns whether it did.
    async fn abandon(&self, id: &str, reason: &str) -> Result<bool, JournalError>;

    /// Row `id`, if it exists.
    async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError>;

    /// The rows of `ids` that exist, in no particular order (one read where the journal can: a sweep takes
    /// the rows other replicas posted in one go).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Withdrawal>, JournalError> {
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            rows.extend(self.get(id).await?);
        }
        Ok(rows)
    }

    /// Every row not yet final (accepted, signing, signed, submitted, mined, or a mined cancellation not
    /// yet confirmed) — of `key`, or of every key — oldest first.
    async fn unfinished(&self, key: Option<&str>) -> Result<Vec<Withdrawal>, JournalError>;

    /// The ids of `key`'s rows still `accepted` (withdrawals and RPC transactions), oldest first: the work
    /// waiting for the key's owner (ids only: most are already being processed, and a sweep loads the others).
    async fn accepted(&self, key: &str) -> Result<Vec<String>, JournalError>;

    /// The ids of `key`'s open rows whose cancellation was asked for.
    async fn cancellations(&self, key: &str) -> Result<Vec<String>, JournalError>;

    /// Whether the journal answers (`/readyz`).
    async fn ping(&self) -> Result<(), JournalError>;

    /// Keys with new work stored by other replicas, as they are stored (a journal shared by replicas);
    /// `None` when every write comes through this process.
    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }

    /// Takes `key`'s lease for `holder` for `ttl` — if nobody holds it, it has run out, or `holder` itself
    /// holds it (a restarted replica of that name) — always with a new epoch (returned); `None` while
    /// another holder's lease runs. (SQLite, one server per file, always takes it.)
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, JournalError>;

    /// Extends the lease of `fence` for `ttl` if `holder` still holds it at that epoch; `false` if not.
    async fn renew_lease(&self, fence: &Fence, holder: &str, ttl: Duration) -> Result<bool, JournalError>;

    /// Ends the lease of `fence` now (at shutdown), so another replica may take the key at once.
    async fn release_lease(&self, fence: &Fence, holder: &str) -> Result<(), JournalError>;

    /// Every key's lease.
    async fn leases(&self) -> Result<Vec<LeaseRow>, JournalError>;

    /// Says that replica `name` runs, until `ttl` from now (renewed with its leases; `ttl` zero when it
    /// stops), so that the replicas see one that holds no key yet when they share the keys out. Nothing in
    /// a journal that one server uses (SQLite).
    async fn announce(&self, name: &str, ttl: Duration) -> Result<(), JournalError> {
        let _ = (name, ttl);
        Ok(())
    }

    /// The replicas whose announcement runs, by name, each with the number of keys whose lease it holds
    /// (on the journal's clock); empty in a journal that one server uses.
    async fn replicas(&self) -> Result<Vec<ReplicaRow>, JournalError> {
        Ok(Vec::new())
    }

    /// Sets the key's nonces after taking its lease: every nonce an open row holds is in use, the node's
    /// `pending` count and those below it are used, and the nonces between them are free.
    async fn recover_nonces(&self, fence: &Fence, pending: u64) -> Result<Nonces, JournalError>;

    /// `accepted → signing` with the key's next nonce (after the node's `pending` count), in one
    /// transaction with the nonce's allocation, only if the row is still `accepted` without a nonce — and,
    /// with `wanted`, only if that is the nonce it would get.
    async fn claim(&self, fence: &Fence, id: &str, pending: u64, wanted: Option<u64>) -> Result<Claim, JournalError>;

    /// Gives back `nonces` that nothing of ours holds (a transaction sent elsewhere that vanished).
    async fn release_nonces(&self, fence: &Fence, nonces: Range<u64>) -> Result<Nonces, JournalError>;

    /// Stores a gap fill (a zero-value transfer to `recipient`, the key itself) with the free `nonce`, in
    /// the same transaction as taking it; `None` if the nonce is no longer free.
    async fn insert_gap_fill(
        &self,
        fence: &Fence,
        nonce: u64,
        recipient: Address,
    ) -> Result<Option<Withdrawal>, JournalError>;

    /// Stores a signed transaction of row `id` (status `signing → signed`; later attempts keep the status).
    /// Refused ([`JournalError::Refused`]) unless the row holds exactly `nonce` and is still open.
    async fn add_attempt(&self, fence: &Fence, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError>;

    /// `signed → submitted`: the node has one of its transactions.
    async fn mark_submitted(&self, fence: &Fence, id: &str) -> Result<(), JournalError>;

    /// Its nonce was mined by `tx_hash` (one of its attempts) in block `block`/`block_hash`; with
    /// `confirmed`, already deep enough to be final (one write instead of two).
    #[allow(clippy::too_many_arguments)]
    async fn mark_mined(
        &self,
        fence: &Fence,
        id: &str,
        tx_hash: B256,
        block: u64,
        block_hash: B256,
        outcome: MinedAs,
        confirmed: bool,
    ) -> Result<(), JournalError>;

    /// A reorg dropped the mined transaction: back to `submitted` (its stored transactions are broadcast
    /// again as they are).
    async fn mark_unmined(&self, fence: &Fence, id: &str) -> Result<(), JournalError>;

    /// `mined → confirmed` (a mined cancellation stays `cancelled`): final.
    async fn mark_confirmed(&self, fence: &Fence, id: &str) -> Result<(), JournalError>;

    /// Marks row `id` failed for `reason`, giving back what `release` says; returns the amounts given back
    /// and the key's nonces after it.
    async fn mark_failed(
        &self,
        fence: &Fence,
        id: &str,
        reason: &str,
        release: Release,
    ) -> Result<(Vec<Released>, Nonces), JournalError>;

    /// Finishes what is queued and closes the journal (releasing any lock).
    fn close(&self);
}
