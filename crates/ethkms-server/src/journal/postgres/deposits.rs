//! The PostgreSQL journal's [`DepositStore`]: deposit addresses, deposits and the blocks read, in the tables
//! of migration 3. Changes are numbered by the sequence `deposit_changes`, under an advisory lock so that
//! they commit in their order; a reference asked for on two replicas at once is stored once (`ON CONFLICT
//! DO NOTHING`, then read).

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::rows::{NOW_MS, asset_text, execute, parse_asset, parse_text, query, query_opt, to_i64, to_u64};
use super::{Failure, PostgresJournal, boxed};
use crate::journal::JournalError;
use crate::journal::deposits::{BlockRecord, DepositAddressRow, DepositRow, DepositStatus, DepositStore, NewDeposit};

/// Blocks read that are remembered (a reorg deeper than this is not noticed against them).
const BLOCKS_KEPT: i64 = 1024;

/// The advisory lock (two-key form, beside the schema's) every write of deposits holds until it commits:
/// such writes take turns, so their change numbers (drawn from a sequence) commit in order, and a client
/// reading `since` a number never misses one committed after it.
const DEPOSITS_LOCK: (i32, i32) = (0x6574_686b, 2);

async fn lock_deposits(transaction: &Transaction<'_>) -> Result<(), Failure> {
    execute(transaction, "SELECT pg_advisory_xact_lock($1, $2)", &[&DEPOSITS_LOCK.0, &DEPOSITS_LOCK.1]).await?;
    Ok(())
}

const ADDRESS_COLUMNS: &str = "seq, reference, address, client, created_ms";
const DEPOSIT_COLUMNS: &str = "d.change, d.tx_hash, d.log_index, d.address, a.reference, d.asset, d.amount::text, \
    d.sender, d.block_number, d.block_hash, d.status, d.seen_ms, d.updated_ms";

fn address_row(row: &Row) -> Result<DepositAddressRow, Failure> {
    Ok(DepositAddressRow {
        seq: to_u64(row.try_get(0)?)?,
        reference: row.try_get(1)?,
        address: parse_text(row.try_get(2)?)?,
        client: row.try_get(3)?,
        created_ms: to_u64(row.try_get(4)?)?,
    })
}

fn deposit_row(row: &Row) -> Result<DepositRow, Failure> {
    let log_index: i64 = row.try_get(2)?;
    let status: &str = row.try_get(10)?;
    Ok(DepositRow {
        change: to_u64(row.try_get(0)?)?,
        tx_hash: parse_text(row.try_get(1)?)?,
        log_index: u64::try_from(log_index).ok(),
        address: parse_text(row.try_get(3)?)?,
        reference: row.try_get(4)?,
        asset: parse_asset(row.try_get(5)?)?,
        amount: parse_text(row.try_get(6)?)?,
        sender: parse_text(row.try_get(7)?)?,
        block_number: to_u64(row.try_get(8)?)?,
        block_hash: parse_text(row.try_get(9)?)?,
        status: DepositStatus::parse(status).ok_or_else(|| Failure::Invalid(format!("deposit status `{status}`")))?,
        seen_ms: to_u64(row.try_get(11)?)?,
        updated_ms: to_u64(row.try_get(12)?)?,
    })
}

/// Sets `status` on the deposits `condition` selects (`$1`: a block number; `$3`: its hash, when used),
/// each with the next change number; answers them in the order of their changes.
async fn change_status(
    transaction: &Transaction<'_>,
    condition: &str,
    block: i64,
    hash: &str,
    status: DepositStatus,
) -> Result<Vec<DepositRow>, Failure> {
    let sql = format!(
        "WITH d AS (UPDATE deposits SET status = $2, change = nextval('deposit_changes'), updated_ms = {NOW_MS} \
         WHERE {condition} AND $3::text IS NOT NULL RETURNING *) \
         SELECT {DEPOSIT_COLUMNS} FROM d LEFT JOIN deposit_addresses a ON a.address = d.address ORDER BY d.change"
    );
    query(transaction, &sql, &[&block, &status.as_str(), &hash]).await?.iter().map(deposit_row).collect()
}

async fn deposit_address(
    transaction: &Transaction<'_>,
    reference: String,
    address: Address,
    client: String,
) -> Result<DepositAddressRow, Failure> {
    let address_text = address.to_string();
    let sql = format!(
        "INSERT INTO deposit_addresses (reference, address, client, created_ms) VALUES ($1, $2, $3, {NOW_MS}) \
         ON CONFLICT DO NOTHING"
    );
    execute(transaction, &sql, &[&reference, &address_text, &client]).await?;
    let sql = format!("SELECT {ADDRESS_COLUMNS} FROM deposit_addresses WHERE reference = $1");
    if let Some(row) = query_opt(transaction, &sql, &[&reference]).await? {
        return address_row(&row);
    }
    let sql = "SELECT reference FROM deposit_addresses WHERE address = $1";
    let taken: Option<String> = query_opt(transaction, sql, &[&address_text]).await?.map(|row| row.get(0));
    Err(Failure::Refused(format!("address {address} is already reference {:?}'s", taken.unwrap_or_default())))
}

async fn record_block(
    transaction: &Transaction<'_>,
    block: BlockRecord,
    deposits: Vec<NewDeposit>,
) -> Result<usize, Failure> {
    lock_deposits(transaction).await?;
    let (number, hash) = (to_i64(block.number), block.hash.to_string());
    let sql = "INSERT INTO deposit_blocks (number, hash) VALUES ($1, $2) ON CONFLICT (number) DO NOTHING";
    execute(transaction, sql, &[&number, &hash]).await?;
    let stored: String = query_opt(transaction, "SELECT hash FROM deposit_blocks WHERE number = $1", &[&number])
        .await?
        .map(|row| row.get(0))
        .unwrap_or_default();
    if stored != hash {
        // A reader that lost the chain (or the lease) must not record another block over this one.
        return Err(Failure::Refused(format!(
            "block {} is recorded with hash {stored}: remove it before recording another",
            block.number
        )));
    }
    execute(transaction, "DELETE FROM deposit_blocks WHERE number < $1", &[&(number - BLOCKS_KEPT)]).await?;
    // A deposit taken back by a reorg and mined again is brought back with what it is now (a log's index may
    // now be another log of the same transaction).
    let sql = format!(
        "INSERT INTO deposits (tx_hash, log_index, address, asset, amount, sender, block_number, block_hash, status, \
         change, seen_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7, $8, 'pending', nextval('deposit_changes'), {NOW_MS}, {NOW_MS}) \
         ON CONFLICT (tx_hash, log_index) DO UPDATE SET status = 'pending', address = excluded.address, \
         asset = excluded.asset, amount = excluded.amount, sender = excluded.sender, \
         block_number = excluded.block_number, block_hash = excluded.block_hash, change = excluded.change, \
         updated_ms = excluded.updated_ms WHERE deposits.status IN ('removed', 'reversed')"
    );
    let mut recorded = 0;
    for deposit in deposits {
        let log_index = deposit.log_index.map_or(-1, to_i64);
        let changed = execute(
            transaction,
            &sql,
            &[
                &deposit.tx_hash.to_string(),
                &log_index,
                &deposit.address.to_string(),
                &asset_text(deposit.asset),
                &deposit.amount.to_string(),
                &deposit.sender.to_string(),
                &number,
                &hash,
            ],
        )
        .await?;
        recorded += usize::try_from(changed).unwrap_or(0);
    }
    Ok(recorded)
}

#[async_trait]
impl DepositStore for PostgresJournal {
    async fn deposit_address(
        &self,
        reference: &str,
        address: Address,
        client: &str,
    ) -> Result<DepositAddressRow, JournalError> {
        let (reference, client) = (reference.to_owned(), client.to_owned());
        self.write(boxed(move |t| Box::pin(deposit_address(t, reference, address, client)))).await
    }

    async fn deposit_addresses(&self, after_seq: u64, limit: usize) -> Result<Vec<DepositAddressRow>, JournalError> {
        self.read(boxed(move |t| {
            Box::pin(async move {
                let sql =
                    format!("SELECT {ADDRESS_COLUMNS} FROM deposit_addresses WHERE seq > $1 ORDER BY seq LIMIT $2");
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                query(t, &sql, &[&to_i64(after_seq), &limit]).await?.iter().map(address_row).collect()
            })
        }))
        .await
    }

    async fn record_block(&self, block: BlockRecord, deposits: Vec<NewDeposit>) -> Result<usize, JournalError> {
        self.write(boxed(move |t| Box::pin(record_block(t, block, deposits)))).await
    }

    async fn recent_blocks(&self, limit: usize) -> Result<Vec<BlockRecord>, JournalError> {
        self.read(boxed(move |t| {
            Box::pin(async move {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows = query(t, "SELECT number, hash FROM deposit_blocks ORDER BY number DESC LIMIT $1", &[&limit])
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(BlockRecord { number: to_u64(row.try_get(0)?)?, hash: parse_text::<B256>(row.try_get(1)?)? })
                    })
                    .collect()
            })
        }))
        .await
    }

    async fn remove_block(&self, block: BlockRecord) -> Result<Vec<DepositRow>, JournalError> {
        self.write(boxed(move |t| {
            Box::pin(async move {
                lock_deposits(t).await?;
                let (number, hash) = (to_i64(block.number), block.hash.to_string());
                let sql = "DELETE FROM deposit_blocks WHERE number = $1 AND hash = $2";
                if execute(t, sql, &[&number, &hash]).await? == 0 {
                    return Ok(Vec::new());
                }
                let pending = "block_number = $1 AND block_hash = $3 AND status = 'pending'";
                let mut changed = change_status(t, pending, number, &hash, DepositStatus::Removed).await?;
                let confirmed = "block_number = $1 AND block_hash = $3 AND status = 'confirmed'";
                changed.extend(change_status(t, confirmed, number, &hash, DepositStatus::Reversed).await?);
                Ok(changed)
            })
        }))
        .await
    }

    async fn confirm_deposits(&self, block: u64) -> Result<Vec<DepositRow>, JournalError> {
        self.write(boxed(move |t| {
            Box::pin(async move {
                lock_deposits(t).await?;
                // Only deposits of blocks recorded as read: a stale record of a dropped block is not confirmed.
                let condition = "block_number <= $1 AND status = 'pending' AND EXISTS (SELECT 1 FROM deposit_blocks b \
                                 WHERE b.number = deposits.block_number AND b.hash = deposits.block_hash)";
                change_status(t, condition, to_i64(block), "", DepositStatus::Confirmed).await
            })
        }))
        .await
    }

    async fn deposits(&self, since: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError> {
        self.read(boxed(move |t| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {DEPOSIT_COLUMNS} FROM deposits d LEFT JOIN deposit_addresses a ON a.address = d.address \
                     WHERE d.change > $1 ORDER BY d.change LIMIT $2"
                );
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                query(t, &sql, &[&to_i64(since), &limit]).await?.iter().map(deposit_row).collect()
            })
        }))
        .await
    }
}
