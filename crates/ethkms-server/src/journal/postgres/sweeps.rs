//! The PostgreSQL journal's sweeps of deposits: a sweep stored as a row of the withdrawal engine (kind
//! `sweep`) together with the deposits it moves, marked `sweeping` — in one transaction, fenced by the
//! watcher's lease, under the deposits' lock — and settled when the row is final.

use alloy_primitives::Address;
use deadpool_postgres::{GenericClient, Transaction};

use super::Failure;
use super::deposits::{DEPOSIT_COLUMNS, DEPOSIT_JOINS, change, deposit_row, key_params, lock_deposits};
use super::engine::fenced;
use super::listener::CHANNEL;
use super::rows::{NOW_MS, execute, load_existing, parse_text, query, query_one, to_i64};
use crate::journal::deposits::{DepositKey, DepositRow, NewSweep};
use crate::journal::{Fence, Kind, Withdrawal};

/// Confirmed deposits still unswept, oldest change first.
pub(super) async fn unswept(client: &impl GenericClient, after: u64, limit: usize) -> Result<Vec<DepositRow>, Failure> {
    let sql = format!(
        "SELECT {DEPOSIT_COLUMNS} FROM deposits d {DEPOSIT_JOINS} \
         WHERE d.change > $1 AND d.status = 'confirmed' AND d.sweep_status = 'unswept' ORDER BY d.change LIMIT $2"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    query(client, &sql, &[&to_i64(after), &limit]).await?.iter().map(deposit_row).collect()
}

/// The sweeps with deposits still `sweeping`, with those deposits' addresses.
pub(super) async fn open(client: &impl GenericClient) -> Result<Vec<(String, Address)>, Failure> {
    let sql = "SELECT DISTINCT sweep, address FROM deposits WHERE sweep_status = 'sweeping' ORDER BY sweep, address";
    query(client, sql, &[]).await?.iter().map(|row| Ok((row.try_get(0)?, parse_text(row.try_get(1)?)?))).collect()
}

/// See [`DepositStore::start_sweep`](crate::journal::DepositStore::start_sweep).
pub(super) async fn start(
    transaction: &Transaction<'_>,
    fence: &Fence,
    sweep: &NewSweep,
) -> Result<Option<Withdrawal>, Failure> {
    fenced(transaction, fence).await?;
    lock_deposits(transaction).await?;
    let (tx_hashes, log_indices): (Vec<String>, Vec<i64>) = sweep.deposits.iter().map(key_params).unzip();
    let keys = "(tx_hash, log_index) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))";
    // Stored already (a retry whose first commit's answer was lost): that row.
    if let Some(existing) = super::rows::load(transaction, &sweep.id).await? {
        return if existing.kind == Kind::Sweep {
            Ok(Some(existing))
        } else {
            Err(Failure::Refused(format!("row `{}` exists and is not this sweep", sweep.id)))
        };
    }
    let sql =
        format!("SELECT count(*) FROM deposits WHERE {keys} AND status = 'confirmed' AND sweep_status = 'unswept'");
    let sweepable: i64 = query_one(transaction, &sql, &[&tx_hashes, &log_indices]).await?.try_get(0)?;
    if usize::try_from(sweepable).ok() != Some(sweep.deposits.len()) {
        return Ok(None);
    }
    let sql = format!(
        "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, request, status, created_ms, updated_ms) \
         VALUES ($1, 'sweep', $2, $3, 'ETH', 0, $4, 'accepted', {NOW_MS}, {NOW_MS})"
    );
    execute(transaction, &sql, &[&sweep.id, &sweep.key, &sweep.factory.to_string(), &sweep.request]).await?;
    change(transaction, "sweep_status = 'sweeping', sweep = $3", keys, &[&tx_hashes, &log_indices, &sweep.id]).await?;
    execute(transaction, "SELECT pg_notify($1, $2)", &[&CHANNEL, &sweep.key]).await?;
    Ok(Some(load_existing(transaction, &sweep.id).await?))
}

/// See [`DepositStore::finish_sweep`](crate::journal::DepositStore::finish_sweep).
pub(super) async fn finish(
    transaction: &Transaction<'_>,
    fence: &Fence,
    id: &str,
    block: Option<u64>,
) -> Result<Vec<DepositRow>, Failure> {
    fenced(transaction, fence).await?;
    lock_deposits(transaction).await?;
    let ours = "sweep = $1 AND sweep_status = 'sweeping'";
    let Some(block) = block else {
        return change(transaction, "sweep_status = 'unswept', sweep = NULL", ours, &[&id]).await;
    };
    let mut changed = change(transaction, "sweep_status = 'swept'", ours, &[&id]).await?;
    // What came to the same addresses, of the same assets, in blocks before the sweep went with it.
    let earlier = "sweep_status = 'unswept' AND status = 'confirmed' AND block_number < $2 \
         AND EXISTS (SELECT 1 FROM deposits s WHERE s.sweep = $1 AND s.address = deposits.address \
         AND s.asset = deposits.asset)";
    changed.extend(change(transaction, "sweep_status = 'swept', sweep = $1", earlier, &[&id, &to_i64(block)]).await?);
    Ok(changed)
}

/// See [`DepositStore::mark_swept`](crate::journal::DepositStore::mark_swept).
pub(super) async fn mark_swept(
    transaction: &Transaction<'_>,
    fence: &Fence,
    deposits: &[DepositKey],
) -> Result<Vec<DepositRow>, Failure> {
    fenced(transaction, fence).await?;
    lock_deposits(transaction).await?;
    let (tx_hashes, log_indices): (Vec<String>, Vec<i64>) = deposits.iter().map(key_params).unzip();
    let condition =
        "(tx_hash, log_index) IN (SELECT * FROM unnest($1::text[], $2::bigint[])) AND sweep_status = 'unswept'";
    change(transaction, "sweep_status = 'swept', sweep = NULL", condition, &[&tx_hashes, &log_indices]).await
}
