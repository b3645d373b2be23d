//! [`SqliteJournal`]: the journal in one SQLite file (WAL mode, `synchronous = FULL`), the embedded
//! default for one server.
//!
//! One thread owns the connection. Operations queue up while a commit is on disk and then share the
//! next one ("group commit"): each runs in its own savepoint, so one failing operation does not undo
//! the others, and none is answered before the commit holding it is durable.
//!
//! The schema is versioned (`PRAGMA user_version`): [`MIGRATIONS`] are applied in order at open, and a
//! file written by a newer version is refused by name. The database is locked exclusively while a server
//! runs, so a second server on the same journal is refused.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{B256, U256};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Attempt, Cancelled, Check, Inserted, JournalError, JournalStore, Kind, MinedAs, NewRow, NewWithdrawal, Released,
    Status, Withdrawal,
};
use crate::policy::Asset;

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 2] = [
    // 1: withdrawals, their attempts, and amounts counted against daily limits.
    "
CREATE TABLE withdrawals (
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
CREATE INDEX open_withdrawals ON withdrawals (status) WHERE status IN ('accepted', 'signed', 'submitted');
CREATE TABLE attempts (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    number INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    priority_fee_per_gas TEXT NOT NULL,
    signed_ms INTEGER NOT NULL,
    PRIMARY KEY (withdrawal, number)
);
CREATE TABLE spends (
    key TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
",
    // 2: RPC transactions, confirmations, cancellation, and amounts given back.
    "
ALTER TABLE withdrawals ADD COLUMN request TEXT;
ALTER TABLE withdrawals ADD COLUMN block_hash TEXT;
ALTER TABLE withdrawals ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE withdrawals ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spends ADD COLUMN withdrawal TEXT;
CREATE INDEX spends_by_withdrawal ON spends (withdrawal) WHERE withdrawal IS NOT NULL;
DROP INDEX open_withdrawals;
CREATE INDEX open_rows ON withdrawals (status) WHERE confirmed = 0 AND status NOT IN ('confirmed', 'failed');
",
];

/// Statuses of rows still in the engine's hands (with `confirmed = 0` for a mined cancellation).
const OPEN: &str = "confirmed = 0 AND status NOT IN ('confirmed', 'failed') \
    AND NOT (status = 'cancelled' AND block_number IS NULL)";

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Writes that may wait for the journal's thread at once; one more is refused ([`JournalError::Busy`]),
/// so that a flood of requests cannot grow the queue without bound.
pub(crate) const QUEUE: usize = 8192;

type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Reply + Send>;

/// The SQLite journal: a handle on the thread that owns the database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteJournal {
    path: PathBuf,
    jobs: mpsc::SyncSender<Message>,
    /// Answered when the thread has closed the database.
    closed: std::sync::Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
}

enum Message {
    Job(Job),
    Close,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The most operations one commit holds.
const MAX_BATCH: usize = 512;

/// Now, in Unix milliseconds.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(0))
}

impl SqliteJournal {
    /// Opens (or creates) the journal at `path`, migrates its schema and starts its thread.
    ///
    /// # Errors
    /// [`JournalError::Sqlite`] if the file cannot be opened or is not a database;
    /// [`JournalError::Corrupt`] if it was written by a newer version or another server holds it.
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
                reason: format!(
                    "schema version {version} is newer than this program's ({SCHEMA_VERSION}); use a newer ethkms-server"
                ),
            });
        }
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            let to = from + 1;
            connection
                .execute_batch(&format!("BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {to}; COMMIT;"))
                .map_err(sqlite)?;
            tracing::info!(path = %path.display(), from, to, "withdrawal journal schema migrated");
        }
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
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

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `operation` in the next commit and answers once that commit is on disk.
    async fn run<R: Send + 'static>(
        &self,
        operation: impl FnOnce(&Connection) -> Result<R, Failure> + Send + 'static,
    ) -> Result<R, JournalError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = match connection {
                Ok(connection) => savepoint(connection, operation),
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
        self.jobs.try_send(Message::Job(job)).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => JournalError::Busy(QUEUE),
            mpsc::TrySendError::Disconnected(_) => JournalError::Closed,
        })?;
        match receiver.await.map_err(|_| JournalError::Closed)? {
            Ok(value) => Ok(value),
            Err(Failure::Sqlite(source)) => Err(JournalError::Sqlite { path: self.path.clone(), source }),
            Err(Failure::Commit(reason)) => Err(JournalError::Corrupt { path: self.path.clone(), reason }),
            Err(Failure::Refused(reason)) => Err(JournalError::Refused(reason)),
        }
    }

    /// Applies `assignments` (and `updated_ms`) to row `id` where `condition` holds.
    async fn update(&self, id: &str, assignments: &'static str, condition: &'static str) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            connection.execute(
                &format!("UPDATE withdrawals SET {assignments}, updated_ms = ?2 WHERE id = ?1 AND ({condition})"),
                params![id, sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl JournalStore for SqliteJournal {
    async fn insert(&self, withdrawal: NewWithdrawal, check: Check) -> Result<Inserted, JournalError> {
        self.run(move |connection| {
            let existing: Option<String> = connection
                .query_row(
                    "SELECT id FROM withdrawals WHERE client = ?1 AND idempotency_key = ?2",
                    params![withdrawal.client, withdrawal.idempotency_key],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                return Ok(Inserted::Existing(load_existing(connection, &id)?));
            }
            let spends = match check() {
                Ok(spends) => spends,
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
            for (asset, amount) in spends {
                insert_spend(connection, &withdrawal.key, asset, amount, now, Some(&id))?;
            }
            Ok(Inserted::New(load_existing(connection, &id)?))
        })
        .await
    }

    async fn insert_row(&self, row: NewRow) -> Result<Withdrawal, JournalError> {
        self.run(move |connection| {
            let prefix = if row.kind == Kind::GapFill { "gap-" } else { "tx-" };
            let id = format!("{prefix}{}", uuid::Uuid::new_v4());
            let status = if row.nonce.is_some() { Status::Signing } else { Status::Accepted };
            let now = now_ms();
            connection.execute(
                "INSERT INTO withdrawals (id, kind, client, key, recipient, asset, amount, request, status, nonce, \
                 created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'ETH', ?6, ?7, ?8, ?9, ?10, ?10)",
                params![
                    id,
                    row.kind.as_str(),
                    row.client,
                    row.key,
                    row.recipient.to_string(),
                    row.amount.to_string(),
                    row.request,
                    status.as_str(),
                    row.nonce.map(sql_u64),
                    sql_u64(now)
                ],
            )?;
            for (asset, amount) in row.spends {
                insert_spend(connection, &row.key, asset, amount, now, Some(&id))?;
            }
            load_existing(connection, &id)
        })
        .await
    }

    async fn claim(&self, id: &str, nonce: u64) -> Result<bool, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let changed = connection.execute(
                "UPDATE withdrawals SET status = 'signing', nonce = ?2, updated_ms = ?3 \
                 WHERE id = ?1 AND status = 'accepted' AND nonce IS NULL",
                params![id, sql_u64(nonce), sql_u64(now_ms())],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn add_attempt(&self, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let row: Option<(Option<i64>, String)> = connection
                .query_row("SELECT nonce, status FROM withdrawals WHERE id = ?1", params![id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            let Some((held, status)) = row else {
                return Err(Failure::Refused(format!("no row `{id}` to add a transaction to")));
            };
            if held != Some(sql_u64(nonce)) {
                return Err(Failure::Refused(format!(
                    "`{id}` holds nonce {held:?}; a transaction with nonce {nonce} is not stored for it"
                )));
            }
            if !matches!(status.as_str(), "signing" | "signed" | "submitted") {
                return Err(Failure::Refused(format!("`{id}` is {status}; no transaction is added to it")));
            }
            let number: i64 =
                connection
                    .query_row("SELECT COUNT(*) FROM attempts WHERE withdrawal = ?1", params![id], |row| row.get(0))?;
            connection.execute(
                "INSERT INTO attempts (withdrawal, number, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, \
                 signed_ms, cancel) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    number,
                    attempt.tx_hash.to_string(),
                    attempt.raw.to_vec(),
                    attempt.max_fee_per_gas.to_string(),
                    attempt.priority_fee_per_gas.to_string(),
                    sql_u64(attempt.signed_ms),
                    attempt.cancel
                ],
            )?;
            connection.execute(
                "UPDATE withdrawals SET tx_hash = ?2, updated_ms = ?3, \
                 status = CASE status WHEN 'signing' THEN 'signed' ELSE status END WHERE id = ?1",
                params![id, attempt.tx_hash.to_string(), sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_submitted(&self, id: &str) -> Result<(), JournalError> {
        self.update(id, "status = 'submitted'", "status = 'signed'").await
    }

    async fn mark_mined(
        &self,
        id: &str,
        tx_hash: B256,
        block: u64,
        block_hash: B256,
        outcome: MinedAs,
        confirmed: bool,
    ) -> Result<(), JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let (status, error) = match outcome {
                MinedAs::Paid if confirmed => (Status::Confirmed, None),
                MinedAs::Paid => (Status::Mined, None),
                MinedAs::Reverted => (Status::Failed, Some("reverted on chain: no value moved (the fee was paid)")),
                MinedAs::Cancelled => (Status::Cancelled, None),
            };
            connection.execute(
                "UPDATE withdrawals SET status = ?2, tx_hash = ?3, block_number = ?4, block_hash = ?5, error = ?6, \
                 confirmed = ?7, updated_ms = ?8 WHERE id = ?1",
                params![
                    id,
                    status.as_str(),
                    tx_hash.to_string(),
                    sql_u64(block),
                    block_hash.to_string(),
                    error,
                    confirmed,
                    sql_u64(now_ms())
                ],
            )?;
            if matches!(outcome, MinedAs::Reverted | MinedAs::Cancelled) {
                // No value left: the amount no longer counts against the daily limit.
                connection.execute("DELETE FROM spends WHERE withdrawal = ?1", params![id])?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_unmined(&self, id: &str) -> Result<(), JournalError> {
        let unmined = "status = 'submitted', block_number = NULL, block_hash = NULL, error = NULL, confirmed = 0";
        self.update(id, unmined, "confirmed = 0").await
    }

    async fn mark_confirmed(&self, id: &str) -> Result<(), JournalError> {
        let confirmed = "confirmed = 1, status = CASE status WHEN 'mined' THEN 'confirmed' ELSE status END";
        self.update(id, confirmed, "1 = 1").await
    }

    async fn mark_failed(&self, id: &str, reason: &str, release: bool) -> Result<Vec<Released>, JournalError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.run(move |connection| {
            connection.execute(
                "UPDATE withdrawals SET status = 'failed', error = ?2, confirmed = 1, updated_ms = ?3 WHERE id = ?1",
                params![id, reason, sql_u64(now_ms())],
            )?;
            if release { release_spend(connection, &id) } else { Ok(Vec::new()) }
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let status: Option<String> = connection
                .query_row("SELECT status FROM withdrawals WHERE id = ?1", params![id], |row| row.get(0))
                .optional()?;
            let Some(status) = status else { return Ok(Cancelled::NotFound) };
            let status = Status::parse(&status).ok_or_else(|| invalid(format!("status `{status}`")))?;
            match status {
                Status::Accepted => {
                    connection.execute(
                        "UPDATE withdrawals SET status = 'cancelled', confirmed = 1, updated_ms = ?2 WHERE id = ?1",
                        params![id, sql_u64(now_ms())],
                    )?;
                    Ok(Cancelled::Now(release_spend(connection, &id)?))
                }
                Status::Signing | Status::Signed | Status::Submitted => {
                    connection.execute(
                        "UPDATE withdrawals SET cancel_requested = 1, updated_ms = ?2 WHERE id = ?1",
                        params![id, sql_u64(now_ms())],
                    )?;
                    Ok(Cancelled::Requested)
                }
                other => Ok(Cancelled::Unchanged(other)),
            }
        })
        .await
    }

    async fn record_spend(&self, key: &str, asset: Asset, amount: U256) -> Result<(), JournalError> {
        let key = key.to_owned();
        self.run(move |connection| insert_spend(connection, &key, asset, amount, now_ms(), None)).await
    }

    async fn spends_since(&self, since_ms: u64) -> Result<Vec<(String, Asset, U256, u64)>, JournalError> {
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
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| Ok(load(connection, &id)?)).await
    }

    async fn unfinished(&self) -> Result<Vec<Withdrawal>, JournalError> {
        self.run(|connection| {
            let mut statement =
                connection.prepare(&format!("SELECT id FROM withdrawals WHERE {OPEN} ORDER BY rowid"))?;
            let ids = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                rows.extend(load(connection, &id)?);
            }
            Ok(rows)
        })
        .await
    }

    fn close(&self) {
        if self.jobs.send(Message::Close).is_ok() {
            let _ = self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
        }
    }
}

/// Why an operation did not happen.
enum Failure {
    Sqlite(rusqlite::Error),
    Commit(String),
    /// A conditional write whose condition did not hold.
    Refused(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
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
    operation: impl FnOnce(&Connection) -> Result<R, Failure>,
) -> Result<R, Failure> {
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

fn insert_spend(
    connection: &Connection,
    key: &str,
    asset: Asset,
    amount: U256,
    at: u64,
    withdrawal: Option<&str>,
) -> Result<(), Failure> {
    connection.execute(
        "INSERT INTO spends (key, asset, amount, at_ms, withdrawal) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key, asset_text(asset), amount.to_string(), sql_u64(at), withdrawal],
    )?;
    Ok(())
}

/// Deletes the amounts row `id` counted against the daily limits, and returns them.
fn release_spend(connection: &Connection, id: &str) -> Result<Vec<Released>, Failure> {
    let spends = connection
        .prepare("SELECT key, asset, amount, at_ms FROM spends WHERE withdrawal = ?1")?
        .query_map(params![id], |row| {
            Ok(Released {
                key: row.get(0)?,
                asset: parse_asset(&row.get::<_, String>(1)?)?,
                amount: parse_u256(&row.get::<_, String>(2)?)?,
                at_ms: row.get::<_, i64>(3)?.try_into().unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    connection.execute("DELETE FROM spends WHERE withdrawal = ?1", params![id])?;
    Ok(spends)
}

fn load_existing(connection: &Connection, id: &str) -> Result<Withdrawal, Failure> {
    load(connection, id)?.ok_or(Failure::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

fn load(connection: &Connection, id: &str) -> rusqlite::Result<Option<Withdrawal>> {
    let withdrawal = connection
        .query_row(
            "SELECT id, kind, client, idempotency_key, key, recipient, asset, amount, status, nonce, tx_hash, \
             block_number, error, created_ms, request, block_hash, cancel_requested, confirmed FROM withdrawals \
             WHERE id = ?1",
            params![id],
            |row| {
                let kind: String = row.get(1)?;
                let status: String = row.get(8)?;
                Ok(Withdrawal {
                    id: row.get(0)?,
                    kind: Kind::parse(&kind).ok_or_else(|| invalid(format!("kind `{kind}`")))?,
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
                    request: row.get(14)?,
                    block_hash: row.get::<_, Option<String>>(15)?.map(|hash| parse_text(&hash)).transpose()?,
                    cancel_requested: row.get(16)?,
                    confirmed: row.get(17)?,
                    attempts: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut withdrawal) = withdrawal else { return Ok(None) };
    let mut statement = connection.prepare(
        "SELECT tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms, cancel FROM attempts \
         WHERE withdrawal = ?1 ORDER BY number",
    )?;
    withdrawal.attempts = statement
        .query_map(params![id], |row| {
            Ok(Attempt {
                tx_hash: parse_text(&row.get::<_, String>(0)?)?,
                raw: row.get::<_, Vec<u8>>(1)?.into(),
                max_fee_per_gas: parse_text(&row.get::<_, String>(2)?)?,
                priority_fee_per_gas: parse_text(&row.get::<_, String>(3)?)?,
                signed_ms: row.get::<_, i64>(4)?.try_into().unwrap_or(0),
                cancel: row.get(5)?,
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
    use crate::policy::{Denial, Rule};
    use alloy_primitives::Address;

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

    fn allow() -> Check {
        Box::new(|| Ok(vec![(Asset::Ether, U256::from(5))]))
    }

    fn attempt(byte: u8, fee: u128) -> Attempt {
        Attempt {
            tx_hash: B256::repeat_byte(byte),
            raw: vec![byte; 3].into(),
            max_fee_per_gas: fee,
            priority_fee_per_gas: fee / 2,
            signed_ms: 1,
            cancel: false,
        }
    }

    async fn new_row(journal: &SqliteJournal, key: &str) -> Withdrawal {
        let Inserted::New(row) = journal.insert(withdrawal(key, 9), allow()).await.unwrap() else { panic!() };
        row
    }

    #[tokio::test]
    async fn idempotency_keys_survive_reopening_and_concurrent_inserts_store_one_row() {
        let path = temp("idempotency");
        let journal = SqliteJournal::open(&path).unwrap();
        let inserts = (0..16).map(|_| journal.insert(withdrawal("w-1", 5), allow()));
        let results = futures_util::future::join_all(inserts).await;
        let new = results.iter().filter(|result| matches!(result, Ok(Inserted::New(_)))).count();
        assert_eq!(new, 1, "exactly one of 16 concurrent inserts with one idempotency key is new");
        let Ok(Inserted::New(first)) = results.into_iter().find(|r| matches!(r, Ok(Inserted::New(_)))).unwrap() else {
            unreachable!()
        };
        assert_eq!(first.status, Status::Accepted);
        journal.close();
        let reopened = SqliteJournal::open(&path).unwrap();
        let Inserted::Existing(again) = reopened.insert(withdrawal("w-1", 5), allow()).await.unwrap() else {
            panic!("the idempotency key was forgotten")
        };
        assert_eq!(again.id, first.id);
        // The check ran once: one spend recorded.
        assert_eq!(reopened.spends_since(0).await.unwrap().len(), 1);
        let denied = Denial { rule: Rule::MaxValue, message: "denied".into() };
        let refused = reopened.insert(withdrawal("w-2", 5), Box::new(move || Err(denied))).await.unwrap();
        let Inserted::Refused(reason) = refused else { panic!("a refused check stored a row") };
        assert_eq!(reason.message, "denied");
        assert!(reopened.unfinished().await.unwrap().iter().all(|row| row.idempotency_key.as_deref() == Some("w-1")));
    }

    #[tokio::test]
    async fn one_claim_wins_and_a_row_never_holds_a_second_nonce() {
        let path = temp("claim");
        let journal = SqliteJournal::open(&path).unwrap();
        let row = new_row(&journal, "w-1").await;
        let claims = futures_util::future::join_all((0..8).map(|nonce| journal.claim(&row.id, nonce))).await;
        let won: Vec<u64> =
            (0..8).filter(|nonce| matches!(claims[usize::try_from(*nonce).unwrap()], Ok(true))).collect();
        assert_eq!(won.len(), 1, "exactly one of 8 concurrent claims wins: {claims:?}");
        let nonce = won[0];
        let other = nonce + 1;
        let refused = journal.add_attempt(&row.id, other, attempt(1, 100)).await.unwrap_err();
        assert!(matches!(refused, JournalError::Refused(_)), "{refused}");
        assert!(refused.to_string().contains(&format!("nonce {other}")), "{refused}");
        journal.add_attempt(&row.id, nonce, attempt(1, 100)).await.unwrap();
        let stored = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.nonce, stored.attempts.len()), (Status::Signed, Some(nonce), 1));
        // A claimed row cannot be claimed again, and a final row takes no transaction.
        assert!(!journal.claim(&row.id, nonce).await.unwrap());
        journal.mark_failed(&row.id, "test", false).await.unwrap();
        assert!(matches!(journal.add_attempt(&row.id, nonce, attempt(2, 110)).await, Err(JournalError::Refused(_))));
    }

    #[tokio::test]
    async fn attempts_statuses_confirmations_and_reorgs_are_stored_in_order() {
        let path = temp("attempts");
        let journal = SqliteJournal::open(&path).unwrap();
        let row = new_row(&journal, "w-1").await;
        assert!(journal.claim(&row.id, 4).await.unwrap());
        assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signing);
        journal.add_attempt(&row.id, 4, attempt(1, 100)).await.unwrap();
        assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signed);
        journal.mark_submitted(&row.id).await.unwrap();
        journal.add_attempt(&row.id, 4, attempt(2, 110)).await.unwrap();
        assert!(SqliteJournal::open(&path).unwrap_err().to_string().contains("another ethkms-server"));
        journal.close();
        let journal = SqliteJournal::open(&path).unwrap();
        let stored = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.nonce, stored.tx_hash),
            (Status::Submitted, Some(4), Some(B256::repeat_byte(2)))
        );
        assert_eq!(stored.attempts, vec![attempt(1, 100), attempt(2, 110)]);
        journal
            .mark_mined(&row.id, B256::repeat_byte(1), 12, B256::repeat_byte(0xb1), MinedAs::Paid, false)
            .await
            .unwrap();
        let mined = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!(
            (mined.status, mined.tx_hash, mined.block_number, mined.block_hash),
            (Status::Mined, Some(B256::repeat_byte(1)), Some(12), Some(B256::repeat_byte(0xb1)))
        );
        assert_eq!(journal.unfinished().await.unwrap().len(), 1, "mined is followed until confirmed");
        // A reorg: back to submitted, the block forgotten.
        journal.mark_unmined(&row.id).await.unwrap();
        let reorged = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!((reorged.status, reorged.block_number), (Status::Submitted, None));
        journal
            .mark_mined(&row.id, B256::repeat_byte(2), 13, B256::repeat_byte(0xb2), MinedAs::Paid, false)
            .await
            .unwrap();
        journal.mark_confirmed(&row.id).await.unwrap();
        let confirmed = journal.get(&row.id).await.unwrap().unwrap();
        assert_eq!((confirmed.status, confirmed.confirmed), (Status::Confirmed, true));
        assert!(journal.unfinished().await.unwrap().is_empty());
        assert!(journal.get("no-such-id").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn cancelling_before_signing_gives_the_amount_back_and_after_signing_is_a_request() {
        let path = temp("cancel");
        let journal = SqliteJournal::open(&path).unwrap();
        let early = new_row(&journal, "w-early").await;
        let Cancelled::Now(released) = journal.cancel(&early.id).await.unwrap() else { panic!() };
        assert_eq!(
            released.iter().map(|released| (released.asset, released.amount)).collect::<Vec<_>>(),
            [(Asset::Ether, U256::from(5))]
        );
        assert_eq!(journal.get(&early.id).await.unwrap().unwrap().status, Status::Cancelled);
        assert!(!journal.claim(&early.id, 0).await.unwrap(), "a cancelled withdrawal is never signed");
        assert_eq!(journal.cancel(&early.id).await.unwrap(), Cancelled::Unchanged(Status::Cancelled));
        let late = new_row(&journal, "w-late").await;
        assert!(journal.claim(&late.id, 0).await.unwrap());
        assert_eq!(journal.cancel(&late.id).await.unwrap(), Cancelled::Requested);
        assert!(journal.get(&late.id).await.unwrap().unwrap().cancel_requested);
        assert_eq!(journal.spends_since(0).await.unwrap().len(), 1, "only the signed one still counts");
        // A mined cancellation gives the amount back and is followed until confirmed.
        journal.add_attempt(&late.id, 0, Attempt { cancel: true, ..attempt(3, 10) }).await.unwrap();
        journal
            .mark_mined(&late.id, B256::repeat_byte(3), 5, B256::repeat_byte(0xb3), MinedAs::Cancelled, false)
            .await
            .unwrap();
        assert!(journal.spends_since(0).await.unwrap().is_empty());
        assert_eq!(journal.unfinished().await.unwrap().len(), 1);
        journal.mark_confirmed(&late.id).await.unwrap();
        assert_eq!(journal.get(&late.id).await.unwrap().unwrap().status, Status::Cancelled);
        assert!(journal.unfinished().await.unwrap().is_empty());
        assert_eq!(journal.cancel("nope").await.unwrap(), Cancelled::NotFound);
    }

    #[tokio::test]
    async fn a_version_1_journal_is_migrated_and_a_newer_one_refused() {
        let path = temp("migrate");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection
                .execute(
                    "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, status, nonce, created_ms, \
                     updated_ms) VALUES ('old', 'withdrawal', 'hot', ?1, 'ETH', '7', 'submitted', 3, 1, 1)",
                    params![Address::with_last_byte(7).to_string()],
                )
                .unwrap();
            connection.execute_batch("PRAGMA user_version = 1").unwrap();
        }
        let journal = SqliteJournal::open(&path).unwrap();
        let old = journal.get("old").await.unwrap().unwrap();
        assert_eq!((old.status, old.nonce, old.cancel_requested), (Status::Submitted, Some(3), false));
        journal.close();
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1)).unwrap();
        }
        let error = SqliteJournal::open(&path).unwrap_err().to_string();
        assert!(error.contains("newer than this program"), "{error}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_journal_is_refused_by_name() {
        let path = temp("garbage");
        std::fs::write(&path, b"this is not a database, it is a text file that is long enough to be checked").unwrap();
        let error = SqliteJournal::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        let _ = std::fs::remove_file(&path);
    }
}
