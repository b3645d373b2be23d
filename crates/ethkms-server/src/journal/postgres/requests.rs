//! The requests' side of the PostgreSQL journal: what any replica writes for a client (withdrawals, RPC
//! transactions, amounts counted against the daily limits, cancellations) and the reads. Each function runs
//! inside one transaction of [`PostgresJournal::run`](super::PostgresJournal).
//!
//! Writes that give the key's owner new work (a row to sign, a cancellation to send) notify
//! [`CHANNEL`] with the key's name in the same transaction: PostgreSQL delivers
//! the notification when, and only if, it commits.

use alloy_primitives::U256;
use deadpool_postgres::{GenericClient, Transaction};

use super::Failure;
use super::inserts;
use super::listener::CHANNEL;
use super::rows::{
    NOW_MS, execute, insert_spend, load_existing, load_where, lock_limits, query, query_opt, release_spend, spent,
    to_i64,
};
use crate::journal::{Cancelled, Inserted, Kind, LimitCheck, NewRpc, NewWithdrawal, Status, Withdrawal};
use crate::policy::{Asset, Denial};

/// Wakes the owner of `key` once this transaction commits.
async fn notify(transaction: &Transaction<'_>, key: &str) -> Result<(), Failure> {
    query(transaction, "SELECT pg_notify($1, $2)", &[&CHANNEL, &key]).await?;
    Ok(())
}

/// Runs `check` on what `key` moved in the last 24 hours under the key's limit lock; the time (the
/// database's) and the amounts to count, or the denial.
async fn checked(
    transaction: &Transaction<'_>,
    key: &str,
    check: LimitCheck,
) -> Result<(u64, Result<Vec<(Asset, U256)>, Denial>), Failure> {
    let now = lock_limits(transaction, key, &check.assets).await?;
    let spent = spent(transaction, key, &check.assets, now).await?;
    Ok((now, (check.check)(&spent)))
}

/// The withdrawal the client made with `idempotency_key`, if it did.
pub(super) async fn existing(
    database: &impl GenericClient,
    client: String,
    idempotency_key: String,
) -> Result<Option<Withdrawal>, Failure> {
    Ok(load_where(database, "client = $1 AND idempotency_key = $2", &[&client, &idempotency_key]).await?.pop())
}

/// Stores a client withdrawal whose key has a daily limit, unless the client used its idempotency key
/// before (on any replica): under the key's limit lock, after reading what it moved. (Without a daily
/// limit, the same statement stores it in a batch: [`inserts`].)
pub(super) async fn insert(
    transaction: &Transaction<'_>,
    withdrawal: NewWithdrawal,
    check: LimitCheck,
) -> Result<Inserted, Failure> {
    let (client, idempotency_key) = (&withdrawal.client, &withdrawal.idempotency_key);
    let now = lock_limits(transaction, &withdrawal.key, &check.assets).await?;
    let sql = "SELECT id FROM withdrawals WHERE client = $1 AND idempotency_key = $2";
    if let Some(row) = query_opt(transaction, sql, &[client, idempotency_key]).await? {
        return Ok(Inserted::Existing(load_existing(transaction, row.try_get(0)?).await?));
    }
    let spends = match (check.check)(&spent(transaction, &withdrawal.key, &check.assets, now).await?) {
        Ok(spends) => spends,
        Err(denial) => return Ok(Inserted::Refused(denial)),
    };
    let id = uuid::Uuid::new_v4().to_string();
    // Another request with the same idempotency key may be storing it now (the limit lock, if any, is the
    // key's, and the request may name another key): the insert waits for it, and then stores nothing.
    let new = inserts::New { id: id.clone(), withdrawal: withdrawal.clone(), spends };
    if let Some(row) = inserts::insert(transaction, &[new], Some(now)).await?.remove(&id) {
        return Ok(Inserted::New(row));
    }
    let stored = existing(transaction, client.clone(), idempotency_key.clone()).await?;
    Ok(Inserted::Existing(stored.ok_or_else(|| Failure::Invalid("an idempotency key's row vanished".into()))?))
}

/// Stores an RPC client's transaction (`accepted`) after `check` (the row, if its id is stored already).
pub(super) async fn insert_rpc(
    transaction: &Transaction<'_>,
    row: NewRpc,
    check: LimitCheck,
) -> Result<Result<Withdrawal, Denial>, Failure> {
    let (now, spends) = checked(transaction, &row.key, check).await?;
    let spends = match spends {
        Ok(spends) => spends,
        Err(denial) => return Ok(Err(denial)),
    };
    let id = row.id;
    // Stored already (a retry whose first commit's answer was lost): that row, its amounts counted once.
    let sql = "INSERT INTO withdrawals (id, kind, client, key, recipient, asset, amount, request, status, created_ms, \
               updated_ms) VALUES ($1, 'rpc', $2, $3, $4, 'ETH', $5::text::numeric, $6, 'accepted', $7, $7) \
               ON CONFLICT (id) DO NOTHING";
    let values: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&id, &row.client, &row.key, &row.recipient.to_string(), &row.amount.to_string(), &row.request, &to_i64(now)];
    if execute(transaction, sql, &values).await? == 0 {
        let existing = load_existing(transaction, &id).await?;
        if existing.kind != Kind::Rpc
            || existing.client.as_deref() != Some(row.client.as_str())
            || existing.key != row.key
        {
            return Err(Failure::Refused(format!("row `{id}` exists and is not this transaction")));
        }
        return Ok(Ok(existing));
    }
    for spend in spends {
        insert_spend(transaction, &row.key, spend, now, &id).await?;
    }
    notify(transaction, &row.key).await?;
    Ok(Ok(load_existing(transaction, &id).await?))
}

/// Runs `check` for `key` and records its amounts under `tag`.
pub(super) async fn record_spends(
    transaction: &Transaction<'_>,
    key: String,
    tag: String,
    check: LimitCheck,
) -> Result<Result<Vec<(Asset, U256)>, Denial>, Failure> {
    let (now, spends) = checked(transaction, &key, check).await?;
    let spends = match spends {
        Ok(spends) => spends,
        Err(denial) => return Ok(Err(denial)),
    };
    for spend in &spends {
        insert_spend(transaction, &key, *spend, now, &tag).await?;
    }
    Ok(Ok(spends))
}

/// A client asks to cancel row `id`.
pub(super) async fn cancel(transaction: &Transaction<'_>, id: String) -> Result<Cancelled, Failure> {
    let row =
        query_opt(transaction, "SELECT status, key FROM withdrawals WHERE id = $1 FOR NO KEY UPDATE", &[&id]).await?;
    let Some(row) = row else { return Ok(Cancelled::NotFound) };
    let (status, key): (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
    let status = Status::parse(status).ok_or_else(|| Failure::Invalid(format!("row `{id}` has status `{status}`")))?;
    match status {
        Status::Accepted | Status::PendingApproval => {
            let sql = format!(
                "UPDATE withdrawals SET status = 'cancelled', confirmed = TRUE, updated_ms = {NOW_MS} WHERE id = $1"
            );
            execute(transaction, &sql, &[&id]).await?;
            Ok(Cancelled::Now(release_spend(transaction, &id).await?))
        }
        Status::Signing | Status::Signed | Status::Submitted => {
            let sql = format!("UPDATE withdrawals SET cancel_requested = TRUE, updated_ms = {NOW_MS} WHERE id = $1");
            execute(transaction, &sql, &[&id]).await?;
            notify(transaction, key).await?;
            Ok(Cancelled::Requested)
        }
        other => Ok(Cancelled::Unchanged(other)),
    }
}

/// `accepted → failed`, its amounts given back, only if nobody claimed it yet.
pub(super) async fn abandon(transaction: &Transaction<'_>, id: String, reason: String) -> Result<bool, Failure> {
    let sql = format!(
        "UPDATE withdrawals SET status = 'failed', error = $2, confirmed = TRUE, updated_ms = {NOW_MS} \
         WHERE id = $1 AND status = 'accepted' AND nonce IS NULL"
    );
    let changed = execute(transaction, &sql, &[&id, &reason]).await? == 1;
    if changed {
        release_spend(transaction, &id).await?;
    }
    Ok(changed)
}
