//! Rows in and out of PostgreSQL: the statements' helpers (cached prepared statements), loading withdrawals
//! with their attempts, the key's nonces and daily-limit lock, the amounts counted against the limits, and
//! the conversions between PostgreSQL values and ours.
//!
//! Amounts are `NUMERIC(78, 0)` (every `U256` fits), passed as text both ways (`$n::text::numeric`,
//! `amount::text`). Unsigned integers are stored as `BIGINT`; one that does not fit is clamped on the way
//! in (as the SQLite journal does) and refused on the way out.

use std::collections::HashMap;

use alloy_primitives::U256;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::Failure;
use crate::journal::{Attempt, Kind, Nonces, Released, Spent, Status, Withdrawal};
use crate::policy::{Asset, DAY};

/// The database's clock, in Unix milliseconds: leases, spends and row times are all on it, whichever
/// replica writes them.
pub(super) const NOW_MS: &str = "(floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint";

/// Parameters of a statement.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// The rows `sql` returns (in a transaction, or on a connection: a statement of its own).
pub(super) async fn query(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

/// The row `sql` returns, if any (more than one is an error).
pub(super) async fn query_opt(
    client: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_opt(&statement, params).await?)
}

/// The one row `sql` returns.
pub(super) async fn query_one(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Row, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_one(&statement, params).await?)
}

/// Runs `sql`; the number of rows it changed.
pub(super) async fn execute(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<u64, Failure> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.execute(&statement, params).await?)
}

/// The columns [`withdrawal`] reads, in its order.
pub(super) const COLUMNS: &str = "id, kind, client, idempotency_key, key, recipient, asset, amount::text, status, nonce, tx_hash, \
                       block_number, error, created_ms, request, block_hash, cancel_requested, confirmed";

/// Row `id` with its attempts.
pub(super) async fn load(transaction: &Transaction<'_>, id: &str) -> Result<Option<Withdrawal>, Failure> {
    let sql = format!("SELECT {COLUMNS} FROM withdrawals WHERE id = $1");
    Ok(load_rows(transaction, &sql, &[&id]).await?.pop())
}

/// Row `id`, which this transaction has just seen or written.
pub(super) async fn load_existing(transaction: &Transaction<'_>, id: &str) -> Result<Withdrawal, Failure> {
    load(transaction, id).await?.ok_or_else(|| Failure::Invalid(format!("row `{id}` vanished")))
}

/// The rows `filter` (a `WHERE` clause, then `ORDER BY`) selects, with their attempts, in its order.
pub(super) async fn load_where(
    transaction: &Transaction<'_>,
    filter: &str,
    params: &Params<'_>,
) -> Result<Vec<Withdrawal>, Failure> {
    load_rows(transaction, &format!("SELECT {COLUMNS} FROM withdrawals WHERE {filter}"), params).await
}

async fn load_rows(transaction: &Transaction<'_>, sql: &str, params: &Params<'_>) -> Result<Vec<Withdrawal>, Failure> {
    let mut rows = query(transaction, sql, params).await?.iter().map(withdrawal).collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Ok(rows);
    }
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    let mut attempts: HashMap<String, Vec<Attempt>> = HashMap::new();
    let sql = "SELECT withdrawal, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms, cancel FROM attempts \
               WHERE withdrawal = ANY($1) ORDER BY withdrawal, number";
    for row in query(transaction, sql, &[&ids]).await? {
        attempts.entry(row.try_get(0)?).or_default().push(attempt(&row)?);
    }
    for row in &mut rows {
        row.attempts = attempts.remove(&row.id).unwrap_or_default();
    }
    Ok(rows)
}

/// A row of [`COLUMNS`] (its attempts left empty).
pub(super) fn withdrawal(row: &Row) -> Result<Withdrawal, Failure> {
    let kind: String = row.try_get(1)?;
    let status: String = row.try_get(8)?;
    Ok(Withdrawal {
        id: row.try_get(0)?,
        kind: Kind::parse(&kind).ok_or_else(|| Failure::Invalid(format!("kind `{kind}`")))?,
        client: row.try_get(2)?,
        idempotency_key: row.try_get(3)?,
        key: row.try_get(4)?,
        recipient: parse_text(row.try_get(5)?)?,
        asset: parse_asset(row.try_get(6)?)?,
        amount: parse_text(row.try_get(7)?)?,
        status: Status::parse(&status).ok_or_else(|| Failure::Invalid(format!("status `{status}`")))?,
        nonce: row.try_get::<_, Option<i64>>(9)?.map(to_u64).transpose()?,
        tx_hash: row.try_get::<_, Option<&str>>(10)?.map(parse_text).transpose()?,
        block_number: row.try_get::<_, Option<i64>>(11)?.map(to_u64).transpose()?,
        error: row.try_get(12)?,
        created_ms: to_u64(row.try_get(13)?)?,
        request: row.try_get(14)?,
        block_hash: row.try_get::<_, Option<&str>>(15)?.map(parse_text).transpose()?,
        cancel_requested: row.try_get(16)?,
        confirmed: row.try_get(17)?,
        attempts: Vec::new(),
    })
}

fn attempt(row: &Row) -> Result<Attempt, Failure> {
    Ok(Attempt {
        tx_hash: parse_text(row.try_get(1)?)?,
        raw: row.try_get::<_, Vec<u8>>(2)?.into(),
        max_fee_per_gas: parse_text(row.try_get(3)?)?,
        priority_fee_per_gas: parse_text(row.try_get(4)?)?,
        signed_ms: to_u64(row.try_get(5)?)?,
        cancel: row.try_get(6)?,
    })
}

/// Takes the lock on `key`'s daily limits if `assets` (those with a limit) is not empty — until the
/// transaction ends: every check of the key that reads what it moved, on every replica, waits for it — and
/// returns the database's time once it is held. A check that reads nothing needs no lock: the key's
/// requests without a daily limit do not wait for each other.
pub(super) async fn lock_limits(transaction: &Transaction<'_>, key: &str, assets: &[Asset]) -> Result<u64, Failure> {
    let rows = if assets.is_empty() {
        query(transaction, &format!("SELECT {NOW_MS}"), &[]).await?
    } else {
        let sql = format!(
            "SELECT {NOW_MS} FROM (SELECT pg_advisory_xact_lock(hashtextextended('ethkms limits ' || $1, 0))) AS locked"
        );
        query(transaction, &sql, &[&key]).await?
    };
    let row = rows.first().ok_or_else(|| Failure::Invalid("no time from the database".into()))?;
    to_u64(row.try_get(0)?)
}

/// What `key` moved of each of `assets` in the 24 hours before `now_ms` (zero for an asset it did not move).
pub(super) async fn spent(
    transaction: &Transaction<'_>,
    key: &str,
    assets: &[Asset],
    now_ms: u64,
) -> Result<Spent, Failure> {
    let mut spent: Spent = assets.iter().map(|asset| (*asset, U256::ZERO)).collect();
    if assets.is_empty() {
        return Ok(spent);
    }
    let since = to_i64(now_ms.saturating_sub(u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX)));
    let names: Vec<String> = assets.iter().map(|asset| asset_text(*asset)).collect();
    let sql = "SELECT asset, sum(amount)::text FROM spends WHERE key = $1 AND asset = ANY($2) AND at_ms > $3 \
               GROUP BY asset";
    for row in query(transaction, sql, &[&key, &names, &since]).await? {
        spent.insert(parse_asset(row.try_get(0)?)?, parse_text(row.try_get(1)?)?);
    }
    Ok(spent)
}

/// Counts `amount` of `asset` against `key`'s daily limit at `at_ms`, tagged `withdrawal` (a row's id, or
/// the tag of [`record_spends`](crate::journal::JournalStore::record_spends)).
pub(super) async fn insert_spend(
    transaction: &Transaction<'_>,
    key: &str,
    (asset, amount): (Asset, U256),
    at_ms: u64,
    withdrawal: &str,
) -> Result<(), Failure> {
    execute(
        transaction,
        "INSERT INTO spends (key, asset, amount, at_ms, withdrawal) VALUES ($1, $2, $3::text::numeric, $4, $5)",
        &[&key, &asset_text(asset), &amount.to_string(), &to_i64(at_ms), &withdrawal],
    )
    .await?;
    Ok(())
}

/// Deletes the amounts tagged `withdrawal` and returns them.
pub(super) async fn release_spend(transaction: &Transaction<'_>, withdrawal: &str) -> Result<Vec<Released>, Failure> {
    let sql = "DELETE FROM spends WHERE withdrawal = $1 RETURNING key, asset, amount::text, at_ms";
    query(transaction, sql, &[&withdrawal])
        .await?
        .iter()
        .map(|row| {
            Ok(Released {
                key: row.try_get(0)?,
                asset: parse_asset(row.try_get(1)?)?,
                amount: parse_text(row.try_get(2)?)?,
                at_ms: to_u64(row.try_get(3)?)?,
            })
        })
        .collect()
}

/// `key`'s nonces, its row locked `FOR UPDATE` until the transaction ends (created, as a fresh key's, if
/// there is none: its first allocation observes the node).
pub(super) async fn lock_nonces(transaction: &Transaction<'_>, key: &str) -> Result<Nonces, Failure> {
    const LOCK: &str = "SELECT next, free FROM nonces WHERE key = $1 FOR UPDATE";
    let mut row = query_opt(transaction, LOCK, &[&key]).await?;
    if row.is_none() {
        let sql = "INSERT INTO nonces (key, next, free) VALUES ($1, 0, '') ON CONFLICT (key) DO NOTHING";
        execute(transaction, sql, &[&key]).await?;
        row = query_opt(transaction, LOCK, &[&key]).await?;
    }
    let row = row.ok_or_else(|| Failure::Invalid(format!("the nonces of key `{key}` vanished")))?;
    let (next, free): (i64, &str) = (row.try_get(0)?, row.try_get(1)?);
    Nonces::from_stored(to_u64(next)?, free)
        .ok_or_else(|| Failure::Invalid(format!("the nonces of key `{key}`: {next}, `{free}`")))
}

/// Stores `key`'s nonces (its row locked by [`lock_nonces`]).
pub(super) async fn store_nonces(transaction: &Transaction<'_>, key: &str, nonces: &Nonces) -> Result<(), Failure> {
    let sql = "UPDATE nonces SET next = $2, free = $3 WHERE key = $1";
    execute(transaction, sql, &[&key, &to_i64(nonces.next()), &nonces.free_text()]).await?;
    Ok(())
}

/// `value` as a `BIGINT` (clamped: no nonce, block or time comes near).
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `BIGINT` the journal wrote from a `u64`.
pub(super) fn to_u64(value: i64) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| Failure::Invalid(format!("{value} where a non-negative number belongs")))
}

/// How an asset is stored: `ETH`, or the token's address.
pub(super) fn asset_text(asset: Asset) -> String {
    match asset {
        Asset::Ether => "ETH".into(),
        Asset::Token(address) => address.to_string(),
    }
}

fn parse_asset(text: &str) -> Result<Asset, Failure> {
    if text == "ETH" { Ok(Asset::Ether) } else { parse_text(text).map(Asset::Token) }
}

fn parse_text<T: std::str::FromStr>(text: &str) -> Result<T, Failure> {
    text.parse().map_err(|_| Failure::Invalid(format!("`{text}` cannot be read")))
}
