//! Rows in and out of SQLite: loading a withdrawal with its attempts, the amounts counted against the
//! daily limits, and the conversions between SQLite values and ours.

use alloy_primitives::U256;
use rusqlite::{Connection, OptionalExtension, params};

use super::Failure;
use crate::journal::{Attempt, Kind, Nonces, Released, Spent, Status, Withdrawal};
use crate::policy::{Asset, DAY};

/// Runs `sql` with `parameters`: compiled once per connection, then taken from its statement cache (the
/// journal's statements are few and run thousands of times a second under load).
pub(super) fn exec<P: rusqlite::Params>(connection: &Connection, sql: &str, parameters: P) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(parameters)
}

/// The one row `sql` selects with `parameters`, through `read`; cached as [`exec`].
pub(super) fn row<T, P: rusqlite::Params>(
    connection: &Connection,
    sql: &str,
    parameters: P,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(parameters, read)
}

/// What `key` moved of each of `assets` in the 24 hours before `now_ms`.
pub(super) fn spent(connection: &Connection, key: &str, assets: &[Asset], now_ms: u64) -> Result<Spent, Failure> {
    let since = now_ms.saturating_sub(u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX));
    let mut statement =
        connection.prepare_cached("SELECT amount FROM spends WHERE key = ?1 AND asset = ?2 AND at_ms > ?3")?;
    let mut spent = Spent::new();
    for asset in assets {
        let mut total = U256::ZERO;
        let amounts =
            statement.query_map(params![key, asset_text(*asset), sql_u64(since)], |row| row.get::<_, String>(0))?;
        for amount in amounts {
            let amount: String = amount?;
            total = total.saturating_add(parse_u256(&amount)?);
        }
        spent.insert(*asset, total);
    }
    Ok(spent)
}

/// The nonces the journal holds for `key` (none yet: a fresh key, whose first allocation observes the node).
pub(super) fn load_nonces(connection: &Connection, key: &str) -> Result<Nonces, Failure> {
    let stored: Option<(i64, String)> = connection
        .query_row("SELECT next, free FROM nonces WHERE key = ?1", params![key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match stored {
        None => Ok(Nonces::default()),
        Some((next, free)) => Nonces::from_stored(u64::try_from(next).unwrap_or(0), &free)
            .ok_or_else(|| Failure::Sqlite(invalid(format!("the nonces of key `{key}`: `{free}`")))),
    }
}

pub(super) fn store_nonces(connection: &Connection, key: &str, nonces: &Nonces) -> Result<(), Failure> {
    exec(
        connection,
        "INSERT INTO nonces (key, next, free) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET next = ?2, free = ?3",
        params![key, sql_u64(nonces.next()), nonces.free_text()],
    )?;
    Ok(())
}

pub(super) fn insert_spend(
    connection: &Connection,
    key: &str,
    asset: Asset,
    amount: U256,
    at: u64,
    withdrawal: Option<&str>,
) -> Result<(), Failure> {
    exec(
        connection,
        "INSERT INTO spends (key, asset, amount, at_ms, withdrawal) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key, asset_text(asset), amount.to_string(), sql_u64(at), withdrawal],
    )?;
    Ok(())
}

/// Deletes the amounts row `id` counted against the daily limits, and returns them.
pub(super) fn release_spend(connection: &Connection, id: &str) -> Result<Vec<Released>, Failure> {
    let spends = connection
        .prepare("SELECT key, asset, amount, at_ms FROM spends WHERE withdrawal = ?1")?
        .query_map(params![id], |row| {
            Ok(Released {
                key: row.get(0)?,
                asset: parse_asset(&row.get::<_, String>(1)?)?,
                amount: parse_u256(&row.get::<_, String>(2)?)?,
                at_ms: row.get::<_, i64>(3)?.try_into().unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    exec(connection, "DELETE FROM spends WHERE withdrawal = ?1", params![id])?;
    Ok(spends)
}

pub(super) fn load_existing(connection: &Connection, id: &str) -> Result<Withdrawal, Failure> {
    load(connection, id)?.ok_or(Failure::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

pub(super) fn load(connection: &Connection, id: &str) -> rusqlite::Result<Option<Withdrawal>> {
    let withdrawal = connection
        .query_row(
            "SELECT id, kind, client, idempotency_key, key, recipient, asset, amount, status, nonce, tx_hash, \
             block_number, error, created_ms, request, block_hash, cancel_requested, confirmed FROM withdrawals \
             WHERE id = ?1",
            params![id],
            |row| {
                let kind: String = row.get(1)?;
                let status: String = row.get(8)?;
                Ok(Withdrawal {
                    id: row.get(0)?,
                    kind: Kind::parse(&kind).ok_or_else(|| invalid(format!("kind `{kind}`")))?,
                    client: row.get(2)?,
                    idempotency_key: row.get(3)?,
                    key: row.get(4)?,
                    recipient: parse_text(&row.get::<_, String>(5)?)?,
                    asset: parse_asset(&row.get::<_, String>(6)?)?,
                    amount: parse_u256(&row.get::<_, String>(7)?)?,
                    status: Status::parse(&status).ok_or_else(|| invalid(format!("status `{status}`")))?,
                    nonce: row.get::<_, Option<i64>>(9)?.map(|nonce| nonce.try_into().unwrap_or(0)),
                    tx_hash: row.get::<_, Option<String>>(10)?.map(|hash| parse_text(&hash)).transpose()?,
                    block_number: row.get::<_, Option<i64>>(11)?.map(|block| block.try_into().unwrap_or(0)),
                    error: row.get(12)?,
                    created_ms: row.get::<_, i64>(13)?.try_into().unwrap_or(0),
                    request: row.get(14)?,
                    block_hash: row.get::<_, Option<String>>(15)?.map(|hash| parse_text(&hash)).transpose()?,
                    cancel_requested: row.get(16)?,
                    confirmed: row.get(17)?,
                    attempts: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut withdrawal) = withdrawal else { return Ok(None) };
    let mut statement = connection.prepare_cached(
        "SELECT tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms, cancel FROM attempts \
         WHERE withdrawal = ?1 ORDER BY number",
    )?;
    withdrawal.attempts = statement
        .query_map(params![id], |row| {
            Ok(Attempt {
                tx_hash: parse_text(&row.get::<_, String>(0)?)?,
                raw: row.get::<_, Vec<u8>>(1)?.into(),
                max_fee_per_gas: parse_text(&row.get::<_, String>(2)?)?,
                priority_fee_per_gas: parse_text(&row.get::<_, String>(3)?)?,
                signed_ms: row.get::<_, i64>(4)?.try_into().unwrap_or(0),
                cancel: row.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(withdrawal))
}

pub(super) fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn asset_text(asset: Asset) -> String {
    match asset {
        Asset::Ether => "ETH".into(),
        Asset::Token(address) => address.to_string(),
    }
}

pub(super) fn invalid(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
}

pub(super) fn parse_text<T: std::str::FromStr>(text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|_| invalid(format!("`{text}` in the journal cannot be read")))
}

pub(super) fn parse_u256(text: &str) -> rusqlite::Result<U256> {
    parse_text(text)
}

pub(super) fn parse_asset(text: &str) -> rusqlite::Result<Asset> {
    if text == "ETH" { Ok(Asset::Ether) } else { parse_text(text).map(Asset::Token) }
}

/// The ids `sql` selects with `parameter` as `?1`.
pub(super) fn ids(connection: &Connection, sql: &str, parameter: &str) -> rusqlite::Result<Vec<String>> {
    connection.prepare_cached(sql)?.query_map(params![parameter], |row| row.get::<_, String>(0))?.collect()
}

/// The rows of `ids` that exist, in that order.
pub(super) fn load_all(connection: &Connection, ids: Vec<String>) -> Result<Vec<Withdrawal>, Failure> {
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        rows.extend(load(connection, &id)?);
    }
    Ok(rows)
}
