//! Claims in batches ([`Batches`](super::batch::Batches)): a replica's claims of one key take turns — they
//! would wait for each other in PostgreSQL anyway, on the key's `nonces` row, and waiting there costs a
//! pooled connection and the CPU of PostgreSQL's lock queues, whose waiters re-read the row when woken —
//! and the claim whose turn it is makes every claim of the key waiting by then in one statement (a claim
//! with a nonce asked for, alone in its transaction).
//!
//! The statement ([`claim`]) locks the lease (`FOR KEY SHARE`, the fence: see `single`), then the key's
//! `nonces` row `FOR UPDATE`, then the rows claimed (`FOR NO KEY UPDATE`, each re-read at its newest
//! version and left out unless still `accepted` without a nonce) — the lock order of the module `postgres`
//! — numbers them from the counter in the order they were asked for, and stores them and the counter: the
//! nonces taken are contiguous and each taken by exactly one row. Only when the key has no free nonce (the
//! common case); otherwise each claim waiting is made by the transaction of
//! [`engine::claim`], which takes the lowest free nonce first.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use deadpool_postgres::GenericClient;

use super::batch::{Waiting, copy};
use super::rows::{NOW_MS, query_one, to_i64, to_u64};
use super::single::current;
use super::{Failure, PostgresJournal, boxed, engine, statements};
use crate::journal::{Claim, Fence, JournalError, Nonces};

/// A claim waiting for its turn.
pub(super) struct Asked {
    pub(super) fence: Fence,
    pub(super) id: String,
    pub(super) pending: u64,
    pub(super) wanted: Option<u64>,
}

/// What [`claim`] did.
pub(super) enum Claimed {
    /// The rows claimed, with their nonces, and the key's counter after them.
    Done { claimed: HashMap<String, u64>, next: u64 },
    /// Nothing: the key has free nonces (the lowest is taken first), or no nonces row yet.
    Elsewhere,
}

impl PostgresJournal {
    /// [`JournalStore::claim`](crate::journal::JournalStore::claim), in a batch of the key's claims.
    pub(super) async fn claim_in_turn(&self, asked: Asked) -> Result<Claim, JournalError> {
        let claims = {
            let mut claims = self.inner.claims.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(claims.entry(asked.fence.key.clone()).or_default())
        };
        let journal = self.clone();
        claims.make(asked, move |batch| Box::pin(async move { journal.claim_batch(batch).await })).await
    }

    /// Makes the claims of `batch` in their order, and answers each: one statement for each run of claims
    /// of one fence without a nonce asked for; a claim with one, alone.
    async fn claim_batch(&self, batch: Vec<Waiting<Asked, Claim>>) {
        let mut batch = batch.into_iter().peekable();
        while let Some(first) = batch.next() {
            if first.request.wanted.is_some() {
                let Asked { fence, id, pending, wanted } = &first.request;
                let (fence, id, pending, wanted) = (fence.clone(), id.clone(), *pending, *wanted);
                let claim = boxed(move |t| Box::pin(engine::claim(t, fence, id, pending, wanted)));
                let claimed = self.write(claim).await;
                first.answer(claimed);
                continue;
            }
            let fence = first.request.fence.clone();
            let mut run = vec![first];
            while let Some(next) = batch.next_if(|next| next.request.wanted.is_none() && next.request.fence == fence) {
                run.push(next);
            }
            self.claim_run(fence, run).await;
        }
    }

    /// Makes the claims of `run` (of `fence`, none with a nonce asked for) in one statement.
    async fn claim_run(&self, fence: Fence, run: Vec<Waiting<Asked, Claim>>) {
        let ids: Arc<Vec<String>> = Arc::new(run.iter().map(|waiting| waiting.request.id.clone()).collect());
        let pending = run.iter().map(|waiting| waiting.request.pending).max().unwrap_or_default();
        let made = self
            .single(statements(move |client| {
                let (fence, ids) = (fence.clone(), Arc::clone(&ids));
                Box::pin(async move { claim(client, &fence, &ids, pending).await })
            }))
            .await;
        match made {
            Ok(Claimed::Done { mut claimed, next }) => {
                for waiting in run {
                    // A row asked for twice is claimed once: for the first asking.
                    let claim = match (claimed.remove(&waiting.request.id), Nonces::from_stored(next, "")) {
                        (Some(nonce), Some(nonces)) => Claim::Claimed { nonce, nonces },
                        _ => Claim::NotAccepted,
                    };
                    waiting.answer(Ok(claim));
                }
            }
            Ok(Claimed::Elsewhere) => {
                for waiting in run {
                    let Asked { fence, id, pending, .. } = &waiting.request;
                    let (fence, id, pending) = (fence.clone(), id.clone(), *pending);
                    let claim = boxed(move |t| Box::pin(engine::claim(t, fence, id, pending, None)));
                    let claimed = self.write(claim).await;
                    waiting.answer(claimed);
                }
            }
            Err(error) => {
                for waiting in run {
                    waiting.answer(Err(copy(&error)));
                }
            }
        }
    }
}

/// `accepted → signing` for each of `ids` still `accepted` without a nonce, numbered in their order from
/// the key's counter (after the node's `pending` count), when the key has no free nonce: one statement.
pub(super) async fn claim(
    client: &impl GenericClient,
    fence: &Fence,
    ids: &[String],
    pending: u64,
) -> Result<Claimed, Failure> {
    // `claimable` locks the rows, re-read at their newest version (a row cancelled meanwhile is left out),
    // and `claimed` changes exactly those rows (locked by this statement: nobody else can), so every number
    // it gives, in the order asked for, is taken; the counter moves past the last. Rows are found by their
    // ids (`= ANY`, the primary key), whatever the statistics of the table say.
    let sql = format!(
        "WITH lease AS MATERIALIZED (SELECT epoch FROM leases WHERE key = $2 FOR KEY SHARE), \
         counter AS MATERIALIZED (SELECT next, free FROM nonces \
             WHERE key = $2 AND (SELECT epoch FROM lease) = $3 FOR UPDATE), \
         claimable AS MATERIALIZED (SELECT id FROM withdrawals \
             WHERE id = ANY($1) AND key = $2 AND status = 'accepted' AND nonce IS NULL \
                 AND (SELECT free FROM counter) = '' \
             FOR NO KEY UPDATE), \
         numbered AS MATERIALIZED (SELECT array_agg(id ORDER BY array_position($1, id)) AS ids FROM claimable), \
         claimed AS (UPDATE withdrawals SET status = 'signing', updated_ms = {NOW_MS}, \
                 nonce = GREATEST((SELECT next FROM counter), $4) + array_position((SELECT ids FROM numbered), id) - 1 \
             WHERE id = ANY((SELECT ids FROM numbered)::text[]) RETURNING id, nonce), \
         counted AS (UPDATE nonces SET next = (SELECT max(nonce) FROM claimed) + 1 \
             WHERE key = $2 AND EXISTS (SELECT 1 FROM claimed)) \
         SELECT (SELECT epoch FROM lease), (SELECT free FROM counter), ARRAY(SELECT id FROM claimed), \
             ARRAY(SELECT nonce FROM claimed)"
    );
    let row = query_one(client, &sql, &[&ids, &fence.key, &to_i64(fence.epoch), &to_i64(pending)]).await?;
    current(row.try_get(0)?, fence)?;
    if row.try_get::<_, Option<&str>>(1)? != Some("") {
        return Ok(Claimed::Elsewhere);
    }
    let (claimed, nonces): (Vec<String>, Vec<i64>) = (row.try_get(2)?, row.try_get(3)?);
    let nonces = nonces.into_iter().map(to_u64).collect::<Result<Vec<_>, _>>()?;
    let next = nonces.iter().max().map_or(0, |last| last + 1);
    Ok(Claimed::Done { claimed: claimed.into_iter().zip(nonces).collect(), next })
}
