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

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Attempt, Cancelled, Claim, Fence, Inserted, JournalError, JournalStore, LeaseRow, LimitCheck, MinedAs, NewRpc,
    NewWithdrawal, Nonces, Release, Released, Status, Withdrawal,
};
use crate::policy::{Asset, Denial};

mod allowlist;
mod approvals;
mod deposits;
mod leases;
mod rows;
mod schema;
mod sweeps;
mod webhooks;
mod writer;

use leases::fenced;
pub use schema::SCHEMA_VERSION;
use schema::{MIGRATIONS, OPEN};
pub(crate) use writer::QUEUE;
use writer::{Failure, Job, Message, savepoint, writer};

use rows::{
    asset_text, exec, ids, insert_spend, invalid, load, load_all, load_existing, load_nonces, release_spend, row,
    spent, sql_u64, store_nonces,
};

/// The SQLite journal: a handle on the thread that owns the database. Cheap to clone.
#[derive(Clone)]
pub struct SqliteJournal {
    path: PathBuf,
    jobs: mpsc::SyncSender<Message>,
    /// Answered when the thread has closed the database.
    closed: std::sync::Arc<std::sync::Mutex<mpsc::Receiver<()>>>,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal").field("path", &self.path).finish_non_exhaustive()
    }
}

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
        connection.busy_timeout(Duration::ZERO).map_err(sqlite)?;
        // One server per journal: the lock is taken by the first write below and held until the
        // process ends (the operating system releases it even after kill -9).
        connection.execute_batch("PRAGMA locking_mode = EXCLUSIVE").map_err(sqlite)?;
        let mode: String = row(&connection, "PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Corrupt { path, reason: format!("cannot switch to WAL mode (it is {mode})") });
        }
        connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(sqlite)?;
        let version: i64 = row(&connection, "PRAGMA user_version", [], |row| row.get(0)).map_err(sqlite)?;
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
            Err(Failure::Fenced { key, epoch }) => Err(JournalError::Fenced { key, epoch }),
        }
    }

    /// Applies `assignments` (and `updated_ms`) to row `id` of the fence's key where `condition` holds.
    async fn update(
        &self,
        fence: &Fence,
        id: &str,
        assignments: &'static str,
        condition: &'static str,
    ) -> Result<(), JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            exec(
                connection,
                &format!(
                    "UPDATE withdrawals SET {assignments}, updated_ms = ?2 WHERE id = ?1 AND key = ?3 AND ({condition})"
                ),
                params![id, sql_u64(now_ms()), fence.key],
            )?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl JournalStore for SqliteJournal {
    async fn insert(&self, withdrawal: NewWithdrawal, check: LimitCheck) -> Result<Inserted, JournalError> {
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
            let now = now_ms();
            let spends = match (check.check)(&spent(connection, &withdrawal.key, &check.assets, now)?) {
                Ok(spends) => spends,
                Err(denial) => return Ok(Inserted::Refused(denial)),
            };
            let id = uuid::Uuid::new_v4().to_string();
            let status = if withdrawal.approval.is_some() { Status::PendingApproval } else { Status::Accepted };
            exec(
                connection,
                "INSERT INTO withdrawals (id, kind, client, idempotency_key, key, recipient, asset, amount, status, \
                 created_ms, updated_ms) VALUES (?1, 'withdrawal', ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?8, ?8)",
                params![
                    id,
                    withdrawal.client,
                    withdrawal.idempotency_key,
                    withdrawal.key,
                    withdrawal.recipient.to_string(),
                    asset_text(withdrawal.asset),
                    withdrawal.amount.to_string(),
                    sql_u64(now),
                    status.as_str()
                ],
            )?;
            if let Some(terms) = withdrawal.approval {
                exec(
                    connection,
                    "INSERT INTO approval_terms (withdrawal, quorum, expires_ms) VALUES (?1, ?2, ?3)",
                    params![id, terms.quorum, sql_u64(terms.expires_ms)],
                )?;
            }
            for (asset, amount) in spends {
                insert_spend(connection, &withdrawal.key, asset, amount, now, Some(&id))?;
            }
            Ok(Inserted::New(load_existing(connection, &id)?))
        })
        .await
    }

    async fn insert_rpc(&self, row: NewRpc, check: LimitCheck) -> Result<Result<Withdrawal, Denial>, JournalError> {
        self.run(move |connection| {
            let now = now_ms();
            let spends = match (check.check)(&spent(connection, &row.key, &check.assets, now)?) {
                Ok(spends) => spends,
                Err(denial) => return Ok(Err(denial)),
            };
            let id = row.id;
            exec(
                connection,
                "INSERT INTO withdrawals (id, kind, client, key, recipient, asset, amount, request, status, \
                 created_ms, updated_ms) VALUES (?1, 'rpc', ?2, ?3, ?4, 'ETH', ?5, ?6, 'accepted', ?7, ?7)",
                params![
                    id,
                    row.client,
                    row.key,
                    row.recipient.to_string(),
                    row.amount.to_string(),
                    row.request,
                    sql_u64(now)
                ],
            )?;
            for (asset, amount) in spends {
                insert_spend(connection, &row.key, asset, amount, now, Some(&id))?;
            }
            Ok(Ok(load_existing(connection, &id)?))
        })
        .await
    }

    async fn record_spends(
        &self,
        key: &str,
        tag: &str,
        check: LimitCheck,
    ) -> Result<Result<Vec<(Asset, U256)>, Denial>, JournalError> {
        let (key, tag) = (key.to_owned(), tag.to_owned());
        self.run(move |connection| {
            let now = now_ms();
            let spends = match (check.check)(&spent(connection, &key, &check.assets, now)?) {
                Ok(spends) => spends,
                Err(denial) => return Ok(Err(denial)),
            };
            for (asset, amount) in &spends {
                insert_spend(connection, &key, *asset, *amount, now, Some(&tag))?;
            }
            Ok(Ok(spends))
        })
        .await
    }

    async fn release_spends(&self, tag: &str) -> Result<Vec<Released>, JournalError> {
        let tag = tag.to_owned();
        self.run(move |connection| release_spend(connection, &tag)).await
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
                Status::Accepted | Status::PendingApproval => {
                    exec(
                        connection,
                        "UPDATE withdrawals SET status = 'cancelled', confirmed = 1, updated_ms = ?2 WHERE id = ?1",
                        params![id, sql_u64(now_ms())],
                    )?;
                    Ok(Cancelled::Now(release_spend(connection, &id)?))
                }
                Status::Signing | Status::Signed | Status::Submitted => {
                    exec(
                        connection,
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

    async fn abandon(&self, id: &str, reason: &str) -> Result<bool, JournalError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.run(move |connection| {
            let changed = exec(
                connection,
                "UPDATE withdrawals SET status = 'failed', error = ?2, confirmed = 1, updated_ms = ?3 \
                 WHERE id = ?1 AND status = 'accepted' AND nonce IS NULL",
                params![id, reason, sql_u64(now_ms())],
            )?;
            if changed == 1 {
                release_spend(connection, &id)?;
            }
            Ok(changed == 1)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| Ok(load(connection, &id)?)).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Withdrawal>, JournalError> {
        let ids = ids.to_vec();
        self.run(move |connection| load_all(connection, ids)).await
    }

    async fn unfinished(&self, key: Option<&str>) -> Result<Vec<Withdrawal>, JournalError> {
        let key = key.map(str::to_owned);
        self.run(move |connection| {
            let ids = match &key {
                Some(key) => ids(
                    connection,
                    &format!("SELECT id FROM withdrawals WHERE key = ?1 AND {OPEN} ORDER BY rowid"),
                    key,
                )?,
                None => {
                    ids(connection, &format!("SELECT id FROM withdrawals WHERE ?1 = ?1 AND {OPEN} ORDER BY rowid"), "")?
                }
            };
            load_all(connection, ids)
        })
        .await
    }

    async fn accepted(&self, key: &str) -> Result<Vec<String>, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| {
            let sql = "SELECT id FROM withdrawals WHERE key = ?1 AND confirmed = 0 AND status = 'accepted' \
                       AND kind IN ('withdrawal', 'rpc', 'sweep') ORDER BY rowid";
            Ok(ids(connection, sql, &key)?)
        })
        .await
    }

    async fn cancellations(&self, key: &str) -> Result<Vec<String>, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| {
            let sql = format!("SELECT id FROM withdrawals WHERE key = ?1 AND cancel_requested = 1 AND {OPEN}");
            Ok(ids(connection, &sql, &key)?)
        })
        .await
    }

    async fn ping(&self) -> Result<(), JournalError> {
        self.run(|_| Ok(())).await
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, JournalError> {
        self.take_lease(key, holder, ttl).await
    }

    async fn renew_lease(&self, fence: &Fence, holder: &str, ttl: Duration) -> Result<bool, JournalError> {
        self.extend_lease(fence, holder, ttl).await
    }

    async fn release_lease(&self, fence: &Fence, holder: &str) -> Result<(), JournalError> {
        self.end_lease(fence, holder).await
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>, JournalError> {
        self.lease_rows().await
    }

    async fn recover_nonces(&self, fence: &Fence, pending: u64) -> Result<Nonces, JournalError> {
        self.recovered_nonces(fence, pending).await
    }

    async fn claim(&self, fence: &Fence, id: &str, pending: u64, wanted: Option<u64>) -> Result<Claim, JournalError> {
        self.claim_with_nonce(fence, id, pending, wanted).await
    }

    async fn release_nonces(&self, fence: &Fence, released: Range<u64>) -> Result<Nonces, JournalError> {
        self.free_nonces(fence, released).await
    }

    async fn insert_gap_fill(
        &self,
        fence: &Fence,
        nonce: u64,
        recipient: Address,
    ) -> Result<Option<Withdrawal>, JournalError> {
        self.store_gap_fill(fence, nonce, recipient).await
    }

    async fn add_attempt(&self, fence: &Fence, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let row: Option<(Option<i64>, String, String)> = connection
                .query_row("SELECT nonce, status, key FROM withdrawals WHERE id = ?1", params![id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            let Some((held, status, key)) = row else {
                return Err(Failure::Refused(format!("no row `{id}` to add a transaction to")));
            };
            if key != fence.key {
                return Err(Failure::Refused(format!("`{id}` is key `{key}`'s, not `{}`'s", fence.key)));
            }
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
            exec(
                connection,
                "INSERT INTO attempts (withdrawal, number, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, \
                 signed_ms, cancel, epoch, replica) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 (SELECT holder FROM leases WHERE key = ?10))",
                params![
                    id,
                    number,
                    attempt.tx_hash.to_string(),
                    attempt.raw.to_vec(),
                    attempt.max_fee_per_gas.to_string(),
                    attempt.priority_fee_per_gas.to_string(),
                    sql_u64(attempt.signed_ms),
                    attempt.cancel,
                    sql_u64(fence.epoch),
                    fence.key
                ],
            )?;
            exec(
                connection,
                "UPDATE withdrawals SET tx_hash = ?2, updated_ms = ?3, \
                 status = CASE status WHEN 'signing' THEN 'signed' ELSE status END WHERE id = ?1",
                params![id, attempt.tx_hash.to_string(), sql_u64(now_ms())],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_submitted(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        self.update(fence, id, "status = 'submitted'", "status = 'signed'").await
    }

    async fn mark_mined(
        &self,
        fence: &Fence,
        id: &str,
        tx_hash: B256,
        block: u64,
        block_hash: B256,
        outcome: MinedAs,
        confirmed: bool,
    ) -> Result<(), JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let (status, error) = match outcome {
                MinedAs::Paid if confirmed => (Status::Confirmed, None),
                MinedAs::Paid => (Status::Mined, None),
                MinedAs::Reverted => (Status::Failed, Some("reverted on chain: no value moved (the fee was paid)")),
                MinedAs::Cancelled => (Status::Cancelled, None),
            };
            let changed = exec(
                connection,
                "UPDATE withdrawals SET status = ?2, tx_hash = ?3, block_number = ?4, block_hash = ?5, error = ?6, \
                 confirmed = ?7, updated_ms = ?8 WHERE id = ?1 AND key = ?9",
                params![
                    id,
                    status.as_str(),
                    tx_hash.to_string(),
                    sql_u64(block),
                    block_hash.to_string(),
                    error,
                    confirmed,
                    sql_u64(now_ms()),
                    fence.key
                ],
            )?;
            if changed == 1 && matches!(outcome, MinedAs::Reverted | MinedAs::Cancelled) {
                // No value left: the amount no longer counts against the daily limit.
                exec(connection, "DELETE FROM spends WHERE withdrawal = ?1", params![id])?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_unmined(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        let unmined = "status = 'submitted', block_number = NULL, block_hash = NULL, error = NULL, confirmed = 0";
        self.update(fence, id, unmined, "confirmed = 0").await
    }

    async fn mark_confirmed(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        let confirmed = "confirmed = 1, status = CASE status WHEN 'mined' THEN 'confirmed' ELSE status END";
        self.update(fence, id, confirmed, "1 = 1").await
    }

    async fn mark_failed(
        &self,
        fence: &Fence,
        id: &str,
        reason: &str,
        release: Release,
    ) -> Result<(Vec<Released>, Nonces), JournalError> {
        let (fence, id, reason) = (fence.clone(), id.to_owned(), reason.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let found: Option<(Option<i64>, String)> = row(
                connection,
                "SELECT nonce, status FROM withdrawals WHERE id = ?1 AND key = ?2",
                params![id, fence.key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
            let Some((nonce, status)) = found else {
                return Err(Failure::Refused(format!("no row `{id}` of key `{}` to mark failed", fence.key)));
            };
            if matches!(status.as_str(), "failed" | "confirmed") {
                // Already final (a retry whose first answer was lost): its nonce may be another row's by now.
                return Ok((Vec::new(), load_nonces(connection, &fence.key)?));
            }
            exec(
                connection,
                "UPDATE withdrawals SET status = 'failed', error = ?2, confirmed = 1, updated_ms = ?3 WHERE id = ?1",
                params![id, reason, sql_u64(now_ms())],
            )?;
            let mut nonces = load_nonces(connection, &fence.key)?;
            if release.nonce
                && let Some(nonce) = nonce
            {
                nonces.release(u64::try_from(nonce).unwrap_or(0));
                store_nonces(connection, &fence.key, &nonces)?;
            }
            let released = if release.spends { release_spend(connection, &id)? } else { Vec::new() };
            Ok((released, nonces))
        })
        .await
    }

    fn close(&self) {
        if self.jobs.send(Message::Close).is_ok() {
            let _ = self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
        }
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
