//! Client withdrawals stored in batches ([`Batches`]): requests to store a withdrawal whose key has no
//! daily limit take turns on this replica, and the one whose turn it is stores every one waiting by then
//! in one statement ([`insert`]) — with their amounts counted and their keys' owners woken; a statement
//! PostgreSQL refuses (something about one of them) is tried again for each alone, so that one cannot fail
//! the others. A withdrawal whose key has a daily limit is stored by the transaction of
//! [`requests::insert`], under the key's limit lock, with the same statement for one row.

use std::collections::HashMap;
use std::sync::Arc;

use alloy_primitives::U256;
use deadpool_postgres::GenericClient;

use super::batch::{Batches, Waiting, copy};
use super::listener::CHANNEL;
use super::rows::{self, COLUMNS, NOW_MS, asset_text, query, to_i64};
use super::{Failure, PostgresJournal, requests, statements};
use crate::journal::{Inserted, JournalError, LimitCheck, NewWithdrawal, Spent, Status, Withdrawal};
use crate::policy::Asset;

/// A withdrawal to store under `id`, with its amounts counted.
#[derive(Clone)]
pub(super) struct New {
    pub(super) id: String,
    pub(super) withdrawal: NewWithdrawal,
    pub(super) spends: Vec<(Asset, U256)>,
}

/// The requests to store withdrawals waiting for their turn: the row stored, or `None` if the client's
/// idempotency key was taken.
pub(super) type Inserts = Batches<New, Option<Withdrawal>>;

impl PostgresJournal {
    /// [`JournalStore::insert`](crate::journal::JournalStore::insert) for a key without a daily limit: the
    /// check reads nothing (and may run before the idempotency key is looked up: it only decides), and the
    /// row is stored in a batch.
    pub(super) async fn insert_unlimited(
        &self,
        withdrawal: NewWithdrawal,
        check: LimitCheck,
    ) -> Result<Inserted, JournalError> {
        let denial = match (check.check)(&Spent::new()) {
            Ok(spends) => {
                let new = New { id: uuid::Uuid::new_v4().to_string(), withdrawal: withdrawal.clone(), spends };
                let journal = self.clone();
                let stored = self
                    .inner
                    .inserts
                    .make(new, move |batch| Box::pin(async move { journal.insert_batch(batch).await }))
                    .await?;
                if let Some(row) = stored {
                    return Ok(Inserted::New(row));
                }
                None
            }
            Err(denial) => Some(denial),
        };
        let (client, idempotency_key) = (withdrawal.client, withdrawal.idempotency_key);
        let existing = self
            .single(statements(move |database| {
                let (client, idempotency_key) = (client.clone(), idempotency_key.clone());
                Box::pin(async move { requests::existing(database, client, idempotency_key).await })
            }))
            .await?;
        match (existing, denial) {
            (Some(row), _) => Ok(Inserted::Existing(row)),
            (None, Some(denial)) => Ok(Inserted::Refused(denial)),
            (None, None) => Err(JournalError::Postgres("an idempotency key's row vanished".into())),
        }
    }

    /// Stores the withdrawals of `batch` in one statement and answers each; if the statement fails
    /// (something about one of them), each alone, so that one cannot fail the others.
    async fn insert_batch(&self, batch: Vec<Waiting<New, Option<Withdrawal>>>) {
        let rows: Vec<New> = batch.iter().map(|waiting| waiting.request.clone()).collect();
        match self.insert_rows(rows).await {
            Ok(mut stored) => {
                for waiting in batch {
                    let row = stored.remove(&waiting.request.id);
                    waiting.answer(Ok(row));
                }
            }
            Err(JournalError::Postgres(_)) if batch.len() > 1 => {
                for waiting in batch {
                    let stored = self.insert_rows(vec![waiting.request.clone()]).await;
                    let stored = stored.map(|mut stored| stored.remove(&waiting.request.id));
                    waiting.answer(stored);
                }
            }
            Err(error) => {
                for waiting in batch {
                    waiting.answer(Err(copy(&error)));
                }
            }
        }
    }

    async fn insert_rows(&self, rows: Vec<New>) -> Result<HashMap<String, Withdrawal>, JournalError> {
        let rows = Arc::new(rows);
        self.single(statements(move |client| {
            let rows = Arc::clone(&rows);
            Box::pin(async move { insert(client, &rows, None).await })
        }))
        .await
    }
}

/// Stores `rows` (each under its id, in their order) with their amounts counted at `now` (the time the
/// daily-limit lock was taken) or the database's time, and wakes their keys' owners: in one statement. The
/// rows stored, by id: not those whose client's idempotency key is taken (by a request committed meanwhile,
/// which the insert waits for; or by a row before it in `rows`).
pub(super) async fn insert(
    client: &impl GenericClient,
    rows: &[New],
    now: Option<u64>,
) -> Result<HashMap<String, Withdrawal>, Failure> {
    let sql = format!(
        "WITH new AS (INSERT INTO withdrawals (id, kind, client, idempotency_key, key, recipient, asset, amount, \
                 status, created_ms, updated_ms) \
             SELECT asked.id, 'withdrawal', asked.client, asked.idempotency_key, asked.key, asked.recipient, \
                 asked.asset, asked.amount::numeric, asked.status, now.ms, now.ms \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $13::text[]) \
                 WITH ORDINALITY AS asked (id, client, idempotency_key, key, recipient, asset, amount, status, ord), \
                 (SELECT COALESCE($8::bigint, {NOW_MS}) AS ms) AS now \
             ORDER BY asked.ord \
             ON CONFLICT (client, idempotency_key) DO NOTHING RETURNING {COLUMNS}), \
         counted AS (INSERT INTO spends (key, asset, amount, at_ms, withdrawal) \
             SELECT new.key, spend.asset, spend.amount::numeric, new.created_ms, new.id \
             FROM new JOIN unnest($9::text[], $10::text[], $11::text[]) AS spend (withdrawal, asset, amount) \
                 ON spend.withdrawal = new.id), \
         terms AS (INSERT INTO approval_terms (withdrawal, quorum, expires_ms) \
             SELECT new.id, asked.quorum, asked.expires_ms \
             FROM new JOIN unnest($14::text[], $15::int[], $16::bigint[]) AS asked (withdrawal, quorum, expires_ms) \
                 ON asked.withdrawal = new.id) \
         SELECT new.*, (SELECT count(pg_notify($12, key)) FROM (SELECT DISTINCT key FROM new) AS keys) FROM new"
    );
    let column = |value: fn(&New) -> String| -> Vec<String> { rows.iter().map(value).collect() };
    let (mut withdrawals, mut assets, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        for (asset, amount) in &row.spends {
            withdrawals.push(row.id.clone());
            assets.push(asset_text(*asset));
            amounts.push(amount.to_string());
        }
    }
    let (mut pending, mut quorums, mut expiries) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        if let Some(terms) = row.withdrawal.approval {
            pending.push(row.id.clone());
            quorums.push(i32::try_from(terms.quorum).unwrap_or(i32::MAX));
            expiries.push(to_i64(terms.expires_ms));
        }
    }
    let statuses = column(|row| {
        let status = if row.withdrawal.approval.is_some() { Status::PendingApproval } else { Status::Accepted };
        status.as_str().to_owned()
    });
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 16] = [
        &column(|row| row.id.clone()),
        &column(|row| row.withdrawal.client.clone()),
        &column(|row| row.withdrawal.idempotency_key.clone()),
        &column(|row| row.withdrawal.key.clone()),
        &column(|row| row.withdrawal.recipient.to_string()),
        &column(|row| asset_text(row.withdrawal.asset)),
        &column(|row| row.withdrawal.amount.to_string()),
        &now.map(to_i64),
        &withdrawals,
        &assets,
        &amounts,
        &CHANNEL,
        &statuses,
        &pending,
        &quorums,
        &expiries,
    ];
    query(client, &sql, &params)
        .await?
        .iter()
        .map(|row| rows::withdrawal(row).map(|withdrawal| (withdrawal.id.clone(), withdrawal)))
        .collect()
}
