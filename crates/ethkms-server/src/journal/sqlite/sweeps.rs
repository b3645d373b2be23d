//! The SQLite journal's sweeps of deposits: a sweep stored as a row of the withdrawal engine (kind `sweep`)
//! together with the deposits it moves, marked `sweeping` — in one transaction, fenced by the watcher's
//! lease — and settled when the row is final.

use rusqlite::{Connection, params};

use super::deposits::{change, key_params};
use super::leases::fenced;
use super::rows::{exec, load_existing, row, sql_u64};
use super::{Failure, now_ms};
use crate::journal::deposits::{DepositKey, DepositRow, NewSweep};
use crate::journal::{Fence, Withdrawal};

/// See [`DepositStore::start_sweep`](crate::journal::DepositStore::start_sweep).
pub(super) fn start(connection: &Connection, fence: &Fence, sweep: &NewSweep) -> Result<Option<Withdrawal>, Failure> {
    fenced(connection, fence)?;
    for key in &sweep.deposits {
        let (tx_hash, log_index) = key_params(key);
        let sweepable: i64 = row(
            connection,
            "SELECT count(*) FROM deposits WHERE tx_hash = ?1 AND log_index = ?2 AND status = 'confirmed' \
             AND sweep_status = 'unswept'",
            params![tx_hash, log_index],
            |row| row.get(0),
        )?;
        if sweepable == 0 {
            return Ok(None);
        }
    }
    let now = sql_u64(now_ms());
    exec(
        connection,
        "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, request, status, created_ms, updated_ms) \
         VALUES (?1, 'sweep', ?2, ?3, 'ETH', '0', ?4, 'accepted', ?5, ?5)",
        params![sweep.id, sweep.key, sweep.factory.to_string(), sweep.request, now],
    )?;
    for key in &sweep.deposits {
        let (tx_hash, log_index) = key_params(key);
        change(
            connection,
            "tx_hash = ?1 AND log_index = ?2",
            params![tx_hash, log_index],
            "sweep_status = 'sweeping', sweep = ?5",
            Some(&sweep.id),
        )?;
    }
    Ok(Some(load_existing(connection, &sweep.id)?))
}

/// See [`DepositStore::finish_sweep`](crate::journal::DepositStore::finish_sweep).
pub(super) fn finish(
    connection: &Connection,
    fence: &Fence,
    id: &str,
    block: Option<u64>,
) -> Result<Vec<DepositRow>, Failure> {
    fenced(connection, fence)?;
    let Some(block) = block else {
        return change(
            connection,
            "sweep = ?1 AND sweep_status = 'sweeping'",
            params![id],
            "sweep_status = 'unswept', sweep = NULL",
            Some(id),
        );
    };
    let mut changed = change(
        connection,
        "sweep = ?1 AND sweep_status = 'sweeping'",
        params![id],
        "sweep_status = 'swept', sweep = ?5",
        Some(id),
    )?;
    // What came to the same addresses, of the same assets, in blocks before the sweep went with it.
    let earlier = change(
        connection,
        "sweep_status = 'unswept' AND status = 'confirmed' AND block_number < ?2 \
         AND EXISTS (SELECT 1 FROM deposits s WHERE s.sweep = ?1 AND s.address = deposits.address \
         AND s.asset = deposits.asset)",
        params![id, sql_u64(block)],
        "sweep_status = 'swept', sweep = ?5",
        Some(id),
    )?;
    changed.extend(earlier);
    Ok(changed)
}

/// See [`DepositStore::mark_swept`](crate::journal::DepositStore::mark_swept).
pub(super) fn mark_swept(
    connection: &Connection,
    fence: &Fence,
    deposits: &[DepositKey],
) -> Result<Vec<DepositRow>, Failure> {
    fenced(connection, fence)?;
    let mut changed = Vec::new();
    for key in deposits {
        let (tx_hash, log_index) = key_params(key);
        changed.extend(change(
            connection,
            "tx_hash = ?1 AND log_index = ?2 AND sweep_status = 'unswept'",
            params![tx_hash, log_index],
            "sweep_status = 'swept', sweep = NULL",
            None,
        )?);
    }
    Ok(changed)
}
