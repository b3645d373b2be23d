//! Signed transactions stored in batches ([`Batches`]): a replica's `add_attempt`s of one key take turns,
//! and the one whose turn it is stores every one waiting by then in one statement ([`add`]), at most one
//! per row (a row's next waits for the next statement, in order). A statement that fails (something about
//! one of its transactions) is tried again for each alone, so that one cannot fail the others.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use deadpool_postgres::GenericClient;

use super::batch::{Batches, Waiting, copy};
use super::rows::{NOW_MS, query, to_i64};
use super::single::current;
use super::{Failure, PostgresJournal, statements};
use crate::journal::{Attempt, Fence, JournalError};

/// A signed transaction to store for row `id` with `nonce`.
#[derive(Clone)]
pub(super) struct Signed {
    pub(super) fence: Fence,
    pub(super) id: String,
    pub(super) nonce: u64,
    pub(super) attempt: Attempt,
}

/// The attempts of one key waiting for their turn.
pub(super) type Attempts = Batches<Signed, ()>;

impl PostgresJournal {
    /// [`JournalStore::add_attempt`](crate::journal::JournalStore::add_attempt), in a batch of the key's.
    pub(super) async fn add_in_turn(&self, signed: Signed) -> Result<(), JournalError> {
        let attempts = {
            let mut attempts = self.inner.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(attempts.entry(signed.fence.key.clone()).or_default())
        };
        let journal = self.clone();
        attempts.make(signed, move |batch| Box::pin(async move { journal.add_batch(batch).await })).await
    }

    async fn add_batch(&self, mut batch: Vec<Waiting<Signed, ()>>) {
        while !batch.is_empty() {
            // The first of each row, of the first fence.
            let (fence, mut rows) = (batch[0].request.fence.clone(), HashSet::new());
            let (now, later): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|waiting| waiting.request.fence == fence && rows.insert(waiting.request.id.clone()));
            batch = later;
            let signed: Vec<Signed> = now.iter().map(|waiting| waiting.request.clone()).collect();
            match self.add_all(fence.clone(), signed).await {
                Ok(answers) => {
                    for (waiting, answer) in now.into_iter().zip(answers) {
                        waiting.answer(answer);
                    }
                }
                Err(JournalError::Postgres(_)) if now.len() > 1 => {
                    for waiting in now {
                        let answer = self.add_all(fence.clone(), vec![waiting.request.clone()]).await;
                        waiting.answer(answer.and_then(|mut answers| answers.pop().unwrap_or(Ok(()))));
                    }
                }
                Err(error) => {
                    for waiting in now {
                        waiting.answer(Err(copy(&error)));
                    }
                }
            }
        }
    }

    /// Stores `signed` (of `fence`, one per row) in one statement: each one's answer.
    async fn add_all(&self, fence: Fence, signed: Vec<Signed>) -> Result<Vec<Result<(), JournalError>>, JournalError> {
        let signed = Arc::new(signed);
        let answers = self
            .single(statements(move |client| {
                let (fence, signed) = (fence.clone(), Arc::clone(&signed));
                Box::pin(async move { add(client, &fence, &signed).await })
            }))
            .await?;
        Ok(answers.into_iter().map(|answer| answer.map_err(|failure| self.error(failure))).collect())
    }
}

/// Stores each of `signed` (of `fence`, at most one per row) for its row (`signing → signed`): refused
/// unless the row holds its nonce, is the fence's key's and is open; a transaction the row already has (a
/// retry whose first answer was lost) is not stored twice. The whole statement is [`Failure::Fenced`], or
/// the answer of each, in order.
///
/// The rows are locked (`FOR NO KEY UPDATE`, after the lease) and their nonce and status read from their
/// newest version; `attempts` is read with the statement's snapshot — the one statement at a time of the
/// key's turns has the attempts of the statements before.
pub(super) async fn add(
    client: &impl GenericClient,
    fence: &Fence,
    signed: &[Signed],
) -> Result<Vec<Result<(), Failure>>, Failure> {
    let sql = format!(
        "WITH lease AS MATERIALIZED (SELECT epoch, holder FROM leases WHERE key = $2 FOR KEY SHARE), \
         target AS MATERIALIZED (SELECT id, nonce, status, key FROM withdrawals \
             WHERE id = ANY($1) AND (SELECT epoch FROM lease) = $3 FOR NO KEY UPDATE), \
         asked AS MATERIALIZED (SELECT * FROM unnest($1::text[], $4::bigint[], $5::text[], $6::bytea[], \
                 $7::text[], $8::text[], $9::bigint[], $10::boolean[]) WITH ORDINALITY \
             AS asked (id, nonce, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms, cancel, ord)), \
         known AS MATERIALIZED (SELECT asked.id FROM asked WHERE EXISTS (SELECT 1 FROM attempts \
             WHERE attempts.withdrawal = asked.id AND attempts.tx_hash = asked.tx_hash)), \
         fit AS MATERIALIZED (SELECT asked.* FROM asked JOIN target ON target.id = asked.id \
             WHERE target.key = $2 AND target.nonce = asked.nonce \
                 AND target.status IN ('signing', 'signed', 'submitted') AND asked.id NOT IN (SELECT id FROM known)), \
         stored AS (INSERT INTO attempts (withdrawal, number, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, \
                 signed_ms, cancel, epoch, replica) \
             SELECT fit.id, (SELECT COALESCE(max(number) + 1, 0) FROM attempts WHERE withdrawal = fit.id), \
                 fit.tx_hash, fit.raw, fit.max_fee_per_gas, fit.priority_fee_per_gas, fit.signed_ms, fit.cancel, \
                 $3, (SELECT holder FROM lease) \
             FROM fit ORDER BY fit.ord RETURNING withdrawal), \
         signed AS (UPDATE withdrawals SET tx_hash = fit.tx_hash, updated_ms = {NOW_MS}, \
                 status = CASE withdrawals.status WHEN 'signing' THEN 'signed' ELSE withdrawals.status END \
             FROM fit WHERE withdrawals.id = ANY($1) AND withdrawals.id = fit.id \
                 AND fit.id IN (SELECT withdrawal FROM stored)) \
         SELECT (SELECT epoch FROM lease), target.nonce, target.status, target.key, \
             asked.id IN (SELECT id FROM known), asked.id IN (SELECT withdrawal FROM stored) \
         FROM asked LEFT JOIN target ON target.id = asked.id ORDER BY asked.ord"
    );
    let ids: Vec<&str> = signed.iter().map(|signed| signed.id.as_str()).collect();
    let nonces: Vec<i64> = signed.iter().map(|signed| to_i64(signed.nonce)).collect();
    let hashes: Vec<String> = signed.iter().map(|signed| signed.attempt.tx_hash.to_string()).collect();
    let raws: Vec<&[u8]> = signed.iter().map(|signed| signed.attempt.raw.as_ref()).collect();
    let max_fees: Vec<String> = signed.iter().map(|signed| signed.attempt.max_fee_per_gas.to_string()).collect();
    let tips: Vec<String> = signed.iter().map(|signed| signed.attempt.priority_fee_per_gas.to_string()).collect();
    let times: Vec<i64> = signed.iter().map(|signed| to_i64(signed.attempt.signed_ms)).collect();
    let cancels: Vec<bool> = signed.iter().map(|signed| signed.attempt.cancel).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] =
        [&ids, &fence.key, &to_i64(fence.epoch), &nonces, &hashes, &raws, &max_fees, &tips, &times, &cancels];
    let rows = query(client, &sql, &params).await?;
    let mut answers = Vec::new();
    for (row, signed) in rows.iter().zip(signed) {
        current(row.try_get(0)?, fence)?;
        let (id, nonce) = (&signed.id, signed.nonce);
        let (held, status, key): (Option<i64>, Option<&str>, Option<&str>) =
            (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let (known, stored): (bool, bool) = (row.try_get(4)?, row.try_get(5)?);
        answers.push(match (status, key) {
            (None, _) | (_, None) => Err(Failure::Refused(format!("no row `{id}` to add a transaction to"))),
            (_, Some(key)) if key != fence.key => {
                Err(Failure::Refused(format!("`{id}` is key `{key}`'s, not `{}`'s", fence.key)))
            }
            _ if held != Some(to_i64(nonce)) => Err(Failure::Refused(format!(
                "`{id}` holds nonce {held:?}; a transaction with nonce {nonce} is not stored for it"
            ))),
            (Some(status), _) if !matches!(status, "signing" | "signed" | "submitted") => {
                Err(Failure::Refused(format!("`{id}` is {status}; no transaction is added to it")))
            }
            _ if known || stored => Ok(()),
            _ => Err(Failure::Invalid(format!("`{id}`: the transaction was not stored"))),
        });
    }
    if answers.len() == signed.len() {
        Ok(answers)
    } else {
        Err(Failure::Invalid(format!("{} answers for {} transactions", answers.len(), signed.len())))
    }
}
