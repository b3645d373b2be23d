//! The PostgreSQL journal's approvals ([`ApprovalStore`]), as the SQLite journal's: terms in
//! `approval_terms`, decisions once each in `approval_decisions`; a decision holds its withdrawal's row
//! lock (`FOR NO KEY UPDATE`) for its transaction, so two replicas storing the last two approvals at once
//! complete the quorum once. The decision that completes it wakes the key's owner.

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::listener::CHANNEL;
use super::rows::{execute, load_existing, load_where, parse_text, query, query_opt, release_spend, to_i64, to_u64};
use super::{Failure, PostgresJournal, boxed};
use crate::journal::approvals::{ApprovalState, ApprovalStore, ApprovalTerms, Decided, Decision, DecisionRow};
use crate::journal::{JournalError, Status, Withdrawal};

async fn terms(transaction: &Transaction<'_>, id: &str) -> Result<Option<ApprovalTerms>, Failure> {
    let row =
        query_opt(transaction, "SELECT quorum, expires_ms FROM approval_terms WHERE withdrawal = $1", &[&id]).await?;
    row.map(|row| {
        let quorum: i32 = row.try_get(0)?;
        Ok(ApprovalTerms {
            quorum: u32::try_from(quorum).map_err(|_| Failure::Invalid(format!("quorum {quorum}")))?,
            expires_ms: to_u64(row.try_get(1)?)?,
        })
    })
    .transpose()
}

/// `pending_approval` → `status` (final), the amount given back; whether it changed.
async fn end(transaction: &Transaction<'_>, id: &str, status: Status, now: u64) -> Result<bool, Failure> {
    let changed = execute(
        transaction,
        "UPDATE withdrawals SET status = $2, confirmed = TRUE, updated_ms = $3 WHERE id = $1 \
         AND status = 'pending_approval'",
        &[&id, &status.as_str(), &to_i64(now)],
    )
    .await?;
    if changed == 1 {
        release_spend(transaction, id).await?;
    }
    Ok(changed == 1)
}

async fn decide(transaction: &Transaction<'_>, id: String, decision: Decision) -> Result<Decided, Failure> {
    let row =
        query_opt(transaction, "SELECT status, key FROM withdrawals WHERE id = $1 FOR NO KEY UPDATE", &[&id]).await?;
    let Some(row) = row else { return Ok(Decided::NotFound) };
    let (status, key): (&str, &str) = (row.try_get(0)?, row.try_get(1)?);
    let status = Status::parse(status).ok_or_else(|| Failure::Invalid(format!("row `{id}` has status `{status}`")))?;
    let Some(terms) = terms(transaction, &id).await? else { return Ok(Decided::NotFound) };
    if status != Status::PendingApproval {
        return Ok(Decided::NotPending(status));
    }
    if decision.at_ms >= terms.expires_ms {
        end(transaction, &id, Status::Expired, decision.at_ms).await?;
        return Ok(Decided::Expired);
    }
    let stored = execute(
        transaction,
        "INSERT INTO approval_decisions (withdrawal, approver, approve, signature, at_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[
            &id,
            &decision.approver.to_string(),
            &decision.approve,
            &decision.signature.to_vec(),
            &to_i64(decision.at_ms),
        ],
    )
    .await?;
    if stored == 0 {
        return Ok(Decided::Duplicate);
    }
    if !decision.approve {
        end(transaction, &id, Status::Rejected, decision.at_ms).await?;
        return Ok(Decided::Rejected(load_existing(transaction, &id).await?));
    }
    let approvals: i64 =
        query(transaction, "SELECT count(*) FROM approval_decisions WHERE withdrawal = $1 AND approve", &[&id])
            .await?
            .first()
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
    let approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
    if approvals < terms.quorum {
        return Ok(Decided::Counted(approvals));
    }
    execute(
        transaction,
        "UPDATE withdrawals SET status = 'accepted', updated_ms = $2 WHERE id = $1 AND status = 'pending_approval'",
        &[&id, &to_i64(decision.at_ms)],
    )
    .await?;
    query(transaction, "SELECT pg_notify($1, $2)", &[&CHANNEL, &key]).await?;
    Ok(Decided::Approved(load_existing(transaction, &id).await?))
}

async fn state(transaction: &Transaction<'_>, id: String) -> Result<Option<ApprovalState>, Failure> {
    let Some(terms) = terms(transaction, &id).await? else { return Ok(None) };
    let sql = "SELECT approver, approve, signature, at_ms FROM approval_decisions WHERE withdrawal = $1 \
               ORDER BY at_ms, approver";
    let decisions = decision_rows(transaction, sql, &id).await?;
    Ok(Some(ApprovalState { terms, decisions }))
}

/// The decisions `sql` selects (`approver, approve, signature, at_ms`) with `id` as `$1`: a withdrawal's, or
/// an allowlist addition's.
pub(super) async fn decision_rows(
    transaction: &Transaction<'_>,
    sql: &str,
    id: &str,
) -> Result<Vec<DecisionRow>, Failure> {
    query(transaction, sql, &[&id])
        .await?
        .iter()
        .map(|row| {
            Ok(DecisionRow {
                approver: parse_text(row.try_get(0)?)?,
                approve: row.try_get(1)?,
                signature: row.try_get::<_, Vec<u8>>(2)?.into(),
                at_ms: to_u64(row.try_get(3)?)?,
            })
        })
        .collect()
}

async fn expire(transaction: &Transaction<'_>, now_ms: u64) -> Result<Vec<Withdrawal>, Failure> {
    let due = query(
        transaction,
        "SELECT w.id FROM withdrawals w JOIN approval_terms t ON t.withdrawal = w.id \
         WHERE w.status = 'pending_approval' AND t.expires_ms <= $1 FOR NO KEY UPDATE OF w SKIP LOCKED",
        &[&to_i64(now_ms)],
    )
    .await?;
    let mut expired = Vec::new();
    for row in due {
        let id: String = row.try_get(0)?;
        if end(transaction, &id, Status::Expired, now_ms).await? {
            expired.push(load_existing(transaction, &id).await?);
        }
    }
    Ok(expired)
}

#[async_trait]
impl ApprovalStore for PostgresJournal {
    async fn approval_state(&self, id: &str) -> Result<Option<ApprovalState>, JournalError> {
        let id = id.to_owned();
        self.read(boxed(move |t| Box::pin(state(t, id)))).await
    }

    async fn decide(&self, id: &str, decision: Decision) -> Result<Decided, JournalError> {
        let id = id.to_owned();
        self.write(boxed(move |t| Box::pin(decide(t, id, decision)))).await
    }

    async fn expire_approvals(&self, now_ms: u64) -> Result<Vec<Withdrawal>, JournalError> {
        self.write(boxed(move |t| Box::pin(expire(t, now_ms)))).await
    }

    async fn pending_approvals(&self, keys: &[String], limit: usize) -> Result<Vec<Withdrawal>, JournalError> {
        let keys = keys.to_vec();
        self.read(boxed(move |t| {
            Box::pin(async move {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let filter = "id IN (SELECT id FROM withdrawals WHERE key = ANY($1) AND status = 'pending_approval' \
                              ORDER BY seq LIMIT $2)";
                load_where(t, filter, &[&keys, &limit]).await
            })
        }))
        .await
    }
}
