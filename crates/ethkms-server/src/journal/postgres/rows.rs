//! Rows in and out of PostgreSQL: the statements' helpers (cached prepared statements), loading withdrawals
//! with their attempts, the key's nonces and daily-limit lock, the amounts counted against the limits, and
//! the conversions between PostgreSQL values and ours.
//!
//! Amounts are `NUMERIC(78, 0)` (every `U256` fits), passed as text both ways (`$n::text::numeric`,
//! `amount::text`). Unsigned integers are stored as `BIGINT`; one that does not fit is clamped on the way
//! in (as the SQLite journal does) and refused on the way out.

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
pub(super) const COLUMNS: &str = "id, kind, client, idempotency_key, key, recipient, asset, amount::text, status, \
                                  nonce, tx_hash, block_number, error, created_ms, request, block_hash, \
                                  cancel_requested, confirmed";

/// Row `id` with its attempts.
pub(super) async fn load(client: &impl GenericClient, id: &str) -> Result<Option<Withdrawal>, Failure> {
    Ok(load_where(client, "id = $1", &[&id]).await?.pop())
}

/// Row `id`, which this transaction has just seen or written.
pub(super) async fn load_existing(client: &impl GenericClient, id: &str) -> Result<Withdrawal, Failure> {
    load(client, id).await?.ok_or_else(|| Failure::Invalid(format!("row `{id}` vanished")))
}

/// The rows `filter` (a `WHERE` clause) selects, oldest first, with their attempts: one statement (and so
/// one snapshot, without a transaction), a row for each attempt.
pub(super) async fn load_where(
    client: &impl GenericClient,
    filter: &str,
    params: &Params<'_>,
) -> Result<Vec<Withdrawal>, Failure> {
    let sql = format!(
        "SELECT found.*, attempts.tx_hash, attempts.raw, attempts.max_fee_per_gas, attempts.priority_fee_per_gas, \
             attempts.signed_ms, attempts.cancel \
         FROM (SELECT {COLUMNS}, seq FROM withdrawals WHERE {filter}) AS found \
             LEFT JOIN attempts ON attempts.withdrawal = found.id \
         ORDER BY found.seq, attempts.number"
    );
    let mut rows: Vec<Withdrawal> = Vec::new();
    for row in query(client, &sql, params).await? {
        let id: &str = row.try_get(0)?;
        if rows.last().is_none_or(|last| last.id != id) {
            rows.push(withdrawal(&row)?);
        }
        if row.try_get::<_, Option<&str>>(ATTEMPT)?.is_some()
            && let Some(last) = rows.last_mut()
        {
            last.attempts.push(attempt(&row)?);
        }
    }
    Ok(rows)
}

/// Where the columns of an attempt start in a row of [`load_where`] (after [`COLUMNS`] and `seq`).
const ATTEMPT: usize = 19;

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
        tx_hash: parse_text(row.try_get(ATTEMPT)?)?,
        raw: row.try_get::<_, Vec<u8>>(ATTEMPT + 1)?.into(),
        max_fee_per_gas: parse_text(row.try_get(ATTEMPT + 2)?)?,
        priority_fee_per_gas: parse_text(row.try_get(ATTEMPT + 3)?)?,
        signed_ms: to_u64(row.try_get(ATTEMPT + 4)?)?,
        cancel: row.try_get(ATTEMPT + 5)?,
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

pub(super) fn parse_asset(text: &str) -> Result<Asset, Failure> {
    if text == "ETH" { Ok(Asset::Ether) } else { parse_text(text).map(Asset::Token) }
}

pub(super) fn parse_text<T: std::str::FromStr>(text: &str) -> Result<T, Failure> {
    text.parse().map_err(|_| Failure::Invalid(format!("`{text}` cannot be read")))
}
