//! The journal: every transaction the service signs — client withdrawals, `eth_sendTransaction` and
//! `eth_signTransaction` requests, gap fills — with its nonce and each signed attempt, and every amount
//! counted against a daily limit, so that a crash loses nothing and replays nothing twice.
//!
//! [`JournalStore`] is what the withdrawal engine needs of a journal; [`SqliteJournal`] implements it in
//! one SQLite file (the embedded default). Every transition the engine's invariant depends on is one
//! conditional write:
//!
//! - [`claim`](JournalStore::claim): `accepted → signing` with a nonce, only if the row is still
//!   `accepted` and has no nonce — so exactly one task signs a withdrawal, however many try;
//! - [`add_attempt`](JournalStore::add_attempt): stores a signed transaction before it is broadcast, and
//!   refuses one whose nonce is not the row's — so a withdrawal never holds two nonces;
//! - [`mark_failed`](JournalStore::mark_failed) and [`cancel`](JournalStore::cancel) give the amount back
//!   to the daily limit only for rows whose value provably never left.

mod sqlite;

use std::fmt;

use alloy_primitives::{Address, B256, Bytes, U256};
use async_trait::async_trait;

use crate::policy::{Asset, Denial};

pub use sqlite::{SCHEMA_VERSION, SqliteJournal, now_ms};

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
}

/// Where a row is. The engine moves it only forwards, except that a reorg takes `mined` (or a mined
/// cancellation) back to `submitted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Status {
    /// Stored, not yet claimed for signing.
    Accepted,
    /// Claimed for signing with a nonce; no transaction stored yet.
    Signing,
    /// A signed transaction is stored; the node has not confirmed it has it.
    Signed,
    /// The node has (one of) its transactions.
    Submitted,
    /// One of its transactions is mined and succeeded; waiting for confirmations.
    Mined,
    /// Mined and confirmed: final.
    Confirmed,
    /// Will not happen, and provably did not move value: refused before broadcast, its nonce taken by
    /// another transaction, or mined and reverted. Final.
    Failed,
    /// Cancelled: before signing, or by a zero-value transaction that took its nonce (mined). Final once
    /// confirmed; a reorg before that can take it back to `submitted`.
    Cancelled,
}

impl Status {
    /// The name used in the journal and the API.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Signing => "signing",
            Self::Signed => "signed",
            Self::Submitted => "submitted",
            Self::Mined => "mined",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "accepted" => Self::Accepted,
            "signing" => Self::Signing,
            "signed" => Self::Signed,
            "submitted" => Self::Submitted,
            "mined" => Self::Mined,
            "confirmed" => Self::Confirmed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the row leaves the engine's hands: confirmed, failed, or cancelled before signing. (A
    /// cancellation by a mined transaction is still followed until confirmed.)
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::Failed)
    }
}

/// As its [name](Status::as_str), in the REST API.
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a row exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client's REST withdrawal.
    Withdrawal,
    /// A transaction a client asked for through `eth_sendTransaction` or `eth_signTransaction`.
    Rpc,
    /// A zero-value transfer to the key itself that uses up a nonce left free by a transaction that was
    /// refused before it was ever broadcast.
    GapFill,
}

impl Kind {
    /// The name used in the journal and the audit log.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Withdrawal => "withdrawal",
            Self::Rpc => "rpc",
            Self::GapFill => "gap_fill",
        }
    }

    /// The kind named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "withdrawal" => Self::Withdrawal,
            "rpc" => Self::Rpc,
            "gap_fill" => Self::GapFill,
            _ => return None,
        })
    }
}

/// One signed transaction of a row (several when it was re-signed with higher fees, or cancelled; at most
/// one of them can be mined, since they share the nonce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The transaction hash.
    pub tx_hash: B256,
    /// The signed transaction, EIP-2718 encoded.
    pub raw: Bytes,
    /// Max fee per gas (the gas price of a legacy transaction).
    pub max_fee_per_gas: u128,
    /// Priority fee per gas (the gas price of a legacy transaction).
    pub priority_fee_per_gas: u128,
    /// When it was signed, Unix milliseconds.
    pub signed_ms: u64,
    /// A cancellation: a zero-value transfer to the key itself with the row's nonce.
    pub cancel: bool,
}

/// A row as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    /// Its id.
    pub id: String,
    /// A client's withdrawal, an RPC transaction, or a gap fill.
    pub kind: Kind,
    /// The client that asked for it (`None` for gap fills).
    pub client: Option<String>,
    /// The client's idempotency key (withdrawals only).
    pub idempotency_key: Option<String>,
    /// The key's name in the configuration.
    pub key: String,
    /// Who receives it (for an RPC transaction, its `to`).
    pub recipient: Address,
    /// What is sent.
    pub asset: Asset,
    /// How much: wei, or the token's smallest unit.
    pub amount: U256,
    /// For an RPC transaction: the client's transaction request (JSON), from which it is signed.
    pub request: Option<String>,
    /// Where it is.
    pub status: Status,
    /// Its nonce, once claimed.
    pub nonce: Option<u64>,
    /// The transaction mined, or the latest signed.
    pub tx_hash: Option<B256>,
    /// The block it was mined in.
    pub block_number: Option<u64>,
    /// The hash of that block.
    pub block_hash: Option<B256>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was accepted, Unix milliseconds.
    pub created_ms: u64,
    /// A client asked to cancel it after it was signed.
    pub cancel_requested: bool,
    /// Its outcome is final: confirmed, or a mined cancellation confirmed.
    pub confirmed: bool,
    /// Its signed transactions, oldest first.
    pub attempts: Vec<Attempt>,
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

/// A row the service makes itself: an RPC transaction (status `accepted`) or a gap fill (status `signing`
/// with its nonce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRow {
    /// [`Kind::Rpc`] or [`Kind::GapFill`].
    pub kind: Kind,
    /// The client, for an RPC transaction.
    pub client: Option<String>,
    /// The key's name.
    pub key: String,
    /// The transaction's `to` (the key itself for a gap fill).
    pub recipient: Address,
    /// The ether value.
    pub amount: U256,
    /// The client's request (JSON), for an RPC transaction.
    pub request: Option<String>,
    /// The nonce a gap fill fills.
    pub nonce: Option<u64>,
    /// What the policy counted against the daily limits (a total per asset), recorded in the same commit.
    pub spends: Vec<(Asset, U256)>,
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

/// The check [`JournalStore::insert`] runs in the same serialised step as the insert: the amounts to count
/// against the daily limits (a total per asset), or the denial.
pub type Check = Box<dyn FnOnce() -> Result<Vec<(Asset, U256)>, Denial> + Send>;

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

/// What the withdrawal engine needs of a journal. Every method answers only once its write is durable.
#[async_trait]
pub trait JournalStore: Send + Sync + fmt::Debug {
    /// Stores a client withdrawal under a fresh id, unless its client has used its idempotency key before
    /// (then the withdrawal stored then is returned). `check` runs first, in the same serialised step, so
    /// two requests with the same idempotency key cannot both pass it; its amount is recorded against the
    /// daily limit in the same commit.
    async fn insert(&self, withdrawal: NewWithdrawal, check: Check) -> Result<Inserted, JournalError>;

    /// Stores a row the service makes itself (see [`NewRow`]).
    async fn insert_row(&self, row: NewRow) -> Result<Withdrawal, JournalError>;

    /// `accepted → signing` with `nonce`, only if the row is still `accepted` without a nonce. Returns
    /// whether this call claimed it.
    async fn claim(&self, id: &str, nonce: u64) -> Result<bool, JournalError>;

    /// Stores a signed transaction of row `id` (status `signing → signed`; later attempts keep the status).
    /// Refused ([`JournalError::Refused`]) unless the row holds exactly `nonce` and is still open.
    async fn add_attempt(&self, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError>;

    /// `signed → submitted`: the node has one of its transactions.
    async fn mark_submitted(&self, id: &str) -> Result<(), JournalError>;

    /// Its nonce was mined by `tx_hash` (one of its attempts) in block `block`/`block_hash`; with
    /// `confirmed`, already deep enough to be final (one write instead of two).
    async fn mark_mined(
        &self,
        id: &str,
        tx_hash: B256,
        block: u64,
        block_hash: B256,
        outcome: MinedAs,
        confirmed: bool,
    ) -> Result<(), JournalError>;

    /// A reorg dropped the mined transaction: back to `submitted` (its stored transactions are broadcast
    /// again as they are).
    async fn mark_unmined(&self, id: &str) -> Result<(), JournalError>;

    /// `mined → confirmed` (a mined cancellation stays `cancelled`): final.
    async fn mark_confirmed(&self, id: &str) -> Result<(), JournalError>;

    /// Marks row `id` failed for `reason`. With `release`, its amounts are given back to the daily limits
    /// (returned): only for a row whose value provably did not leave.
    async fn mark_failed(&self, id: &str, reason: &str, release: bool) -> Result<Vec<Released>, JournalError>;

    /// A client asks to cancel row `id` (see [`Cancelled`]).
    async fn cancel(&self, id: &str) -> Result<Cancelled, JournalError>;

    /// Records an amount counted against a daily limit outside a row.
    async fn record_spend(&self, key: &str, asset: Asset, amount: U256) -> Result<(), JournalError>;

    /// The amounts counted since `since_ms`: (key, asset, amount, Unix milliseconds).
    async fn spends_since(&self, since_ms: u64) -> Result<Vec<(String, Asset, U256, u64)>, JournalError>;

    /// Row `id`, if it exists.
    async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError>;

    /// Every row not yet final (accepted, signing, signed, submitted, mined, or a mined cancellation not
    /// yet confirmed), oldest first.
    async fn unfinished(&self) -> Result<Vec<Withdrawal>, JournalError>;

    /// Finishes what is queued and closes the journal (releasing any lock).
    fn close(&self);
}
