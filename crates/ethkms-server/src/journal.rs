//! The withdrawal journal: every withdrawal, each transaction signed for it, and every amount counted
//! against a daily limit, in SQLite (WAL mode, `synchronous = FULL`), so that a crash loses nothing and
//! replays nothing twice.
//!
//! One thread owns the connection. Operations queue up while a commit is on disk and then share the
//! next one ("group commit"): each runs in its own savepoint, so one failing operation does not undo
//! the others, and none is answered before the commit holding it is durable.
//!
//! The order of writes is what makes restarts safe: a withdrawal is stored before it is acknowledged,
//! and a signed transaction (with its nonce) is stored before it is broadcast. On restart a withdrawal
//! with a stored transaction is broadcast again, never signed anew with another nonce; one without
//! is signed as if new.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, Bytes, U256};
use rusqlite::{Connection, OptionalExtension, params};

use crate::policy::Asset;

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS withdrawals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client TEXT,
    idempotency_key TEXT,
    key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    status TEXT NOT NULL,
    nonce INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    error TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (client, idempotency_key)
);
CREATE INDEX IF NOT EXISTS open_withdrawals ON withdrawals (status)
    WHERE status IN ('accepted', 'signed', 'submitted');
CREATE TABLE IF NOT EXISTS attempts (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    number INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    priority_fee_per_gas TEXT NOT NULL,
    signed_ms INTEGER NOT NULL,
    PRIMARY KEY (withdrawal, number)
);
CREATE TABLE IF NOT EXISTS spends (
    key TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// SQLite failed.
    #[error("withdrawal journal {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file holds something this version cannot read.
    #[error("withdrawal journal {path}: {reason}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The journal's thread has stopped (after a fatal error).
    #[error("the withdrawal journal has stopped")]
    Closed,
}

/// Where a withdrawal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Stored, not yet signed.
    Accepted,
    /// Signed and stored; the node has not confirmed it has the transaction.
    Signed,
    /// The node has the transaction.
    Submitted,
    /// Mined and successful.
    Mined,
    /// Will not happen: refused by the node or the key service, or mined and reverted.
    Failed,
}

impl Status {
    /// The name used in the journal and the API.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Signed => "signed",
            Self::Submitted => "submitted",
            Self::Mined => "mined",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "accepted" => Self::Accepted,
            "signed" => Self::Signed,
            "submitted" => Self::Submitted,
            "mined" => Self::Mined,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Whether the withdrawal will not change any more.
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Mined | Self::Failed)
    }
}

/// Why a row exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client's withdrawal.
    Withdrawal,
    /// A zero-value transfer to the key itself that uses up a nonce left free by a failed submission.
    GapFill,
}

/// One signed transaction of a withdrawal (a withdrawal has several when it was re-broadcast with
/// higher fees; at most one of them can be mined, since they share the nonce).
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
}

/// A withdrawal as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    /// Its id.
    pub id: String,
    /// A client's withdrawal, or a gap fill.
    pub kind: Kind,
    /// The client that asked for it (`None` for gap fills).
    pub client: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// The key's name in the configuration.
    pub key: String,
    /// Who receives it.
    pub recipient: Address,
    /// What is sent.
    pub asset: Asset,
    /// How much: wei, or the token's smallest unit.
    pub amount: U256,
    /// Where it is.
    pub status: Status,
    /// Its nonce, once signed.
    pub nonce: Option<u64>,
    /// The transaction mined, or the latest signed.
    pub tx_hash: Option<B256>,
    /// The block it was mined in.
    pub block_number: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was accepted, Unix milliseconds.
    pub created_ms: u64,
    /// Its signed transactions, oldest first.
    pub attempts: Vec<Attempt>,
}

/// A withdrawal to store.
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

/// The answer to [`Journal::insert`].
#[derive(Debug)]
pub enum Inserted<D> {
    /// Stored as new.
    New(Withdrawal),
    /// The client has used this idempotency key before: the withdrawal it made.
    Existing(Withdrawal),
    /// The check run before storing refused it; nothing was stored.
    Refused(D),
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Reply + Send>;

/// The journal: a handle on the thread that owns the database. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    path: PathBuf,
    jobs: mpsc::Sender<Message>,
    /// Answered when the thread has closed the database.
    closed: std::sync::Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
}

enum Message {
    Job(Job),
    Close,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The most operations one commit holds.
const MAX_BATCH: usize = 512;

/// Now, in Unix milliseconds.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(0))
}

impl Journal {
    /// Opens (or creates) the journal at `path` and starts its thread.
    ///
    /// # Errors
    /// [`JournalError::Sqlite`] if the file cannot be opened or is not a database;
    /// [`JournalError::Corrupt`] if it was written by a newer version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        let sqlite = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => JournalError::Corrupt {
                path: path.clone(),
                reason: "it is locked: another ethkms-server is using this journal".into(),
            },
            _ => JournalError::Sqlite { path: path.clone(), source },
        };
        let connection = Connection::open(&path).map_err(sqlite)?;
        connection.busy_timeout(std::time::Duration::ZERO).map_err(sqlite)?;
        // One server per journal: the lock is taken by the first write below and held until the
        // process ends (the operating system releases it even after kill -9).
        connection.execute_batch("PRAGMA locking_mode = EXCLUSIVE").map_err(sqlite)?;
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Corrupt { path, reason: format!("cannot switch to WAL mode (it is {mode})") });
        }
        connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(sqlite)?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(sqlite)?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::Corrupt {
                path,
                reason: format!("schema version {version} is newer than this program's ({SCHEMA_VERSION})"),
            });
        }
        connection.execute_batch(SCHEMA).map_err(sqlite)?;
        connection.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")).map_err(sqlite)?;
        let (jobs, queue) = mpsc::channel();
        let (closing, closed) = mpsc::channel();
        std::thread::Builder::new()
            .name("ethkms-journal".into())
            .spawn(move || {
                writer(&connection, &queue);
                drop(connection);
                let _ = closing.send(());
            })
            .map_err(|error| JournalError::Corrupt { path: path.clone(), reason: format!("thread: {error}") })?;
        Ok(Self { path, jobs, closed: std::sync::Arc::new(std::sync::Mutex::new(closed)) })
    }

    /// Finishes what is queued, closes the database and releases its lock. Operations on this
    /// journal (or its clones) fail with [`JournalError::Closed`] afterwards.
    pub fn close(&self) {
        if self.jobs.send(Message::Close).is_ok() {
            let _ = self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
        }
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `operation` in the next commit and answers once that commit is on disk.
    async fn run<R: Send + 'static>(
        &self,
        operation: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, JournalError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = match connection {
                Ok(connection) => savepoint(connection, operation).map_err(Failure::Sqlite),
                Err(reason) => Err(Failure::Commit(reason.to_owned())),
            };
            Box::new(move |committed: Result<(), String>| {
                let answer = match committed {
                    Ok(()) => result,
                    Err(reason) => Err(Failure::Commit(reason)),
                };
                let _ = sender.send(answer);
            })
        });
        self.jobs.send(Message::Job(job)).map_err(|_| JournalError::Closed)?;
        match receiver.await.map_err(|_| JournalError::Closed)? {
            Ok(value) => Ok(value),
            Err(Failure::Sqlite(source)) => Err(JournalError::Sqlite { path: self.path.clone(), source }),
            Err(Failure::Commit(reason)) => Err(JournalError::Corrupt { path: self.path.clone(), reason }),
        }
    }

    /// Stores `withdrawal` under a fresh id, unless its client has used its idempotency key before
    /// (then the withdrawal stored then is returned). `check` runs first, inside the same serialised
    /// step (so two requests with the same idempotency key cannot both pass it): an `Err` stores
    /// nothing and is returned as [`Inserted::Refused`]; an `Ok` gives the amount recorded against the
    /// key's daily limit in the same commit.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn insert<D: Send + 'static>(
        &self,
        withdrawal: NewWithdrawal,
        check: impl FnOnce() -> Result<(Asset, U256), D> + Send + 'static,
    ) -> Result<Inserted<D>, JournalError> {
        self.run(move |connection| {
            let existing: Option<String> = connection
                .query_row(
                    "SELECT id FROM withdrawals WHERE client = ?1 AND idempotency_key = ?2",
                    params![withdrawal.client, withdrawal.idempotency_key],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                return Ok(Inserted::Existing(load(connection, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?));
            }
            let (asset, amount) = match check() {
                Ok(spend) => spend,
                Err(denial) => return Ok(Inserted::Refused(denial)),
            };
            let id = uuid::Uuid::new_v4().to_string();
            let now = now_ms();
            connection.execute(
                "INSERT INTO withdrawals (id, kind, client, idempotency_key, key, recipient, asset, amount, status, \
                 created_ms, updated_ms) VALUES (?1, 'withdrawal', ?2, ?3, ?4, ?5, ?6, ?7, 'accepted', ?8, ?8)",
                params![
                    id,
                    withdrawal.client,
                    withdrawal.idempotency_key,
                    withdrawal.key,
                    withdrawal.recipient.to_string(),
                    asset_text(withdrawal.asset),
                    withdrawal.amount.to_string(),
                    sql_u64(now)
                ],
            )?;
            insert_spend(connection, &withdrawal.key, asset, amount, now)?;
            Ok(Inserted::New(load(connection, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?))
        })
        .await
    }

    /// Stores a gap fill for `key` (a zero-value transfer from `address` to itself) with `nonce`.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn insert_gap_fill(&self, key: &str, address: Address, nonce: u64) -> Result<Withdrawal, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| {
            let id = format!("gap-{}", uuid::Uuid::new_v4());
            connection.execute(
                "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, status, nonce, created_ms, \
                 updated_ms) VALUES (?1, 'gap_fill', ?2, ?3, 'ETH', '0', 'accepted', ?4, ?5, ?5)",
                params![id, key, address.to_string(), sql_u64(nonce), sql_u64(now_ms())],
            )?;
            load(connection, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
        })
        .await
    }

    /// Records an amount counted against a daily limit (for transactions signed outside withdrawals).
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn record_spend(&self, key: &str, asset: Asset, amount: U256) -> Result<(), JournalError> {
        let key = key.to_owned();
        self.run(move |connection| insert_spend(connection, &key, asset, amount, now_ms())).await
    }

    /// The amounts counted since `since_ms`: (key, asset, amount, Unix milliseconds).
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn spends_since(&self, since_ms: u64) -> Result<Vec<(String, Asset, U256, u64)>, JournalError> {
        self.run(move |connection| {
            let mut statement = connection.prepare("SELECT key, asset, amount, at_ms FROM spends WHERE at_ms > ?1")?;
            let rows = statement.query_map(params![sql_u64(since_ms)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    parse_asset(&row.get::<_, String>(1)?)?,
                    parse_u256(&row.get::<_, String>(2)?)?,
                    row.get::<_, i64>(3)?.try_into().unwrap_or(0),
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// The withdrawal `id`, if it exists.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| load(connection, &id)).await
    }

    /// Every withdrawal (and gap fill) not yet mined or failed.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn unfinished(&self) -> Result<Vec<Withdrawal>, JournalError> {
        self.run(|connection| {
            let mut statement = connection.prepare(
                "SELECT id FROM withdrawals WHERE status IN ('accepted', 'signed', 'submitted') ORDER BY rowid",
            )?;
            let ids = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            let mut withdrawals = Vec::with_capacity(ids.len());
            for id in ids {
                withdrawals.extend(load(connection, &id)?);
            }
            Ok(withdrawals)
        })
        .await
    }

    /// Stores a signed transaction of withdrawal `id` with `nonce`, and marks it signed unless it
    /// is already submitted (a re-broadcast with higher fees).
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn add_attempt(&self, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let number: i64 =
                connection
                    .query_row("SELECT COUNT(*) FROM attempts WHERE withdrawal = ?1", params![id], |row| row.get(0))?;
            connection.execute(
                "INSERT INTO attempts (withdrawal, number, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, \
                 signed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    number,
                    attempt.tx_hash.to_string(),
                    attempt.raw.to_vec(),
                    attempt.max_fee_per_gas.to_string(),
                    attempt.priority_fee_per_gas.to_string(),
                    sql_u64(attempt.signed_ms)
                ],
            )?;
            connection.execute(
                "UPDATE withdrawals SET nonce = ?2, tx_hash = ?3, updated_ms = ?4, \
                 status = CASE status WHEN 'accepted' THEN 'signed' ELSE status END WHERE id = ?1",
                params![id, sql_u64(nonce), attempt.tx_hash.to_string(), sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks withdrawal `id` submitted (the node has its transaction).
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn mark_submitted(&self, id: &str) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            connection.execute(
                "UPDATE withdrawals SET status = 'submitted', updated_ms = ?2 WHERE id = ?1 AND status = 'signed'",
                params![id, sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks withdrawal `id` mined in `block` by `tx_hash`: [`Status::Mined`] if it succeeded,
    /// [`Status::Failed`] (reverted) if not.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn mark_mined(&self, id: &str, tx_hash: B256, block: u64, success: bool) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let (status, error) = if success { ("mined", None) } else { ("failed", Some("reverted on chain")) };
            connection.execute(
                "UPDATE withdrawals SET status = ?2, tx_hash = ?3, block_number = ?4, error = ?5, updated_ms = ?6 \
                 WHERE id = ?1",
                params![id, status, tx_hash.to_string(), sql_u64(block), error, sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks withdrawal `id` failed for `reason`. Its signed transactions, if any, were refused by the
    /// node and will not be broadcast again.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn mark_failed(&self, id: &str, reason: &str) -> Result<(), JournalError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.run(move |connection| {
            connection.execute(
                "UPDATE withdrawals SET status = 'failed', error = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, reason, sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    /// Returns withdrawal `id` to [`Status::Accepted`], without nonce or transactions: its nonce was
    /// used by another transaction, so none of its transactions can ever be mined.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn reset(&self, id: &str) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            connection.execute("DELETE FROM attempts WHERE withdrawal = ?1", params![id])?;
            connection.execute(
                "UPDATE withdrawals SET status = 'accepted', nonce = NULL, tx_hash = NULL, updated_ms = ?2 WHERE id = ?1",
                params![id, sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }
}

enum Failure {
    Sqlite(rusqlite::Error),
    Commit(String),
}

/// The journal thread: takes what is queued, runs it in one transaction, commits, answers.
fn writer(connection: &Connection, queue: &mpsc::Receiver<Message>) {
    let mut open = true;
    while open && let Ok(first) = queue.recv() {
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => jobs.push(job),
                Message::Close => {
                    open = false;
                    break;
                }
            }
            if jobs.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            let reason = format!("cannot begin a transaction, nothing was stored: {error}");
            for job in jobs {
                job(Err(&reason))(Err(reason.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Ok(connection))).collect();
        let committed = connection.execute_batch("COMMIT").map_err(|error| {
            let _ = connection.execute_batch("ROLLBACK");
            format!("commit failed, nothing of it was stored: {error}")
        });
        for reply in replies {
            reply(committed.clone());
        }
    }
}

/// Runs `operation` inside a savepoint, undone if it fails.
fn savepoint<R>(
    connection: &Connection,
    operation: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    connection.execute_batch("SAVEPOINT operation")?;
    match operation(connection) {
        Ok(value) => {
            connection.execute_batch("RELEASE operation")?;
            Ok(value)
        }
        Err(error) => {
            connection.execute_batch("ROLLBACK TO operation; RELEASE operation")?;
            Err(error)
        }
    }
}

fn insert_spend(connection: &Connection, key: &str, asset: Asset, amount: U256, at: u64) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO spends (key, asset, amount, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![key, asset_text(asset), amount.to_string(), sql_u64(at)],
    )?;
    Ok(())
}

fn load(connection: &Connection, id: &str) -> rusqlite::Result<Option<Withdrawal>> {
    let withdrawal = connection
        .query_row(
            "SELECT id, kind, client, idempotency_key, key, recipient, asset, amount, status, nonce, tx_hash, \
             block_number, error, created_ms FROM withdrawals WHERE id = ?1",
            params![id],
            |row| {
                let kind: String = row.get(1)?;
                let status: String = row.get(8)?;
                Ok(Withdrawal {
                    id: row.get(0)?,
                    kind: if kind == "gap_fill" { Kind::GapFill } else { Kind::Withdrawal },
                    client: row.get(2)?,
                    idempotency_key: row.get(3)?,
                    key: row.get(4)?,
                    recipient: parse_text(&row.get::<_, String>(5)?)?,
                    asset: parse_asset(&row.get::<_, String>(6)?)?,
                    amount: parse_u256(&row.get::<_, String>(7)?)?,
                    status: Status::parse(&status).ok_or_else(|| invalid(format!("status `{status}`")))?,
                    nonce: row.get::<_, Option<i64>>(9)?.map(|nonce| nonce.try_into().unwrap_or(0)),
                    tx_hash: row.get::<_, Option<String>>(10)?.map(|hash| parse_text(&hash)).transpose()?,
                    block_number: row.get::<_, Option<i64>>(11)?.map(|block| block.try_into().unwrap_or(0)),
                    error: row.get(12)?,
                    created_ms: row.get::<_, i64>(13)?.try_into().unwrap_or(0),
                    attempts: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut withdrawal) = withdrawal else { return Ok(None) };
    let mut statement = connection.prepare(
        "SELECT tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms FROM attempts WHERE withdrawal = ?1 \
         ORDER BY number",
    )?;
    withdrawal.attempts = statement
        .query_map(params![id], |row| {
            Ok(Attempt {
                tx_hash: parse_text(&row.get::<_, String>(0)?)?,
                raw: row.get::<_, Vec<u8>>(1)?.into(),
                max_fee_per_gas: parse_text(&row.get::<_, String>(2)?)?,
                priority_fee_per_gas: parse_text(&row.get::<_, String>(3)?)?,
                signed_ms: row.get::<_, i64>(4)?.try_into().unwrap_or(0),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(withdrawal))
}

fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn asset_text(asset: Asset) -> String {
    match asset {
        Asset::Ether => "ETH".into(),
        Asset::Token(address) => address.to_string(),
    }
}

fn invalid(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

fn parse_text<T: std::str::FromStr>(text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|_| invalid(format!("`{text}` in the journal cannot be read")))
}

fn parse_u256(text: &str) -> rusqlite::Result<U256> {
    parse_text(text)
}

fn parse_asset(text: &str) -> rusqlite::Result<Asset> {
    if text == "ETH" { Ok(Asset::Ether) } else { parse_text(text).map(Asset::Token) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ethkms-journal-{name}-{}.sqlite", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        path
    }

    fn withdrawal(idempotency_key: &str, amount: u64) -> NewWithdrawal {
        NewWithdrawal {
            client: "exchange".into(),
            idempotency_key: idempotency_key.into(),
            key: "hot".into(),
            recipient: Address::with_last_byte(7),
            asset: Asset::Ether,
            amount: U256::from(amount),
        }
    }

    fn allow() -> Result<(Asset, U256), String> {
        Ok((Asset::Ether, U256::from(5)))
    }

    #[tokio::test]
    async fn idempotency_keys_survive_reopening_and_concurrent_inserts_store_one_row() {
        let path = temp("idempotency");
        let journal = Journal::open(&path).unwrap();
        let inserts = (0..16).map(|_| journal.insert(withdrawal("w-1", 5), allow));
        let results = futures_util::future::join_all(inserts).await;
        let new = results.iter().filter(|result| matches!(result, Ok(Inserted::New(_)))).count();
        assert_eq!(new, 1, "exactly one of 16 concurrent inserts with one idempotency key is new");
        let Ok(Inserted::New(first)) = results.into_iter().find(|r| matches!(r, Ok(Inserted::New(_)))).unwrap() else {
            unreachable!()
        };
        assert_eq!(first.status, Status::Accepted);
        journal.close();
        let reopened = Journal::open(&path).unwrap();
        let Inserted::Existing(again) = reopened.insert(withdrawal("w-1", 5), allow).await.unwrap() else {
            panic!("the idempotency key was forgotten")
        };
        assert_eq!(again.id, first.id);
        // The check ran once: one spend recorded.
        assert_eq!(reopened.spends_since(0).await.unwrap().len(), 1);
        let Inserted::Refused(reason) =
            reopened.insert(withdrawal("w-2", 5), || Err::<(Asset, U256), _>("denied".to_owned())).await.unwrap()
        else {
            panic!("a refused check stored a row")
        };
        assert_eq!(reason, "denied");
        assert!(reopened.unfinished().await.unwrap().iter().all(|row| row.idempotency_key.as_deref() == Some("w-1")));
    }

    #[tokio::test]
    async fn attempts_and_statuses_are_stored_in_order() {
        let path = temp("attempts");
        let journal = Journal::open(&path).unwrap();
        let Inserted::New(row) = journal.insert(withdrawal("w-1", 9), allow).await.unwrap() else { panic!() };
        let attempt = |byte: u8, fee: u128| Attempt {
            tx_hash: B256::repeat_byte(byte),
            raw: vec![byte; 3].into(),
            max_fee_per_gas: fee,
            priority_fee_per_gas: fee / 2,
            signed_ms: 1,
        };
        journal.add_attempt(&row.id, 4, attempt(1, 100)).await.unwrap();
        assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signed);
        journal.mark_submitted(&row.id).await.unwrap();
        journal.add_attempt(&row.id, 4, attempt(2, 110)).await.unwrap();
        assert!(Journal::open(&path).unwrap_err().to_string().contains("another ethkms-server"));
        journal.close();
        let journal = Journal::open(&path).unwrap();
        let stored = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.nonce, stored.tx_hash),
            (Status::Submitted, Some(4), Some(B256::repeat_byte(2)))
        );
        assert_eq!(stored.attempts, vec![attempt(1, 100), attempt(2, 110)]);
        journal.mark_mined(&row.id, B256::repeat_byte(1), 12, true).await.unwrap();
        let mined = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!(
            (mined.status, mined.tx_hash, mined.block_number),
            (Status::Mined, Some(B256::repeat_byte(1)), Some(12))
        );
        assert!(journal.unfinished().await.unwrap().is_empty());
        journal.reset(&row.id).await.unwrap();
        let reset = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!((reset.status, reset.nonce, reset.attempts.len()), (Status::Accepted, None, 0));
        assert!(journal.get("no-such-id").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_journal_is_refused_by_name() {
        let path = temp("garbage");
        std::fs::write(&path, b"this is not a database, it is a text file that is long enough to be checked").unwrap();
        let error = Journal::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        let _ = std::fs::remove_file(&path);
    }
}
