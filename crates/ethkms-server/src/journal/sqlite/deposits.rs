//! The SQLite journal's [`DepositStore`]: deposit addresses, deposits and the blocks read, in the tables of
//! migration 4 (with migration 5's sweep columns; the sweeps themselves are in [`super::sweeps`]). Changes
//! are numbered by `max(change) + 1` (one thread writes).

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::leases::fenced;
use super::rows::{asset_text, exec, parse_asset, parse_text, parse_u256, row, sql_u64};
use super::{Failure, SqliteJournal, now_ms, sweeps};
use crate::journal::deposits::{
    BlockRecord, DepositAddressRow, DepositKey, DepositRow, DepositStatus, DepositStore, NewDeposit, NewSweep,
    SweepStatus,
};
use crate::journal::{Fence, JournalError, Withdrawal};

/// Blocks read that are remembered (a reorg deeper than this is not noticed against them).
const BLOCKS_KEPT: u64 = 1024;

/// The columns of a [`DepositRow`], the deposit joined with its address's reference and its sweep.
const DEPOSIT_COLUMNS: &str = "d.change, d.tx_hash, d.log_index, d.address, a.reference, d.asset, d.amount, d.sender, \
    d.block_number, d.block_hash, d.status, d.seen_ms, d.updated_ms, d.sweep_status, d.sweep, w.tx_hash";
const DEPOSIT_FROM: &str = "deposits d LEFT JOIN deposit_addresses a ON a.address = d.address \
    LEFT JOIN withdrawals w ON w.id = d.sweep";

pub(super) fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn address_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DepositAddressRow> {
    Ok(DepositAddressRow {
        seq: u64_of(row.get(0)?),
        reference: row.get(1)?,
        address: parse_text(&row.get::<_, String>(2)?)?,
        client: row.get(3)?,
        created_ms: u64_of(row.get(4)?),
    })
}

fn deposit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DepositRow> {
    let log_index: i64 = row.get(2)?;
    let status: String = row.get(10)?;
    let sweep_status: String = row.get(13)?;
    let sweep_tx_hash: Option<String> = row.get(15)?;
    Ok(DepositRow {
        change: u64_of(row.get(0)?),
        tx_hash: parse_text(&row.get::<_, String>(1)?)?,
        log_index: u64::try_from(log_index).ok(),
        address: parse_text(&row.get::<_, String>(3)?)?,
        reference: row.get(4)?,
        asset: parse_asset(&row.get::<_, String>(5)?)?,
        amount: parse_u256(&row.get::<_, String>(6)?)?,
        sender: parse_text(&row.get::<_, String>(7)?)?,
        block_number: u64_of(row.get(8)?),
        block_hash: parse_text(&row.get::<_, String>(9)?)?,
        status: DepositStatus::parse(&status)
            .ok_or_else(|| super::rows::invalid(format!("deposit status `{status}` cannot be read")))?,
        seen_ms: u64_of(row.get(11)?),
        updated_ms: u64_of(row.get(12)?),
        sweep_status: SweepStatus::parse(&sweep_status)
            .ok_or_else(|| super::rows::invalid(format!("sweep status `{sweep_status}` cannot be read")))?,
        sweep: row.get(14)?,
        sweep_tx_hash: sweep_tx_hash.as_deref().map(parse_text).transpose()?,
    })
}

/// The deposits `condition` selects (with its parameters), in the order of their changes, after `limit`
/// (`LIMIT …`, or nothing).
pub(super) fn select<P: rusqlite::Params>(
    connection: &Connection,
    condition: &str,
    parameters: P,
    limit: &str,
) -> Result<Vec<DepositRow>, Failure> {
    let sql = format!("SELECT {DEPOSIT_COLUMNS} FROM {DEPOSIT_FROM} WHERE {condition} ORDER BY d.change {limit}");
    let mut statement = connection.prepare_cached(&sql)?;
    let rows = statement.query_map(parameters, deposit_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The next change number.
fn next_change(connection: &Connection) -> Result<i64, Failure> {
    Ok(row(connection, "SELECT coalesce(max(change), 0) + 1 FROM deposits", [], |row| row.get(0))?)
}

/// Sets `status` on the deposits `condition` selects (with `parameters`), each with the next change number;
/// answers them.
fn change_status<P: rusqlite::Params>(
    connection: &Connection,
    condition: &str,
    parameters: P,
    status: DepositStatus,
) -> Result<Vec<DepositRow>, Failure> {
    change(connection, condition, parameters, &format!("status = '{}'", status.as_str()), None)
}

/// Applies `set` (an SQL assignment list, in which `?5` is `sweep`) to the deposits `condition` selects
/// (with `parameters`, from `?1`), each with the next change number; answers them.
pub(super) fn change<P: rusqlite::Params>(
    connection: &Connection,
    condition: &str,
    parameters: P,
    set: &str,
    sweep: Option<&str>,
) -> Result<Vec<DepositRow>, Failure> {
    let keys: Vec<(String, i64)> = {
        let mut statement = connection
            .prepare_cached(&format!("SELECT tx_hash, log_index FROM deposits WHERE {condition} ORDER BY change"))?;
        statement.query_map(parameters, |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?
    };
    let now = sql_u64(now_ms());
    // One thread writes: the changes numbered after `before` are exactly these.
    let before = next_change(connection)? - 1;
    for (tx_hash, log_index) in &keys {
        let change = next_change(connection)?;
        exec(
            connection,
            &format!(
                "UPDATE deposits SET {set}, change = ?3, updated_ms = ?4 WHERE tx_hash = ?1 AND log_index = ?2 \
                 AND ?5 IS ?5"
            ),
            params![tx_hash, log_index, change, now, sweep],
        )?;
    }
    select(connection, "d.change > ?1", params![before], "")
}

/// A deposit's key as the journal stores it (`-1`: a transaction's own value).
pub(super) fn key_params(key: &DepositKey) -> (String, i64) {
    (key.tx_hash.to_string(), key.log_index.map_or(-1, sql_u64))
}

#[async_trait]
impl DepositStore for SqliteJournal {
    async fn deposit_address(
        &self,
        reference: &str,
        address: Address,
        client: &str,
    ) -> Result<DepositAddressRow, JournalError> {
        let (reference, client) = (reference.to_owned(), client.to_owned());
        self.run(move |connection| {
            let columns = "seq, reference, address, client, created_ms";
            let existing = row(
                connection,
                &format!("SELECT {columns} FROM deposit_addresses WHERE reference = ?1"),
                params![reference],
                address_row,
            )
            .optional()?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
            let taken: Option<String> = row(
                connection,
                "SELECT reference FROM deposit_addresses WHERE address = ?1",
                params![address.to_string()],
                |row| row.get(0),
            )
            .optional()?;
            if let Some(taken) = taken {
                return Err(Failure::Refused(format!("address {address} is already reference {taken:?}'s")));
            }
            exec(
                connection,
                "INSERT INTO deposit_addresses (reference, address, client, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![reference, address.to_string(), client, sql_u64(now_ms())],
            )?;
            Ok(row(
                connection,
                &format!("SELECT {columns} FROM deposit_addresses WHERE reference = ?1"),
                params![reference],
                address_row,
            )?)
        })
        .await
    }

    async fn deposit_addresses(&self, after_seq: u64, limit: usize) -> Result<Vec<DepositAddressRow>, JournalError> {
        self.run(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT seq, reference, address, client, created_ms FROM deposit_addresses WHERE seq > ?1 \
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = statement
                .query_map(params![sql_u64(after_seq), sql_u64(limit as u64)], address_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn record_block(
        &self,
        fence: &Fence,
        block: BlockRecord,
        deposits: Vec<NewDeposit>,
    ) -> Result<usize, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let (number, hash) = (sql_u64(block.number), block.hash.to_string());
            let stored: Option<String> =
                row(connection, "SELECT hash FROM deposit_blocks WHERE number = ?1", params![number], |row| row.get(0))
                    .optional()?;
            match stored {
                // A reader that lost the chain (or the lease) must not record another block over this one.
                Some(stored) if stored != hash => {
                    return Err(Failure::Refused(format!(
                        "block {} is recorded with hash {stored}: remove it before recording another",
                        block.number
                    )));
                }
                Some(_) => {}
                None => {
                    exec(connection, "INSERT INTO deposit_blocks (number, hash) VALUES (?1, ?2)", params![number, hash])?;
                }
            }
            exec(connection, "DELETE FROM deposit_blocks WHERE number < ?1", params![number - sql_u64(BLOCKS_KEPT)])?;
            let now = sql_u64(now_ms());
            let mut recorded = 0;
            for deposit in deposits {
                let change = next_change(connection)?;
                let log_index = deposit.log_index.map_or(-1, sql_u64);
                // A deposit taken back by a reorg and mined again is brought back with what it is now (a log's
                // index may now be another log of the same transaction).
                recorded += exec(
                    connection,
                    "INSERT INTO deposits (tx_hash, log_index, address, asset, amount, sender, block_number, block_hash, \
                     status, change, seen_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?10) \
                     ON CONFLICT (tx_hash, log_index) DO UPDATE SET status = 'pending', address = excluded.address, \
                     asset = excluded.asset, amount = excluded.amount, sender = excluded.sender, \
                     block_number = excluded.block_number, block_hash = excluded.block_hash, change = excluded.change, \
                     updated_ms = excluded.updated_ms, sweep_status = 'unswept', sweep = NULL \
                     WHERE deposits.status IN ('removed', 'reversed')",
                    params![
                        deposit.tx_hash.to_string(),
                        log_index,
                        deposit.address.to_string(),
                        asset_text(deposit.asset),
                        deposit.amount.to_string(),
                        deposit.sender.to_string(),
                        number,
                        hash,
                        change,
                        now
                    ],
                )?;
            }
            Ok(recorded)
        })
        .await
    }

    async fn recent_blocks(&self, limit: usize) -> Result<Vec<BlockRecord>, JournalError> {
        self.run(move |connection| {
            let mut statement =
                connection.prepare_cached("SELECT number, hash FROM deposit_blocks ORDER BY number DESC LIMIT ?1")?;
            let rows = statement
                .query_map(params![sql_u64(limit as u64)], |row| {
                    Ok(BlockRecord {
                        number: u64_of(row.get(0)?),
                        hash: parse_text::<B256>(&row.get::<_, String>(1)?)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn remove_block(&self, fence: &Fence, block: BlockRecord) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let (number, hash) = (sql_u64(block.number), block.hash.to_string());
            if exec(connection, "DELETE FROM deposit_blocks WHERE number = ?1 AND hash = ?2", params![number, hash])?
                == 0
            {
                return Ok(Vec::new());
            }
            let mut changed = change_status(
                connection,
                "block_number = ?1 AND block_hash = ?2 AND status = 'pending'",
                params![number, hash],
                DepositStatus::Removed,
            )?;
            changed.extend(change_status(
                connection,
                "block_number = ?1 AND block_hash = ?2 AND status = 'confirmed'",
                params![number, hash],
                DepositStatus::Reversed,
            )?);
            Ok(changed)
        })
        .await
    }

    async fn confirm_deposits(&self, fence: &Fence, block: u64) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            // Only deposits of blocks recorded as read: a stale record of a dropped block is not confirmed.
            change_status(
                connection,
                "block_number <= ?1 AND status = 'pending' AND EXISTS (SELECT 1 FROM deposit_blocks b \
                 WHERE b.number = deposits.block_number AND b.hash = deposits.block_hash)",
                params![sql_u64(block)],
                DepositStatus::Confirmed,
            )
        })
        .await
    }

    async fn deposits(&self, since: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError> {
        self.run(move |connection| {
            select(connection, "d.change > ?1", params![sql_u64(since)], &format!("LIMIT {limit}"))
        })
        .await
    }

    async fn unswept(&self, after: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError> {
        self.run(move |connection| {
            let condition = "d.change > ?1 AND d.status = 'confirmed' AND d.sweep_status = 'unswept'";
            select(connection, condition, params![sql_u64(after)], &format!("LIMIT {limit}"))
        })
        .await
    }

    async fn start_sweep(&self, fence: &Fence, sweep: NewSweep) -> Result<Option<Withdrawal>, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| sweeps::start(connection, &fence, &sweep)).await
    }

    async fn open_sweeps(&self) -> Result<Vec<(String, Address)>, JournalError> {
        self.run(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT DISTINCT sweep, address FROM deposits WHERE sweep_status = 'sweeping' ORDER BY sweep, address",
            )?;
            let open = statement
                .query_map([], |row| Ok((row.get(0)?, parse_text(&row.get::<_, String>(1)?)?)))?
                .collect::<Result<Vec<(String, Address)>, _>>()?;
            Ok(open)
        })
        .await
    }

    async fn finish_sweep(&self, fence: &Fence, id: &str, block: Option<u64>) -> Result<Vec<DepositRow>, JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| sweeps::finish(connection, &fence, &id, block)).await
    }

    async fn mark_swept(&self, fence: &Fence, deposits: Vec<DepositKey>) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| sweeps::mark_swept(connection, &fence, &deposits)).await
    }

    async fn unswept_ether(&self, addresses: Vec<Address>, at: u64) -> Result<Vec<(Address, U256)>, JournalError> {
        self.run(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT amount FROM deposits WHERE address = ?1 AND asset = 'ETH' \
                 AND status IN ('pending', 'confirmed') AND block_number <= ?2 \
                 AND (sweep_status IN ('unswept', 'sweeping') OR EXISTS (SELECT 1 FROM withdrawals w \
                 WHERE w.id = deposits.sweep AND w.block_number > ?2))",
            )?;
            let mut held = Vec::new();
            for address in addresses {
                let amounts = statement
                    .query_map(params![address.to_string(), sql_u64(at)], |row| parse_u256(&row.get::<_, String>(0)?))?
                    .collect::<Result<Vec<U256>, _>>()?;
                if !amounts.is_empty() {
                    held.push((address, amounts.into_iter().sum()));
                }
            }
            Ok(held)
        })
        .await
    }
}
