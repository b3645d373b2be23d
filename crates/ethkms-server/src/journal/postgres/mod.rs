//! [`PostgresJournal`]: the journal in a PostgreSQL database that several replicas share, with the same
//! semantics as the SQLite journal (the [`JournalStore`] contract), plus what sharing needs.
//!
//! # Fencing
//! Every engine write carries a [`Fence`] (key, epoch) and takes, in the same transaction and before any
//! other lock, `SELECT epoch FROM leases WHERE key = $1 FOR KEY SHARE`, writing nothing unless the epoch
//! is the fence's ([`JournalError::Fenced`]): first in a transaction of several statements, or inside a
//! statement that stands alone, as the condition of its writes (`single`). `leases` has
//! `UNIQUE (key, epoch)`, which makes `epoch` a *key column* for PostgreSQL's row locks: a takeover (which
//! changes the epoch) locks the lease row `FOR UPDATE`, the one mode `FOR KEY SHARE` conflicts with. So a
//! takeover waits for every fenced write in flight to commit, and every fenced write that reaches the
//! lease row during a takeover waits for it and then (READ COMMITTED re-reads the row it waited for) sees
//! the new epoch and is refused: each fenced write is ordered entirely before or after a takeover, and
//! none stores anything after it. Renewals and releases change only `expires_ms` (`FOR NO KEY UPDATE`) and
//! block no fenced write; fenced writes of one key share the lease lock and run in parallel.
//!
//! # Batches
//! What every withdrawal goes through — its insert, claim, attempt and status writes — is made in batches
//! (`batch`): requests of one kind (and key) take turns, and the one whose turn it is makes all those
//! waiting in one statement, as the SQLite journal's thread commits what is queued at once. Under load,
//! one round trip and one commit serve many withdrawals; a lone request goes at once.
//!
//! # Locks, in the order they are taken (so two transactions never wait for each other in a cycle)
//! The lease row (`FOR KEY SHARE`, or `FOR UPDATE` by a takeover); the key's `nonces` row (`FOR UPDATE`, by
//! everything that takes or gives back a nonce); the daily-limit lock of the key (a transaction-scoped
//! advisory lock on a hash of its name, by every check that reads the last 24 hours of spends, until its
//! own are added); the withdrawal rows. Idempotency keys need no lock: `UNIQUE (client, idempotency_key)`
//! makes a second insert wait for the first and then store nothing. (A statement of a batch locks several
//! withdrawal rows; two of them lock the same two rows only if two kinds of write of one row met, which
//! the engine does not do — and PostgreSQL would end such a cycle with an error, nothing stored.)
//!
//! # Clocks
//! Lease expiry, the 24-hour window of the daily limits and the rows' times are the database's clock
//! (`clock_timestamp()`), never a replica's: replicas whose clocks disagree still agree on who holds a
//! lease and what a day is.
//!
//! # Failures and retries
//! Errors are [`JournalError::Postgres`] (the URL's password never in them). A pooled connection that
//! PostgreSQL closed (a restart) is dropped by the pool and `BEGIN` is retried on another, as is a
//! statement that stands alone (each may run twice, see `single`); nothing else is retried here. A commit
//! whose answer is lost is reported as an error although it may have happened: every
//! write is conditional, so the engine's retry finds it done — [`claim`](JournalStore::claim) then answers
//! [`Claim::NotAccepted`] (the row is `signing` with its nonce, which recovery picks up, as with SQLite),
//! [`add_attempt`](JournalStore::add_attempt) stores a transaction whose hash the row already has only
//! once, [`insert_rpc`](JournalStore::insert_rpc) under an id already stored answers that row, and
//! [`mark_failed`](JournalStore::mark_failed) of a row already failed gives nothing back twice.
//!
//! A replica paused (or cut off) in the middle of a transaction would hold the lease row, and with it any
//! takeover, for as long as it is paused: its sessions end after 2 s idle inside a transaction
//! (`idle_in_transaction_session_timeout`, unless the URL's `options` set it), which undoes what it had
//! not committed.

mod allowlist;
mod approvals;
mod attempts;
mod batch;
mod claims;
mod deposits;
mod engine;
mod failure;
mod inserts;
mod listener;
mod marks;
mod requests;
mod rows;
mod schema;
mod single;
mod sweeps;
mod webhooks;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Transaction};
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{IsolationLevel, NoTls, Socket};

use super::{
    Attempt, Cancelled, Claim, Fence, Inserted, JournalError, JournalStore, LeaseRow, LimitCheck, MinedAs, NewRpc,
    NewWithdrawal, Nonces, Release, Released, ReplicaRow, Withdrawal,
};
use crate::config::redact_password;
use crate::policy::{Asset, Denial};
use failure::{Failure, Redact, describe, message, pool_message};

/// How many rows [`JournalStore::get_many`] asks for at once.
const GET_MANY_AT_ONCE: usize = 64;

/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// How long connecting may take (unless the URL says `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `BEGIN` (or an operation of single statements) is tried on another connection when a pooled
/// one turns out closed.
const BEGIN_RETRIES: usize = POOL_SIZE + 1;
/// Wake-ups kept for a slow receiver before it misses some.
const WAKE_UPS: usize = 1024;
/// How long PostgreSQL lets a session sit idle inside a transaction before it ends the session (unless the
/// URL's `options` set it): a replica paused or cut off in the middle of a fenced write holds the lease row
/// `FOR KEY SHARE`, and the key could not be taken over while it does. The journal's transactions take
/// milliseconds, so two seconds idle means a stuck client, and bounds how much a takeover can be delayed
/// past the lease (a write cut off so is simply retried: every write is conditional).
const IDLE_IN_TRANSACTION: &str = "idle_in_transaction_session_timeout";
const IDLE_IN_TRANSACTION_MS: u32 = 2_000;

/// The journal on PostgreSQL: a pool of connections and a listener for other replicas' wake-ups. Cheap to
/// clone; the listener stops when the last clone is dropped or [`close`](JournalStore::close)d.
#[derive(Clone)]
pub struct PostgresJournal {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The URL without its password: for messages.
    shown: String,
    redact: Redact,
    wake_ups: broadcast::Sender<String>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// This replica's claims, by key: made in turns, in batches.
    claims: Mutex<HashMap<String, Arc<batch::Batches<claims::Asked, Claim>>>>,
    /// This replica's client withdrawals without a daily limit, stored in batches.
    inserts: inserts::Inserts,
    /// This replica's status writes, by key: in batches.
    marks: Mutex<HashMap<String, Arc<marks::Marks>>>,
    /// Rows asked for by id, read in batches.
    gets: batch::Batches<String, Option<Withdrawal>>,
    /// This replica's signed transactions, by key: stored in batches.
    attempts: Mutex<HashMap<String, Arc<attempts::Attempts>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            listener.abort();
        }
    }
}

/// The URL's password hidden, whatever shows it.
impl fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresJournal")
            .field("url", &self.inner.shown)
            .field("connections", &status.size)
            .field("idle", &status.available)
            .finish_non_exhaustive()
    }
}

/// An operation run in one transaction.
type Operation<R> = Box<dyn for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, Failure>> + Send>;

/// An operation of statements that each commit on their own (see `single`); it may run twice.
type Statements<R> = Box<dyn for<'c> Fn(&'c Client) -> BoxFuture<'c, Result<R, Failure>> + Send + Sync>;

impl PostgresJournal {
    /// The schema version this code writes (in the table `ethkms_schema`).
    pub const SCHEMA_VERSION: i32 = schema::SCHEMA_VERSION;

    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, without TLS),
    /// migrates its schema and starts listening for other replicas' wake-ups.
    ///
    /// # Errors
    /// [`JournalError::Postgres`] if the URL is not one, the database cannot be reached, its schema is newer
    /// than this program's or is not the journal's.
    pub async fn connect(url: &str) -> Result<Self, JournalError> {
        Self::connect_with_tls(url, NoTls).await
    }

    /// [`connect`](Self::connect) with `tls` making the connections (`NoTls`, or a TLS connector).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with_tls<T>(url: &str, tls: T) -> Result<Self, JournalError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let shown = redact_password(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|error: tokio_postgres::Error| {
            JournalError::Postgres(format!("`{shown}` is not a PostgreSQL URL: {}", describe(&error)))
        })?;
        let redact = Redact(config.get_password().map(|password| String::from_utf8_lossy(password).into_owned()));
        let fail = |what: &str, failure: Failure| {
            JournalError::Postgres(format!("{shown}: {what}: {}", message(&redact, failure)))
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that vanished without closing (a partition, a dead host) is noticed within a minute.
        config
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        if !config.get_options().is_some_and(|options| options.contains(IDLE_IN_TRANSACTION)) {
            let setting = format!("-c {IDLE_IN_TRANSACTION}={IDLE_IN_TRANSACTION_MS}");
            let options = config.get_options().map_or(setting.clone(), |options| format!("{options} {setting}"));
            config.options(options);
        }
        if config.get_application_name().is_none() {
            config.application_name("ethkms");
        }
        let mut listen = config.clone();
        listen.application_name(listener::APPLICATION_NAME);
        let manager =
            Manager::from_config(config, tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| JournalError::Postgres(format!("{shown}: connection pool: {error}")))?;
        let mut client = pool
            .get()
            .await
            .map_err(|error| JournalError::Postgres(format!("{shown}: {}", pool_message(&redact, &error))))?;
        schema::migrate(&mut client).await.map_err(|failure| fail("schema", failure))?;
        drop(client);
        let (wake_ups, _) = broadcast::channel(WAKE_UPS);
        let listener = listener::start(listen, tls, wake_ups.clone(), shown.clone())
            .await
            .map_err(|failure| fail("LISTEN", failure))?;
        tracing::info!(journal = %shown, schema = schema::SCHEMA_VERSION, "PostgreSQL journal connected");
        let listener = Mutex::new(Some(listener));
        let (claims, marks, attempts) = (Mutex::default(), Mutex::default(), Mutex::default());
        let (inserts, gets) = (inserts::Inserts::default(), batch::Batches::default());
        let inner = Inner { pool, shown, redact, wake_ups, listener, claims, inserts, marks, gets, attempts };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Runs `operation` in one transaction (read-only and `REPEATABLE READ` with `read`, so that what it reads
    /// is one snapshot), committed if it succeeds and rolled back if not.
    async fn run<R: Send>(&self, read: bool, operation: Operation<R>) -> Result<R, JournalError> {
        let mut operation = Some(operation);
        let mut tries = 0;
        loop {
            let mut client = self.inner.pool.get().await.map_err(|error| self.pool_error(&error))?;
            let builder = client.build_transaction();
            let builder =
                if read { builder.isolation_level(IsolationLevel::RepeatableRead).read_only(true) } else { builder };
            let transaction = match builder.start().await {
                Ok(transaction) => transaction,
                // Nothing was done: a connection that PostgreSQL closed (it restarted), try another.
                Err(error) if tries < BEGIN_RETRIES => {
                    tries += 1;
                    tracing::debug!(journal = %self.inner.shown, error = %describe(&error), "BEGIN failed; another connection");
                    continue;
                }
                Err(error) => return Err(self.error(Failure::Postgres(error))),
            };
            let operation = operation.take().ok_or(JournalError::Closed)?;
            return match operation(&transaction).await {
                Ok(value) => match transaction.commit().await {
                    Ok(()) => Ok(value),
                    Err(error) if error.as_db_error().is_some() => Err(JournalError::Postgres(format!(
                        "the commit was refused, nothing was stored: {}",
                        self.inner.redact.text(&describe(&error))
                    ))),
                    Err(error) => Err(JournalError::Postgres(format!(
                        "the commit's outcome is unknown (its answer was lost; it may have been stored): {}",
                        self.inner.redact.text(&describe(&error))
                    ))),
                },
                Err(failure) => {
                    if let Err(error) = transaction.rollback().await {
                        tracing::debug!(journal = %self.inner.shown, error = %describe(&error), "rollback failed");
                    }
                    Err(self.error(failure))
                }
            };
        }
    }

    /// Runs `operation` on a pooled connection outside any transaction: each of its statements commits on
    /// its own before PostgreSQL answers it. Tried again on another connection if this one turns out
    /// closed (it may have committed: every such operation may run twice).
    async fn single<R: Send>(&self, operation: Statements<R>) -> Result<R, JournalError> {
        let mut tries = 0;
        loop {
            let client = self.inner.pool.get().await.map_err(|error| self.pool_error(&error))?;
            return match operation(&client).await {
                Ok(value) => Ok(value),
                Err(Failure::Postgres(error)) if client.is_closed() && tries < BEGIN_RETRIES => {
                    tries += 1;
                    let error = describe(&error);
                    tracing::debug!(journal = %self.inner.shown, %error, "the connection closed; another");
                    continue;
                }
                Err(Failure::Postgres(error)) if client.is_closed() => Err(JournalError::Postgres(format!(
                    "the outcome is unknown (the connection closed; it may have been stored): {}",
                    self.inner.redact.text(&describe(&error))
                ))),
                Err(failure) => Err(self.error(failure)),
            };
        }
    }

    async fn write<R: Send>(&self, operation: Operation<R>) -> Result<R, JournalError> {
        self.run(false, operation).await
    }

    async fn read<R: Send>(&self, operation: Operation<R>) -> Result<R, JournalError> {
        self.run(true, operation).await
    }

    fn error(&self, failure: Failure) -> JournalError {
        match failure {
            Failure::Refused(reason) => JournalError::Refused(reason),
            Failure::Fenced { key, epoch } => JournalError::Fenced { key, epoch },
            failure => JournalError::Postgres(message(&self.inner.redact, failure)),
        }
    }

    fn pool_error(&self, error: &PoolError) -> JournalError {
        match error {
            PoolError::Closed => JournalError::Closed,
            error => JournalError::Postgres(pool_message(&self.inner.redact, error)),
        }
    }
}

/// Boxes an operation for [`PostgresJournal::run`] (a function, so that the closure's signature is the
/// bound's: higher-ranked over the transaction's lifetime).
fn boxed<R, F>(operation: F) -> Operation<R>
where
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<R, Failure>> + Send + 'static,
{
    Box::new(operation)
}

/// An operation for [`PostgresJournal::run`]: `op!(|transaction| future)`, moving what it uses.
macro_rules! op {
    (|$transaction:ident| $body:expr) => {
        boxed(move |$transaction| Box::pin($body))
    };
}

/// Boxes an operation for [`PostgresJournal::single`] (as [`boxed`]).
fn statements<R, F>(operation: F) -> Statements<R>
where
    F: for<'c> Fn(&'c Client) -> BoxFuture<'c, Result<R, Failure>> + Send + Sync + 'static,
{
    Box::new(operation)
}

/// An operation for [`PostgresJournal::single`]: `single!(|client| future)`, where the future owns what it
/// uses (clones of what the closure holds: it may run again).
macro_rules! single {
    (|$client:ident| $body:expr) => {
        statements(move |$client| Box::pin($body))
    };
}

#[async_trait]
impl JournalStore for PostgresJournal {
    async fn insert(&self, withdrawal: NewWithdrawal, check: LimitCheck) -> Result<Inserted, JournalError> {
        if !check.assets.is_empty() {
            return self.write(op!(|t| requests::insert(t, withdrawal, check))).await;
        }
        self.insert_unlimited(withdrawal, check).await
    }

    async fn insert_rpc(&self, row: NewRpc, check: LimitCheck) -> Result<Result<Withdrawal, Denial>, JournalError> {
        self.write(op!(|t| requests::insert_rpc(t, row, check))).await
    }

    async fn record_spends(
        &self,
        key: &str,
        tag: &str,
        check: LimitCheck,
    ) -> Result<Result<Vec<(Asset, U256)>, Denial>, JournalError> {
        let (key, tag) = (key.to_owned(), tag.to_owned());
        self.write(op!(|t| requests::record_spends(t, key, tag, check))).await
    }

    async fn release_spends(&self, tag: &str) -> Result<Vec<Released>, JournalError> {
        let tag = tag.to_owned();
        self.write(op!(|t| async move { rows::release_spend(t, &tag).await })).await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, JournalError> {
        let id = id.to_owned();
        self.write(op!(|t| requests::cancel(t, id))).await
    }

    async fn abandon(&self, id: &str, reason: &str) -> Result<bool, JournalError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.write(op!(|t| requests::abandon(t, id, reason))).await
    }

    async fn get(&self, id: &str) -> Result<Option<Withdrawal>, JournalError> {
        let id = id.to_owned();
        let journal = self.clone();
        self.inner.gets.make(id, move |batch| Box::pin(async move { journal.get_batch(batch).await })).await
    }

    /// Asked together, so that the batcher reads them a batch per statement.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Withdrawal>, JournalError> {
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_MANY_AT_ONCE) {
            let asked: Vec<_> = chunk.iter().map(|id| self.get(id)).collect();
            for row in futures_util::future::join_all(asked).await {
                rows.extend(row?);
            }
        }
        Ok(rows)
    }

    async fn unfinished(&self, key: Option<&str>) -> Result<Vec<Withdrawal>, JournalError> {
        let key = key.map(str::to_owned);
        self.single(single!(|c| single::unfinished(c, key.clone()))).await
    }

    async fn accepted(&self, key: &str) -> Result<Vec<String>, JournalError> {
        let key = key.to_owned();
        self.single(single!(|c| single::accepted(c, key.clone()))).await
    }

    async fn cancellations(&self, key: &str) -> Result<Vec<String>, JournalError> {
        let key = key.to_owned();
        self.single(single!(|c| single::cancellations(c, key.clone()))).await
    }

    async fn ping(&self) -> Result<(), JournalError> {
        self.single(single!(|c| async move { rows::query(c, "SELECT 1", &[]).await.map(drop) })).await
    }

    fn wake_ups(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.inner.wake_ups.subscribe())
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, JournalError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.write(op!(|t| engine::acquire_lease(t, key, holder, ttl))).await
    }

    async fn renew_lease(&self, fence: &Fence, holder: &str, ttl: Duration) -> Result<bool, JournalError> {
        let (fence, holder) = (fence.clone(), holder.to_owned());
        self.write(op!(|t| engine::renew_lease(t, fence, holder, ttl))).await
    }

    async fn release_lease(&self, fence: &Fence, holder: &str) -> Result<(), JournalError> {
        let (fence, holder) = (fence.clone(), holder.to_owned());
        self.write(op!(|t| engine::release_lease(t, fence, holder))).await
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>, JournalError> {
        self.read(op!(|t| engine::leases(t))).await
    }

    async fn announce(&self, name: &str, ttl: Duration) -> Result<(), JournalError> {
        let name = name.to_owned();
        self.write(op!(|t| engine::announce(t, name, ttl))).await
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRow>, JournalError> {
        self.read(op!(|t| engine::replicas(t))).await
    }

    async fn recover_nonces(&self, fence: &Fence, pending: u64) -> Result<Nonces, JournalError> {
        let fence = fence.clone();
        self.write(op!(|t| engine::recover_nonces(t, fence, pending))).await
    }

    async fn claim(&self, fence: &Fence, id: &str, pending: u64, wanted: Option<u64>) -> Result<Claim, JournalError> {
        self.claim_in_turn(claims::Asked { fence: fence.clone(), id: id.to_owned(), pending, wanted }).await
    }

    async fn release_nonces(&self, fence: &Fence, nonces: Range<u64>) -> Result<Nonces, JournalError> {
        let fence = fence.clone();
        self.write(op!(|t| engine::release_nonces(t, fence, nonces))).await
    }

    async fn insert_gap_fill(
        &self,
        fence: &Fence,
        nonce: u64,
        recipient: Address,
    ) -> Result<Option<Withdrawal>, JournalError> {
        let fence = fence.clone();
        self.write(op!(|t| engine::insert_gap_fill(t, fence, nonce, recipient))).await
    }

    async fn add_attempt(&self, fence: &Fence, id: &str, nonce: u64, attempt: Attempt) -> Result<(), JournalError> {
        self.add_in_turn(attempts::Signed { fence: fence.clone(), id: id.to_owned(), nonce, attempt }).await
    }

    async fn mark_submitted(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        self.mark(marks::Marked { fence: fence.clone(), id: id.to_owned(), mark: marks::Mark::Submitted }).await
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
        if outcome == MinedAs::Paid {
            let mark = marks::Mark::Paid { tx_hash, block, block_hash, confirmed };
            return self.mark(marks::Marked { fence: fence.clone(), id: id.to_owned(), mark }).await;
        }
        let (fence, id) = (fence.clone(), id.to_owned());
        self.single(single!(|c| {
            let mined = single::Mined { tx_hash, block, block_hash, outcome, confirmed };
            single::mark_mined(c, fence.clone(), id.clone(), mined)
        }))
        .await
    }

    async fn mark_unmined(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        let unmined = "status = 'submitted', block_number = NULL, block_hash = NULL, error = NULL, confirmed = FALSE";
        self.single(single!(|c| single::update(c, fence.clone(), id.clone(), unmined, "NOT confirmed"))).await
    }

    async fn mark_confirmed(&self, fence: &Fence, id: &str) -> Result<(), JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        let confirmed = "confirmed = TRUE, status = CASE status WHEN 'mined' THEN 'confirmed' ELSE status END";
        self.single(single!(|c| single::update(c, fence.clone(), id.clone(), confirmed, "TRUE"))).await
    }

    async fn mark_failed(
        &self,
        fence: &Fence,
        id: &str,
        reason: &str,
        release: Release,
    ) -> Result<(Vec<Released>, Nonces), JournalError> {
        let (fence, id, reason) = (fence.clone(), id.to_owned(), reason.to_owned());
        self.write(op!(|t| engine::mark_failed(t, fence, id, reason, release))).await
    }

    fn close(&self) {
        self.inner.pool.close();
        if let Some(listener) = self.inner.listener.lock().unwrap_or_else(PoisonError::into_inner).take() {
            listener.abort();
        }
        tracing::info!(journal = %self.inner.shown, "PostgreSQL journal closed");
    }
}

#[cfg(test)]
pub(super) mod tests;
