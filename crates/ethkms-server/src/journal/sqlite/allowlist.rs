//! The SQLite journal's allowlist additions ([`AllowlistStore`]): entries in `allowlist_entries` (at most
//! one live per key and address, by a partial unique index), each approver's decision once in
//! `allowlist_decisions`, and every transition one conditional update in the transaction of the decision.

use alloy_primitives::Address;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{exec, parse_text, sql_u64};
use super::{Failure, SqliteJournal};
use crate::journal::allowlist::{Addition, AdditionDecided, AllowlistStatus, AllowlistStore, NewAddition, Proposed};
use crate::journal::{Decision, DecisionRow, JournalError};

const COLUMNS: &str = "id, key, address, status, client, label, quorum, proposed_ms, effective_ms, updated_ms";

fn millis(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn decisions(connection: &Connection, id: &str) -> rusqlite::Result<Vec<DecisionRow>> {
    super::approvals::decision_rows(
        connection,
        "SELECT approver, approve, signature, at_ms FROM allowlist_decisions WHERE entry = ?1 \
         ORDER BY at_ms, approver",
        id,
    )
}

/// The entries `filter` (a `WHERE` clause over `?1`, `?2`) selects, oldest first, with their decisions.
fn select<P: rusqlite::Params>(
    connection: &Connection,
    filter: &str,
    parameters: P,
) -> rusqlite::Result<Vec<Addition>> {
    let sql = format!("SELECT {COLUMNS} FROM allowlist_entries WHERE {filter} ORDER BY seq");
    let mut entries: Vec<Addition> = connection
        .prepare_cached(&sql)?
        .query_map(parameters, |row| {
            let status: String = row.get(3)?;
            Ok(Addition {
                id: row.get(0)?,
                key: row.get(1)?,
                address: parse_text(&row.get::<_, String>(2)?)?,
                status: AllowlistStatus::parse(&status)
                    .ok_or_else(|| super::rows::invalid(format!("allowlist status `{status}`")))?,
                client: row.get(4)?,
                label: row.get(5)?,
                quorum: row.get(6)?,
                proposed_ms: millis(row.get(7)?),
                effective_ms: millis(row.get(8)?),
                updated_ms: millis(row.get(9)?),
                decisions: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    for entry in &mut entries {
        entry.decisions = decisions(connection, &entry.id)?;
    }
    Ok(entries)
}

fn live(connection: &Connection, key: &str, address: Address) -> rusqlite::Result<Option<Addition>> {
    Ok(select(
        connection,
        "key = ?1 AND address = ?2 AND status IN ('proposed', 'approved')",
        params![key, address.to_string()],
    )?
    .pop())
}

fn by_id(connection: &Connection, id: &str) -> Result<Addition, Failure> {
    select(connection, "id = ?1", params![id])?.pop().ok_or(Failure::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

fn propose(connection: &Connection, addition: &NewAddition) -> Result<Proposed, Failure> {
    if let Some(existing) = live(connection, &addition.key, addition.address)? {
        return Ok(Proposed::Exists(existing));
    }
    let id = uuid::Uuid::new_v4().to_string();
    exec(
        connection,
        "INSERT INTO allowlist_entries (id, key, address, status, client, label, quorum, proposed_ms, effective_ms, \
         updated_ms) VALUES (?1, ?2, ?3, 'proposed', ?4, ?5, ?6, ?7, ?8, ?7)",
        params![
            id,
            addition.key,
            addition.address.to_string(),
            addition.client,
            addition.label,
            addition.quorum,
            sql_u64(addition.proposed_ms),
            sql_u64(addition.effective_ms)
        ],
    )?;
    Ok(Proposed::New(by_id(connection, &id)?))
}

fn decide(
    connection: &Connection,
    key: &str,
    address: Address,
    decision: &Decision,
) -> Result<AdditionDecided, Failure> {
    let Some(entry) = live(connection, key, address)? else { return Ok(AdditionDecided::NotFound) };
    if entry.status == AllowlistStatus::Approved && entry.effective_ms <= decision.at_ms {
        return Ok(AdditionDecided::NotPending(AllowlistStatus::Approved));
    }
    let stored = connection.execute(
        "INSERT OR IGNORE INTO allowlist_decisions (entry, approver, approve, signature, at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            entry.id,
            decision.approver.to_string(),
            decision.approve,
            decision.signature.to_vec(),
            sql_u64(decision.at_ms)
        ],
    )?;
    if stored == 0 {
        return Ok(AdditionDecided::Duplicate);
    }
    if !decision.approve {
        exec(
            connection,
            "UPDATE allowlist_entries SET status = 'cancelled', updated_ms = ?2 WHERE id = ?1 \
             AND status IN ('proposed', 'approved')",
            params![entry.id, sql_u64(decision.at_ms)],
        )?;
        return Ok(AdditionDecided::Cancelled(by_id(connection, &entry.id)?));
    }
    let approvals: u32 = connection.query_row(
        "SELECT count(*) FROM allowlist_decisions WHERE entry = ?1 AND approve = 1",
        params![entry.id],
        |row| row.get(0),
    )?;
    if entry.status == AllowlistStatus::Approved || approvals < entry.quorum {
        return Ok(AdditionDecided::Counted(approvals));
    }
    exec(
        connection,
        "UPDATE allowlist_entries SET status = 'approved', updated_ms = ?2 WHERE id = ?1 AND status = 'proposed'",
        params![entry.id, sql_u64(decision.at_ms)],
    )?;
    Ok(AdditionDecided::Approved(by_id(connection, &entry.id)?))
}

#[async_trait]
impl AllowlistStore for SqliteJournal {
    async fn propose_addition(&self, addition: NewAddition) -> Result<Proposed, JournalError> {
        self.run(move |connection| propose(connection, &addition)).await
    }

    async fn live_addition(&self, key: &str, address: Address) -> Result<Option<Addition>, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| Ok(live(connection, &key, address)?)).await
    }

    async fn additions(&self, key: &str, limit: usize) -> Result<Vec<Addition>, JournalError> {
        let key = key.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |connection| {
            let filter = "seq IN (SELECT seq FROM allowlist_entries WHERE key = ?1 ORDER BY seq DESC LIMIT ?2)";
            Ok(select(connection, filter, params![key, limit])?)
        })
        .await
    }

    async fn decide_addition(
        &self,
        key: &str,
        address: Address,
        decision: Decision,
    ) -> Result<AdditionDecided, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| decide(connection, &key, address, &decision)).await
    }

    async fn remove_addition(
        &self,
        key: &str,
        address: Address,
        now_ms: u64,
    ) -> Result<Option<Addition>, JournalError> {
        let key = key.to_owned();
        self.run(move |connection| {
            let id: Option<String> = connection
                .query_row(
                    "UPDATE allowlist_entries SET status = 'removed', updated_ms = ?3 WHERE key = ?1 AND address = ?2 \
                     AND status IN ('proposed', 'approved') RETURNING id",
                    params![key, address.to_string(), sql_u64(now_ms)],
                    |row| row.get(0),
                )
                .optional()?;
            id.map(|id| by_id(connection, &id)).transpose()
        })
        .await
    }

    async fn approved_additions(&self) -> Result<Vec<Addition>, JournalError> {
        self.run(move |connection| Ok(select(connection, "status = ?1", params!["approved"])?)).await
    }
}
