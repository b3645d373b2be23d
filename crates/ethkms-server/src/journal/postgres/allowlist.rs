//! The PostgreSQL journal's allowlist additions ([`AllowlistStore`]), as the SQLite journal's: entries in
//! `allowlist_entries` (at most one live per key and address, by a partial unique index), decisions once
//! each in `allowlist_decisions`; a decision holds its entry's row lock (`FOR UPDATE`) for its
//! transaction, so two replicas storing the last two approvals at once complete the quorum once, and a
//! rejection and an approval at once end in one order.

use alloy_primitives::Address;
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::rows::{Params, execute, parse_text, query, query_opt, to_i64, to_u64};
use super::{Failure, PostgresJournal, boxed};
use crate::journal::allowlist::{Addition, AdditionDecided, AllowlistStatus, AllowlistStore, NewAddition, Proposed};
use crate::journal::{Decision, JournalError};

const COLUMNS: &str = "id, key, address, status, client, label, quorum, proposed_ms, effective_ms, updated_ms";

const LIVE: &str = "key = $1 AND address = $2 AND status IN ('proposed', 'approved')";

fn entry(row: &Row) -> Result<Addition, Failure> {
    let status: &str = row.try_get(3)?;
    let quorum: i32 = row.try_get(6)?;
    Ok(Addition {
        id: row.try_get(0)?,
        key: row.try_get(1)?,
        address: parse_text(row.try_get(2)?)?,
        status: AllowlistStatus::parse(status)
            .ok_or_else(|| Failure::Invalid(format!("allowlist status `{status}`")))?,
        client: row.try_get(4)?,
        label: row.try_get(5)?,
        quorum: u32::try_from(quorum).map_err(|_| Failure::Invalid(format!("quorum {quorum}")))?,
        proposed_ms: to_u64(row.try_get(7)?)?,
        effective_ms: to_u64(row.try_get(8)?)?,
        updated_ms: to_u64(row.try_get(9)?)?,
        decisions: Vec::new(),
    })
}

/// The entries `filter` selects (`lock`: `FOR UPDATE` or nothing), oldest first, with their decisions.
async fn select(
    transaction: &Transaction<'_>,
    filter: &str,
    lock: &str,
    params: &Params<'_>,
) -> Result<Vec<Addition>, Failure> {
    let sql = format!("SELECT {COLUMNS} FROM allowlist_entries WHERE {filter} ORDER BY seq {lock}");
    let mut entries = query(transaction, &sql, params).await?.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
    let sql = "SELECT approver, approve, signature, at_ms FROM allowlist_decisions WHERE entry = $1 \
               ORDER BY at_ms, approver";
    for entry in &mut entries {
        entry.decisions = super::approvals::decision_rows(transaction, sql, &entry.id).await?;
    }
    Ok(entries)
}

async fn by_id(transaction: &Transaction<'_>, id: &str) -> Result<Addition, Failure> {
    select(transaction, "id = $1", "", &[&id])
        .await?
        .pop()
        .ok_or_else(|| Failure::Invalid(format!("allowlist entry `{id}` vanished")))
}

async fn propose(transaction: &Transaction<'_>, addition: NewAddition) -> Result<Proposed, Failure> {
    let id = uuid::Uuid::new_v4().to_string();
    let quorum = i32::try_from(addition.quorum).unwrap_or(i32::MAX);
    let stored = execute(
        transaction,
        "INSERT INTO allowlist_entries (id, key, address, status, client, label, quorum, proposed_ms, effective_ms, \
         updated_ms) VALUES ($1, $2, $3, 'proposed', $4, $5, $6, $7, $8, $7) \
         ON CONFLICT (key, address) WHERE status IN ('proposed', 'approved') DO NOTHING",
        &[
            &id,
            &addition.key,
            &addition.address.to_string(),
            &addition.client,
            &addition.label,
            &quorum,
            &to_i64(addition.proposed_ms),
            &to_i64(addition.effective_ms),
        ],
    )
    .await?;
    if stored == 1 {
        return Ok(Proposed::New(by_id(transaction, &id).await?));
    }
    let existing = select(transaction, LIVE, "", &[&addition.key, &addition.address.to_string()]).await?.pop();
    existing.map(Proposed::Exists).ok_or_else(|| Failure::Invalid("a live allowlist entry vanished".into()))
}

async fn decide(
    transaction: &Transaction<'_>,
    key: String,
    address: Address,
    decision: Decision,
) -> Result<AdditionDecided, Failure> {
    let found = select(transaction, LIVE, "FOR UPDATE", &[&key, &address.to_string()]).await?.pop();
    let Some(entry) = found else { return Ok(AdditionDecided::NotFound) };
    if entry.status == AllowlistStatus::Approved && entry.effective_ms <= decision.at_ms {
        return Ok(AdditionDecided::NotPending(AllowlistStatus::Approved));
    }
    let stored = execute(
        transaction,
        "INSERT INTO allowlist_decisions (entry, approver, approve, signature, at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
        &[
            &entry.id,
            &decision.approver.to_string(),
            &decision.approve,
            &decision.signature.to_vec(),
            &to_i64(decision.at_ms),
        ],
    )
    .await?;
    if stored == 0 {
        return Ok(AdditionDecided::Duplicate);
    }
    if !decision.approve {
        execute(
            transaction,
            "UPDATE allowlist_entries SET status = 'cancelled', updated_ms = $2 WHERE id = $1 \
             AND status IN ('proposed', 'approved')",
            &[&entry.id, &to_i64(decision.at_ms)],
        )
        .await?;
        return Ok(AdditionDecided::Cancelled(by_id(transaction, &entry.id).await?));
    }
    let approvals: i64 =
        query_opt(transaction, "SELECT count(*) FROM allowlist_decisions WHERE entry = $1 AND approve", &[&entry.id])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
    let approvals = u32::try_from(approvals).unwrap_or(u32::MAX);
    if entry.status == AllowlistStatus::Approved || approvals < entry.quorum {
        return Ok(AdditionDecided::Counted(approvals));
    }
    execute(
        transaction,
        "UPDATE allowlist_entries SET status = 'approved', updated_ms = $2 WHERE id = $1 AND status = 'proposed'",
        &[&entry.id, &to_i64(decision.at_ms)],
    )
    .await?;
    Ok(AdditionDecided::Approved(by_id(transaction, &entry.id).await?))
}

async fn remove(
    transaction: &Transaction<'_>,
    key: String,
    address: Address,
    now_ms: u64,
) -> Result<Option<Addition>, Failure> {
    let removed = query_opt(
        transaction,
        "UPDATE allowlist_entries SET status = 'removed', updated_ms = $3 WHERE key = $1 AND address = $2 \
         AND status IN ('proposed', 'approved') RETURNING id",
        &[&key, &address.to_string(), &to_i64(now_ms)],
    )
    .await?;
    match removed {
        Some(row) => Ok(Some(by_id(transaction, row.try_get(0)?).await?)),
        None => Ok(None),
    }
}

#[async_trait]
impl AllowlistStore for PostgresJournal {
    async fn propose_addition(&self, addition: NewAddition) -> Result<Proposed, JournalError> {
        self.write(boxed(move |t| Box::pin(propose(t, addition)))).await
    }

    async fn live_addition(&self, key: &str, address: Address) -> Result<Option<Addition>, JournalError> {
        let key = key.to_owned();
        self.read(boxed(move |t| {
            Box::pin(async move { Ok(select(t, LIVE, "", &[&key, &address.to_string()]).await?.pop()) })
        }))
        .await
    }

    async fn additions(&self, key: &str, limit: usize) -> Result<Vec<Addition>, JournalError> {
        let key = key.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(boxed(move |t| {
            Box::pin(async move {
                let filter = "seq IN (SELECT seq FROM allowlist_entries WHERE key = $1 ORDER BY seq DESC LIMIT $2)";
                select(t, filter, "", &[&key, &limit]).await
            })
        }))
        .await
    }

    async fn decide_addition(
        &self,
        key: &str,
        address: Address,
        decision: Decision,
    ) -> Result<AdditionDecided, JournalError> {
        let key = key.to_owned();
        self.write(boxed(move |t| Box::pin(decide(t, key, address, decision)))).await
    }

    async fn remove_addition(
        &self,
        key: &str,
        address: Address,
        now_ms: u64,
    ) -> Result<Option<Addition>, JournalError> {
        let key = key.to_owned();
        self.write(boxed(move |t| Box::pin(remove(t, key, address, now_ms)))).await
    }

    async fn approved_additions(&self) -> Result<Vec<Addition>, JournalError> {
        self.read(boxed(move |t| Box::pin(async move { select(t, "status = 'approved'", "", &[]).await }))).await
    }
}
