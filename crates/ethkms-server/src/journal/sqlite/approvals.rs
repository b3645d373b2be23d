//! The SQLite journal's approvals ([`ApprovalStore`]): each pending withdrawal's terms in
//! `approval_terms`, each approver's decision once in `approval_decisions` (its primary key), and every
//! transition out of `pending_approval` one conditional update in the same transaction as the decision.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{exec, load, load_all, load_existing, parse_text, release_spend, sql_u64};
use super::{Failure, SqliteJournal};
use crate::journal::approvals::{ApprovalState, ApprovalStore, ApprovalTerms, Decided, Decision, DecisionRow};
use crate::journal::{JournalError, Status, Withdrawal};

fn terms(connection: &Connection, id: &str) -> rusqlite::Result<Option<ApprovalTerms>> {
    connection
        .prepare_cached("SELECT quorum, expires_ms FROM approval_terms WHERE withdrawal = ?1")?
        .query_row(params![id], |row| {
            Ok(ApprovalTerms { quorum: row.get(0)?, expires_ms: row.get::<_, i64>(1)?.try_into().unwrap_or(0) })
        })
        .optional()
}

fn decisions(connection: &Connection, id: &str) -> rusqlite::Result<Vec<DecisionRow>> {
    decision_rows(
        connection,
        "SELECT approver, approve, signature, at_ms FROM approval_decisions WHERE withdrawal = ?1 \
         ORDER BY at_ms, approver",
        id,
    )
}

/// The decisions `sql` selects (`approver, approve, signature, at_ms`) with `id` as `?1`: a withdrawal's, or
/// an allowlist addition's.
pub(super) fn decision_rows(connection: &Connection, sql: &str, id: &str) -> rusqlite::Result<Vec<DecisionRow>> {
    connection
        .prepare_cached(sql)?
        .query_map(params![id], |row| {
            Ok(DecisionRow {
                approver: parse_text(&row.get::<_, String>(0)?)?,
                approve: row.get(1)?,
                signature: row.get::<_, Vec<u8>>(2)?.into(),
                at_ms: row.get::<_, i64>(3)?.try_into().unwrap_or(0),
            })
        })?
        .collect()
}

/// Moves `id` from `pending_approval` to `status` (final: `rejected` or `expired`), giving its amount back.
fn end(connection: &Connection, id: &str, status: Status, now: u64) -> Result<bool, Failure> {
    let changed = exec(
        connection,
        "UPDATE withdrawals SET status = ?2, confirmed = 1, updated_ms = ?3 WHERE id = ?1 AND status = 'pending_approval'",
        params![id, status.as_str(), sql_u64(now)],
    )?;
    if changed == 1 {
        release_spend(connection, id)?;
    }
    Ok(changed == 1)
}

fn decide(connection: &Connection, id: &str, decision: &Decision) -> Result<Decided, Failure> {
    let Some(row) = load(connection, id)? else { return Ok(Decided::NotFound) };
    let Some(terms) = terms(connection, id)? else { return Ok(Decided::NotFound) };
    if row.status != Status::PendingApproval {
        return Ok(Decided::NotPending(row.status));
    }
    if decision.at_ms >= terms.expires_ms {
        end(connection, id, Status::Expired, decision.at_ms)?;
        return Ok(Decided::Expired);
    }
    let stored = connection.execute(
        "INSERT OR IGNORE INTO approval_decisions (withdrawal, approver, approve, signature, at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            decision.approver.to_string(),
            decision.approve,
            decision.signature.to_vec(),
            sql_u64(decision.at_ms)
        ],
    )?;
    if stored == 0 {
        return Ok(Decided::Duplicate);
    }
    if !decision.approve {
        end(connection, id, Status::Rejected, decision.at_ms)?;
        return Ok(Decided::Rejected(load_existing(connection, id)?));
    }
    let approvals: u32 = connection.query_row(
        "SELECT count(*) FROM approval_decisions WHERE withdrawal = ?1 AND approve = 1",
        params![id],
        |row| row.get(0),
    )?;
    if approvals < terms.quorum {
        return Ok(Decided::Counted(approvals));
    }
    exec(
        connection,
        "UPDATE withdrawals SET status = 'accepted', updated_ms = ?2 WHERE id = ?1 AND status = 'pending_approval'",
        params![id, sql_u64(decision.at_ms)],
    )?;
    Ok(Decided::Approved(load_existing(connection, id)?))
}

#[async_trait]
impl ApprovalStore for SqliteJournal {
    async fn approval_state(&self, id: &str) -> Result<Option<ApprovalState>, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| {
            let Some(terms) = terms(connection, &id)? else { return Ok(None) };
            Ok(Some(ApprovalState { terms, decisions: decisions(connection, &id)? }))
        })
        .await
    }

    async fn decide(&self, id: &str, decision: Decision) -> Result<Decided, JournalError> {
        let id = id.to_owned();
        self.run(move |connection| decide(connection, &id, &decision)).await
    }

    async fn expire_approvals(&self, now_ms: u64) -> Result<Vec<Withdrawal>, JournalError> {
        self.run(move |connection| {
            let due: Vec<String> = connection
                .prepare_cached(
                    "SELECT w.id FROM withdrawals w JOIN approval_terms t ON t.withdrawal = w.id \
                     WHERE w.status = 'pending_approval' AND t.expires_ms <= ?1",
                )?
                .query_map(params![sql_u64(now_ms)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut expired = Vec::new();
            for id in due {
                if end(connection, &id, Status::Expired, now_ms)? {
                    expired.push(id);
                }
            }
            load_all(connection, expired)
        })
        .await
    }

    async fn pending_approvals(&self, keys: &[String], limit: usize) -> Result<Vec<Withdrawal>, JournalError> {
        let keys = keys.to_vec();
        self.run(move |connection| {
            let mut ids = Vec::new();
            let mut statement = connection.prepare_cached(
                "SELECT id, created_ms FROM withdrawals WHERE key = ?1 AND status = 'pending_approval' \
                 ORDER BY created_ms, id LIMIT ?2",
            )?;
            for key in &keys {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                for pair in statement.query_map(params![key, limit], |row| Ok((row.get::<_, i64>(1)?, row.get(0)?)))? {
                    ids.push(pair?);
                }
            }
            ids.sort();
            ids.truncate(limit);
            load_all(connection, ids.into_iter().map(|(_, id): (i64, String)| id).collect())
        })
        .await
    }
}
