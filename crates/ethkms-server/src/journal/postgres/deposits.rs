//! The PostgreSQL journal's [`DepositStore`]: deposit addresses, deposits and the blocks read, in the tables
//! of migration 3 (with migration 4's sweep columns; the sweeps themselves are in [`super::sweeps`]). The
//! watcher's writes are fenced by its lease, as the engine's are by a key's. Changes are numbered by the sequence `deposit_changes`, under an advisory lock so that
//! they commit in their order; a reference asked for on two replicas at once is stored once (`ON CONFLICT
//! DO NOTHING`, then read).

use alloy_primitives::{Address, B256, U256};
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::engine::fenced;
use super::rows::{NOW_MS, asset_text, execute, parse_asset, parse_text, query, query_opt, to_i64, to_u64};
use super::{Failure, PostgresJournal, boxed, sweeps};
use crate::journal::deposits::{
    BlockRecord, DepositAddressRow, DepositKey, DepositRow, DepositStatus, DepositStore, NewDeposit, NewSweep,
    SweepStatus,
};
use crate::journal::{Fence, JournalError, Withdrawal};

/// Blocks read that are remembered (a reorg deeper than this is not noticed against them).
const BLOCKS_KEPT: i64 = 1024;

/// The advisory lock (two-key form, beside the schema's) every write of deposits holds until it commits:
/// such writes take turns, so their change numbers (drawn from a sequence) commit in order, and a client
/// reading `since` a number never misses one committed after it.
const DEPOSITS_LOCK: (i32, i32) = (0x6574_686b, 2);

pub(super) async fn lock_deposits(transaction: &Transaction<'_>) -> Result<(), Failure> {
    execute(transaction, "SELECT pg_advisory_xact_lock($1, $2)", &[&DEPOSITS_LOCK.0, &DEPOSITS_LOCK.1]).await?;
    Ok(())
}

const ADDRESS_COLUMNS: &str = "seq, reference, address, client, created_ms";
/// The columns of a [`DepositRow`] (of `d`, the deposits, joined as in [`DEPOSIT_JOINS`]).
pub(super) const DEPOSIT_COLUMNS: &str = "d.change, d.tx_hash, d.log_index, d.address, a.reference, d.asset, \
    d.amount::text, d.sender, d.block_number, d.block_hash, d.status, d.seen_ms, d.updated_ms, d.sweep_status, \
    d.sweep, w.tx_hash";
/// The deposits `d` joined with their address's reference and their sweep.
pub(super) const DEPOSIT_JOINS: &str =
    "LEFT JOIN deposit_addresses a ON a.address = d.address LEFT JOIN withdrawals w ON w.id = d.sweep";

fn address_row(row: &Row) -> Result<DepositAddressRow, Failure> {
    Ok(DepositAddressRow {
        seq: to_u64(row.try_get(0)?)?,
        reference: row.try_get(1)?,
        address: parse_text(row.try_get(2)?)?,
        client: row.try_get(3)?,
        created_ms: to_u64(row.try_get(4)?)?,
    })
}

pub(super) fn deposit_row(row: &Row) -> Result<DepositRow, Failure> {
    let log_index: i64 = row.try_get(2)?;
    let status: &str = row.try_get(10)?;
    let sweep_status: &str = row.try_get(13)?;
    let sweep_tx_hash: Option<&str> = row.try_get(15)?;
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
        sweep_status: SweepStatus::parse(sweep_status)
            .ok_or_else(|| Failure::Invalid(format!("deposit sweep status `{sweep_status}`")))?,
        sweep: row.try_get(14)?,
        sweep_tx_hash: sweep_tx_hash.map(parse_text).transpose()?,
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
    let set = format!("status = '{}'", status.as_str());
    change(transaction, &set, &format!("{condition} AND $2::text IS NOT NULL"), &[&block, &hash]).await
}

/// Applies `set` (SQL assignments) to the deposits `condition` selects (with `params`), each with the next
/// change number; answers them in the order of their changes. The caller holds the deposits' lock.
pub(super) async fn change(
    transaction: &Transaction<'_>,
    set: &str,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<DepositRow>, Failure> {
    // Numbered in the order of their keys, so that the numbers follow one order however the rows are found.
    let sql = format!(
        "WITH chosen AS (SELECT tx_hash, log_index FROM deposits WHERE {condition} ORDER BY tx_hash, log_index), \
         d AS (UPDATE deposits SET {set}, change = nextval('deposit_changes'), updated_ms = {NOW_MS} \
         FROM chosen WHERE deposits.tx_hash = chosen.tx_hash AND deposits.log_index = chosen.log_index \
         RETURNING deposits.*) \
         SELECT {DEPOSIT_COLUMNS} FROM d {DEPOSIT_JOINS} ORDER BY d.change"
    );
    query(transaction, &sql, params).await?.iter().map(deposit_row).collect()
}

/// A deposit's key as the journal stores it (`-1`: a transaction's own value).
pub(super) fn key_params(key: &DepositKey) -> (String, i64) {
    (key.tx_hash.to_string(), key.log_index.map_or(-1, to_i64))
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
         updated_ms = excluded.updated_ms, sweep_status = 'unswept', sweep = NULL \
         WHERE deposits.status IN ('removed', 'reversed')"
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

    async fn record_block(
        &self,
        fence: &Fence,
        block: BlockRecord,
        deposits: Vec<NewDeposit>,
    ) -> Result<usize, JournalError> {
        let fence = fence.clone();
        self.write(boxed(move |t| {
            Box::pin(async move {
                fenced(t, &fence).await?;
                record_block(t, block, deposits).await
            })
        }))
        .await
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

    async fn remove_block(&self, fence: &Fence, block: BlockRecord) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.write(boxed(move |t| {
            Box::pin(async move {
                fenced(t, &fence).await?;
                lock_deposits(t).await?;
                let (number, hash) = (to_i64(block.number), block.hash.to_string());
                let sql = "DELETE FROM deposit_blocks WHERE number = $1 AND hash = $2";
                if execute(t, sql, &[&number, &hash]).await? == 0 {
                    return Ok(Vec::new());
                }
                let pending = "block_number = $1 AND block_hash = $2 AND status = 'pending'";
                let mut changed = change_status(t, pending, number, &hash, DepositStatus::Removed).await?;
                let confirmed = "block_number = $1 AND block_hash = $2 AND status = 'confirmed'";
                changed.extend(change_status(t, confirmed, number, &hash, DepositStatus::Reversed).await?);
                Ok(changed)
            })
        }))
        .await
    }

    async fn confirm_deposits(&self, fence: &Fence, block: u64) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.write(boxed(move |t| {
            Box::pin(async move {
                fenced(t, &fence).await?;
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
                    "SELECT {DEPOSIT_COLUMNS} FROM deposits d {DEPOSIT_JOINS} WHERE d.change > $1 ORDER BY d.change \
                     LIMIT $2"
                );
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                query(t, &sql, &[&to_i64(since), &limit]).await?.iter().map(deposit_row).collect()
            })
        }))
        .await
    }

    async fn unswept(&self, after: u64, limit: usize) -> Result<Vec<DepositRow>, JournalError> {
        self.read(boxed(move |t| Box::pin(sweeps::unswept(t, after, limit)))).await
    }

    async fn start_sweep(&self, fence: &Fence, sweep: NewSweep) -> Result<Option<Withdrawal>, JournalError> {
        let fence = fence.clone();
        self.write(boxed(move |t| Box::pin(async move { sweeps::start(t, &fence, &sweep).await }))).await
    }

    async fn open_sweeps(&self) -> Result<Vec<(String, Address)>, JournalError> {
        self.read(boxed(move |t| Box::pin(sweeps::open(t)))).await
    }

    async fn finish_sweep(&self, fence: &Fence, id: &str, block: Option<u64>) -> Result<Vec<DepositRow>, JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.write(boxed(move |t| Box::pin(async move { sweeps::finish(t, &fence, &id, block).await }))).await
    }

    async fn mark_swept(&self, fence: &Fence, deposits: Vec<DepositKey>) -> Result<Vec<DepositRow>, JournalError> {
        let fence = fence.clone();
        self.write(boxed(move |t| Box::pin(async move { sweeps::mark_swept(t, &fence, &deposits).await }))).await
    }

    async fn unswept_ether(&self, addresses: Vec<Address>, at: u64) -> Result<Vec<(Address, U256)>, JournalError> {
        self.read(boxed(move |t| {
            Box::pin(async move {
                let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                let sql = "SELECT address, sum(amount)::text FROM deposits WHERE address = ANY($1) AND asset = 'ETH' \
                           AND status IN ('pending', 'confirmed') AND block_number <= $2 \
                           AND (sweep_status IN ('unswept', 'sweeping') OR EXISTS (SELECT 1 FROM withdrawals w \
                           WHERE w.id = deposits.sweep AND w.block_number > $2)) \
                           GROUP BY address ORDER BY address";
                let rows = query(t, sql, &[&addresses, &to_i64(at)]).await?;
                rows.iter().map(|row| Ok((parse_text(row.try_get(0)?)?, parse_text(row.try_get(1)?)?))).collect()
            })
        }))
        .await
    }
}
