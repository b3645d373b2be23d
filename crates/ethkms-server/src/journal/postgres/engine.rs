//! The engine's side of the PostgreSQL journal: leases, replicas' announcements, and the writes fenced by one that take several
//! statements — recovering and giving back nonces, claims when the key has free nonces (or a client asked
//! for a nonce), gap fills, failures. Each function runs inside one transaction of
//! [`PostgresJournal::run`](super::PostgresJournal); see the module documentation of `postgres` for the
//! locks and their order. What every withdrawal goes through is one statement each, in [`single`](super::single).

use std::ops::Range;
use std::time::Duration;

use alloy_primitives::Address;
use deadpool_postgres::Transaction;

use super::Failure;
use super::rows::{
    NOW_MS, execute, load_existing, lock_nonces, query, query_opt, release_spend, store_nonces, to_i64, to_u64,
};
use crate::journal::{Claim, Fence, LeaseRow, Nonces, Release, Released, ReplicaRow, Status, Withdrawal};

/// Rows still in the engine's hands (as the SQLite journal's `OPEN`; its first two conditions are the
/// predicate of the index `withdrawals_open_by_key`).
pub(super) const OPEN: &str = "NOT confirmed AND status NOT IN ('confirmed', 'failed') \
    AND NOT (status = 'cancelled' AND block_number IS NULL) AND status <> 'pending_approval'";

/// Refuses the operation unless `fence` is the key's current lease, and holds the lease row `FOR KEY SHARE`
/// until the transaction ends: a takeover waits for this transaction, or this one for it (and then sees the
/// new epoch).
pub(super) async fn fenced(transaction: &Transaction<'_>, fence: &Fence) -> Result<(), Failure> {
    let row = query_opt(transaction, "SELECT epoch FROM leases WHERE key = $1 FOR KEY SHARE", &[&fence.key]).await?;
    let epoch: Option<i64> = row.map(|row| row.try_get(0)).transpose()?;
    if epoch == Some(to_i64(fence.epoch)) {
        Ok(())
    } else {
        Err(Failure::Fenced { key: fence.key.clone(), epoch: fence.epoch })
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Takes `key`'s lease for `holder` if nobody holds it, it ran out (on the database's clock), or `holder`
/// already holds it (a replica restarted under its configured name): always with a new epoch.
pub(super) async fn acquire_lease(
    transaction: &Transaction<'_>,
    key: String,
    holder: String,
    ttl: Duration,
) -> Result<Option<u64>, Failure> {
    let sql = format!("SELECT holder, expires_ms > {NOW_MS} FROM leases WHERE key = $1 FOR UPDATE");
    let current = query_opt(transaction, &sql, &[&key]).await?;
    let row = match current {
        None => {
            // A replica inserting the same key at once waits for ours, then takes nothing.
            let sql = format!(
                "INSERT INTO leases (key, holder, epoch, expires_ms) VALUES ($1, $2, 1, {NOW_MS} + $3) \
                 ON CONFLICT (key) DO NOTHING RETURNING epoch"
            );
            query_opt(transaction, &sql, &[&key, &holder, &millis(ttl)]).await?
        }
        Some(row) => {
            let (current, running): (&str, bool) = (row.try_get(0)?, row.try_get(1)?);
            if running && current != holder {
                return Ok(None);
            }
            let sql = format!(
                "UPDATE leases SET holder = $2, epoch = epoch + 1, expires_ms = {NOW_MS} + $3 WHERE key = $1 \
                 RETURNING epoch"
            );
            query_opt(transaction, &sql, &[&key, &holder, &millis(ttl)]).await?
        }
    };
    let epoch = row.map(|row| row.try_get::<_, i64>(0)).transpose()?.map(to_u64).transpose()?;
    if let Some(epoch) = epoch {
        tracing::info!(key, holder, epoch, "lease taken");
    }
    Ok(epoch)
}

/// Extends the lease of `fence` if `holder` still holds it at that epoch (only `expires_ms` changes: no
/// fenced write waits for a renewal).
pub(super) async fn renew_lease(
    transaction: &Transaction<'_>,
    fence: Fence,
    holder: String,
    ttl: Duration,
) -> Result<bool, Failure> {
    let sql = format!("UPDATE leases SET expires_ms = {NOW_MS} + $4 WHERE key = $1 AND holder = $2 AND epoch = $3");
    let changed = execute(transaction, &sql, &[&fence.key, &holder, &to_i64(fence.epoch), &millis(ttl)]).await?;
    Ok(changed == 1)
}

/// Ends the lease of `fence` now (it stays the key's epoch until another replica takes it).
pub(super) async fn release_lease(transaction: &Transaction<'_>, fence: Fence, holder: String) -> Result<(), Failure> {
    let sql = "UPDATE leases SET expires_ms = 0 WHERE key = $1 AND holder = $2 AND epoch = $3";
    execute(transaction, sql, &[&fence.key, &holder, &to_i64(fence.epoch)]).await?;
    Ok(())
}

/// Every key's lease, by key.
pub(super) async fn leases(transaction: &Transaction<'_>) -> Result<Vec<LeaseRow>, Failure> {
    let rows = query(transaction, "SELECT key, holder, epoch, expires_ms FROM leases ORDER BY key", &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(LeaseRow {
                key: row.try_get(0)?,
                holder: row.try_get(1)?,
                epoch: to_u64(row.try_get(2)?)?,
                expires_ms: to_u64(row.try_get(3)?)?,
            })
        })
        .collect()
}

/// How long a replica that stopped announcing itself stays in `replicas` (then the next announcement of
/// any replica deletes it): names are often per process.
const FORGET_REPLICAS_AFTER_MS: i64 = 24 * 60 * 60 * 1000;

/// Announces replica `name` until `ttl` from now; forgets replicas silent for a day.
pub(super) async fn announce(transaction: &Transaction<'_>, name: String, ttl: Duration) -> Result<(), Failure> {
    let sql = format!(
        "INSERT INTO replicas (name, expires_ms) VALUES ($1, {NOW_MS} + $2) \
         ON CONFLICT (name) DO UPDATE SET expires_ms = EXCLUDED.expires_ms"
    );
    execute(transaction, &sql, &[&name, &millis(ttl)]).await?;
    let sql = format!("DELETE FROM replicas WHERE expires_ms < {NOW_MS} - $1");
    execute(transaction, &sql, &[&FORGET_REPLICAS_AFTER_MS]).await?;
    Ok(())
}

/// The replicas whose announcement runs, with the number of keys' leases each holds that have not run out (leases
/// named with `@`, such as the deposit watcher's, are not keys').
pub(super) async fn replicas(transaction: &Transaction<'_>) -> Result<Vec<ReplicaRow>, Failure> {
    let sql = format!(
        "SELECT r.name, count(l.key) FROM replicas r \
         LEFT JOIN leases l ON l.holder = r.name AND l.expires_ms > {NOW_MS} AND l.key NOT LIKE '@%' \
         WHERE r.expires_ms > {NOW_MS} GROUP BY r.name ORDER BY r.name"
    );
    let rows = query(transaction, &sql, &[]).await?;
    rows.iter()
        .map(|row| {
            let leases: i64 = row.try_get(1)?;
            Ok(ReplicaRow { name: row.try_get(0)?, leases: usize::try_from(leases).unwrap_or(0) })
        })
        .collect()
}

/// Sets the key's nonces from the nonces its open rows hold and the node's `pending` count.
pub(super) async fn recover_nonces(
    transaction: &Transaction<'_>,
    fence: Fence,
    pending: u64,
) -> Result<Nonces, Failure> {
    fenced(transaction, &fence).await?;
    lock_nonces(transaction, &fence.key).await?;
    let sql = format!("SELECT nonce FROM withdrawals WHERE key = $1 AND nonce IS NOT NULL AND {OPEN}");
    let held = query(transaction, &sql, &[&fence.key])
        .await?
        .iter()
        .map(|row| to_u64(row.try_get(0)?))
        .collect::<Result<_, _>>()?;
    let mut nonces = Nonces::default();
    nonces.recover(pending, &held);
    store_nonces(transaction, &fence.key, &nonces).await?;
    Ok(nonces)
}

/// `accepted → signing` with the key's next nonce, in one transaction with the nonce's allocation.
pub(super) async fn claim(
    transaction: &Transaction<'_>,
    fence: Fence,
    id: String,
    pending: u64,
    wanted: Option<u64>,
) -> Result<Claim, Failure> {
    fenced(transaction, &fence).await?;
    let mut nonces = lock_nonces(transaction, &fence.key).await?;
    nonces.observe_pending(pending);
    if let Some(wanted) = wanted
        && wanted != nonces.peek()
    {
        // As the SQLite journal: a row that is no longer `accepted` says so first.
        let sql = "SELECT 1 FROM withdrawals WHERE id = $1 AND key = $2 AND status = 'accepted' AND nonce IS NULL";
        if query_opt(transaction, sql, &[&id, &fence.key]).await?.is_none() {
            return Ok(Claim::NotAccepted);
        }
        return Ok(Claim::NotNext { next: nonces.peek() });
    }
    let nonce = nonces.allocate();
    // Conditional: a row cancelled (or claimed) meanwhile is re-read after its lock and left alone.
    let sql = format!(
        "UPDATE withdrawals SET status = 'signing', nonce = $3, updated_ms = {NOW_MS} \
         WHERE id = $1 AND key = $2 AND status = 'accepted' AND nonce IS NULL"
    );
    if execute(transaction, &sql, &[&id, &fence.key, &to_i64(nonce)]).await? == 0 {
        return Ok(Claim::NotAccepted);
    }
    store_nonces(transaction, &fence.key, &nonces).await?;
    Ok(Claim::Claimed { nonce, nonces })
}

/// Gives back `released` to the key's nonces.
pub(super) async fn release_nonces(
    transaction: &Transaction<'_>,
    fence: Fence,
    released: Range<u64>,
) -> Result<Nonces, Failure> {
    fenced(transaction, &fence).await?;
    let mut nonces = lock_nonces(transaction, &fence.key).await?;
    for nonce in released {
        nonces.release(nonce);
    }
    store_nonces(transaction, &fence.key, &nonces).await?;
    Ok(nonces)
}

/// Stores a gap fill with the free `nonce`, taking it; `None` if it is not free.
pub(super) async fn insert_gap_fill(
    transaction: &Transaction<'_>,
    fence: Fence,
    nonce: u64,
    recipient: Address,
) -> Result<Option<Withdrawal>, Failure> {
    fenced(transaction, &fence).await?;
    let mut nonces = lock_nonces(transaction, &fence.key).await?;
    if !nonces.take(nonce) {
        return Ok(None);
    }
    store_nonces(transaction, &fence.key, &nonces).await?;
    let id = format!("gap-{}", uuid::Uuid::new_v4());
    let sql = format!(
        "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, status, nonce, created_ms, updated_ms) \
         VALUES ($1, 'gap_fill', $2, $3, 'ETH', 0, 'signing', $4, {NOW_MS}, {NOW_MS})"
    );
    execute(transaction, &sql, &[&id, &fence.key, &recipient.to_string(), &to_i64(nonce)]).await?;
    Ok(Some(load_existing(transaction, &id).await?))
}

/// Marks row `id` failed for `reason`, giving back what `release` says (nothing, if it already failed: a
/// retry must not free a nonce twice, which another row may hold by now).
pub(super) async fn mark_failed(
    transaction: &Transaction<'_>,
    fence: Fence,
    id: String,
    reason: String,
    release: Release,
) -> Result<(Vec<Released>, Nonces), Failure> {
    fenced(transaction, &fence).await?;
    let mut nonces = lock_nonces(transaction, &fence.key).await?;
    let sql = "SELECT nonce, status FROM withdrawals WHERE id = $1 AND key = $2 FOR NO KEY UPDATE";
    let Some(row) = query_opt(transaction, sql, &[&id, &fence.key]).await? else {
        return Err(Failure::Refused(format!("no row `{id}` of key `{}` to mark failed", fence.key)));
    };
    let (nonce, status): (Option<i64>, &str) = (row.try_get(0)?, row.try_get(1)?);
    if status == Status::Failed.as_str() {
        return Ok((Vec::new(), nonces));
    }
    let sql = format!(
        "UPDATE withdrawals SET status = 'failed', error = $2, confirmed = TRUE, updated_ms = {NOW_MS} WHERE id = $1"
    );
    execute(transaction, &sql, &[&id, &reason]).await?;
    if release.nonce
        && let Some(nonce) = nonce
    {
        nonces.release(to_u64(nonce)?);
        store_nonces(transaction, &fence.key, &nonces).await?;
    }
    let released = if release.spends { release_spend(transaction, &id).await? } else { Vec::new() };
    Ok((released, nonces))
}
