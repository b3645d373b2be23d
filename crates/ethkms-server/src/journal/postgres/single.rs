//! Statements that stand alone, run outside an explicit transaction
//! ([`PostgresJournal::single`](super::PostgresJournal)): PostgreSQL commits a statement sent on its own
//! before it answers, so one round trip does what `BEGIN`, a statement per step and `COMMIT` did. Here:
//! how such a statement is fenced, the rarer status writes (confirmed, unmined, a mined cancellation or a
//! reverted payment) and the reads. What every withdrawal goes through is written the same way, in
//! batches ([`batch`](super::batch)): claims, client withdrawals, attempts and the common status writes. The
//! rarer writes stay transactions of several statements ([`engine`](super::engine),
//! [`requests`](super::requests)).
//!
//! # Fencing in one statement
//! Each such write is conditional on the lease in the statement itself, by [`FENCE`] (or, in a `WITH`
//! statement, a `lease` query that the final `SELECT` always reads and every write's condition depends
//! on). The `EXISTS` does not depend on the row being written, so PostgreSQL runs it once, first
//! (an `InitPlan`: the plan's one-time filter) — the lease row is locked before any other row, the lock
//! order of the module `postgres` — and a row lock lasts until the statement's implicit transaction
//! commits. A takeover takes the lease row `FOR UPDATE` and changes `epoch`, a key column, which conflicts
//! with `FOR KEY SHARE`: if it holds the row first, the statement's lock waits for it to commit and then
//! (READ COMMITTED re-reads the newest version of a row it waited for and checks `epoch = $3` again) finds
//! another epoch: the `EXISTS` is false and nothing is written; if the statement holds it first, the
//! takeover waits until the statement has committed. Each write is entirely before a takeover or stores
//! nothing — as with the fence query opening a transaction ([`fenced`](super::engine::fenced)).
//!
//! A fenced write that changed nothing is told apart from one that had nothing to do by reading the epoch
//! afterwards ([`nothing_or_fenced`]): epochs only grow, so a lease that is the fence's now was the fence's
//! when the statement ran.
//!
//! # Running twice
//! Every operation of such statements may run twice — the journal tries it again on another connection when its own
//! turned out closed (PostgreSQL restarted; it may have committed before the answer was lost): status
//! writes are conditional or set the same values again, an attempt whose hash the row has is not stored
//! again, a claim run twice finds its rows `signing` ([`Claim::NotAccepted`](crate::journal::Claim), which
//! the engine resolves), and an insert run twice finds its idempotency key taken (the row stored is
//! answered).

use std::collections::HashMap;
use std::sync::Arc;

use alloy_primitives::B256;
use deadpool_postgres::GenericClient;

use super::batch::{Waiting, copy};
use super::engine::OPEN;
use super::rows::{NOW_MS, execute, load_where, query, query_one, query_opt, to_i64};
use super::{Failure, PostgresJournal, statements};
use crate::journal::{Fence, JournalError, MinedAs, Status, Withdrawal};

/// The fence of a statement whose `$2` is the key and `$3` the epoch (see the module documentation).
pub(super) const FENCE: &str = "EXISTS (SELECT 1 FROM leases WHERE key = $2 AND epoch = $3 FOR KEY SHARE)";

/// After a fenced statement that changed nothing: [`Failure::Fenced`] unless `fence` is still the key's
/// lease (then the statement's condition did not hold: there was nothing to do).
pub(super) async fn nothing_or_fenced(client: &impl GenericClient, fence: &Fence) -> Result<(), Failure> {
    let row = query_opt(client, "SELECT epoch FROM leases WHERE key = $1", &[&fence.key]).await?;
    current(row.map(|row| row.try_get(0)).transpose()?, fence)
}

/// [`Failure::Fenced`] unless `epoch` (as read under the lease's lock) is the fence's.
pub(super) fn current(epoch: Option<i64>, fence: &Fence) -> Result<(), Failure> {
    if epoch == Some(to_i64(fence.epoch)) {
        Ok(())
    } else {
        Err(Failure::Fenced { key: fence.key.clone(), epoch: fence.epoch })
    }
}

/// Applies `assignments` (and `updated_ms`) to row `id` of the fence's key where `condition` holds.
pub(super) async fn update(
    client: &impl GenericClient,
    fence: Fence,
    id: String,
    assignments: &'static str,
    condition: &'static str,
) -> Result<(), Failure> {
    let sql = format!(
        "UPDATE withdrawals SET {assignments}, updated_ms = {NOW_MS} \
         WHERE id = $1 AND key = $2 AND ({condition}) AND {FENCE}"
    );
    if execute(client, &sql, &[&id, &fence.key, &to_i64(fence.epoch)]).await? == 0 {
        nothing_or_fenced(client, &fence).await?;
    }
    Ok(())
}

/// How a row's nonce was mined: [`JournalStore::mark_mined`](crate::journal::JournalStore::mark_mined)'s
/// arguments.
pub(super) struct Mined {
    pub(super) tx_hash: B256,
    pub(super) block: u64,
    pub(super) block_hash: B256,
    pub(super) outcome: MinedAs,
    pub(super) confirmed: bool,
}

/// The status of a row mined and paid: `confirmed` if already deep enough.
pub(super) const fn paid_status(confirmed: bool) -> Status {
    if confirmed { Status::Confirmed } else { Status::Mined }
}

/// Row `id` was mined as `mined` says; a reverted payment or a mined cancellation no longer counts
/// against the daily limit (its amounts deleted in the same statement, only if the row changed).
pub(super) async fn mark_mined(
    client: &impl GenericClient,
    fence: Fence,
    id: String,
    mined: Mined,
) -> Result<(), Failure> {
    let (status, error) = match mined.outcome {
        MinedAs::Paid => (paid_status(mined.confirmed), None),
        MinedAs::Reverted => (Status::Failed, Some("reverted on chain: no value moved (the fee was paid)")),
        MinedAs::Cancelled => (Status::Cancelled, None),
    };
    let update = format!(
        "UPDATE withdrawals SET status = $4, tx_hash = $5, block_number = $6, block_hash = $7, error = $8, \
         confirmed = $9, updated_ms = {NOW_MS} WHERE id = $1 AND key = $2 AND {FENCE}"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &id,
        &fence.key,
        &to_i64(fence.epoch),
        &status.as_str(),
        &mined.tx_hash.to_string(),
        &to_i64(mined.block),
        &mined.block_hash.to_string(),
        &error,
        &mined.confirmed,
    ];
    let changed = if matches!(mined.outcome, MinedAs::Reverted | MinedAs::Cancelled) {
        let sql = format!(
            "WITH mined AS ({update} RETURNING id), \
             released AS (DELETE FROM spends WHERE withdrawal IN (SELECT id FROM mined)) \
             SELECT count(*) FROM mined"
        );
        u64::try_from(query_one(client, &sql, &params).await?.try_get::<_, i64>(0)?).unwrap_or_default()
    } else {
        execute(client, &update, &params).await?
    };
    if changed == 0 {
        nothing_or_fenced(client, &fence).await?;
    }
    Ok(())
}

impl PostgresJournal {
    /// Reads the rows of `batch` (their ids) in one statement and answers each; if the statement fails
    /// (something about one of the ids), each alone, so that one cannot fail the others.
    pub(super) async fn get_batch(&self, batch: Vec<Waiting<String, Option<Withdrawal>>>) {
        let ids: Vec<String> = batch.iter().map(|waiting| waiting.request.clone()).collect();
        match self.get_rows(ids).await {
            Ok(found) => {
                for waiting in batch {
                    let row = found.get(&waiting.request).cloned();
                    waiting.answer(Ok(row));
                }
            }
            Err(JournalError::Postgres(_)) if batch.len() > 1 => {
                for waiting in batch {
                    let found = self.get_rows(vec![waiting.request.clone()]).await;
                    let found = found.map(|mut found| found.remove(&waiting.request));
                    waiting.answer(found);
                }
            }
            Err(error) => {
                for waiting in batch {
                    waiting.answer(Err(copy(&error)));
                }
            }
        }
    }

    async fn get_rows(&self, ids: Vec<String>) -> Result<HashMap<String, Withdrawal>, JournalError> {
        let ids = Arc::new(ids);
        let rows = self
            .single(statements(move |client| {
                let ids = Arc::clone(&ids);
                Box::pin(async move { load_where(client, "id = ANY($1)", &[&ids.as_slice()]).await })
            }))
            .await?;
        Ok(rows.into_iter().map(|row| (row.id.clone(), row)).collect())
    }
}

/// The open rows of `key` (or of every key), oldest first.
pub(super) async fn unfinished(client: &impl GenericClient, key: Option<String>) -> Result<Vec<Withdrawal>, Failure> {
    match key {
        Some(key) => load_where(client, &format!("key = $1 AND {OPEN}"), &[&key]).await,
        None => load_where(client, OPEN, &[]).await,
    }
}

/// The ids of `key`'s rows still `accepted`, oldest first.
pub(super) async fn accepted(client: &impl GenericClient, key: String) -> Result<Vec<String>, Failure> {
    let sql = format!(
        "SELECT id FROM withdrawals WHERE key = $1 AND {OPEN} AND status = 'accepted' \
         AND kind IN ('withdrawal', 'rpc', 'sweep') ORDER BY seq"
    );
    query(client, &sql, &[&key]).await?.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// The ids of `key`'s open rows whose cancellation was asked for.
pub(super) async fn cancellations(client: &impl GenericClient, key: String) -> Result<Vec<String>, Failure> {
    let sql = format!("SELECT id FROM withdrawals WHERE key = $1 AND cancel_requested AND {OPEN} ORDER BY seq");
    query(client, &sql, &[&key]).await?.iter().map(|row| Ok(row.try_get(0)?)).collect()
}
