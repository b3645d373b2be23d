//! Claims in batches. A replica's claims of one key take turns (they would wait for each other in
//! PostgreSQL anyway, on the key's `nonces` row, and waiting there costs a pooled connection and the CPU of
//! PostgreSQL's lock queues, whose waiters re-read the row when woken); the claim whose turn it is takes
//! every claim of the key waiting by then and makes them all in one statement — one round trip and one
//! commit for a burst of withdrawals, and at once for a lone claim.
//!
//! The statement ([`claim`]) locks the lease (`FOR KEY SHARE`, the fence: see `single`), then the key's
//! `nonces` row `FOR UPDATE`, then the rows claimed (`FOR NO KEY UPDATE`, each re-read at its newest
//! version and left out unless still `accepted` without a nonce) — the lock order of the module `postgres`
//! — numbers them from the counter in the order they were asked for, and stores them and the counter: the
//! nonces taken are contiguous and each taken by exactly one row. Only when the key has no free nonce (the
//! common case); otherwise each claim waiting is made by the transaction of
//! [`engine::claim`](super::engine::claim), which takes the lowest free nonce first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::GenericClient;
use tokio::sync::oneshot;

use super::rows::{NOW_MS, query_one, to_i64, to_u64};
use super::single::current;
use super::{Failure, PostgresJournal, boxed, engine, statements};
use crate::journal::{Claim, Fence, JournalError, Nonces};

/// The claims of one key on this replica.
#[derive(Default)]
pub(super) struct Claims {
    /// Claims asked for and not yet made, oldest first.
    waiting: Mutex<Vec<Waiting>>,
    /// Held while claims of the key are made.
    turn: Arc<tokio::sync::Mutex<()>>,
}

struct Waiting {
    fence: Fence,
    id: String,
    pending: u64,
    answer: oneshot::Sender<Result<Claim, JournalError>>,
}

/// What [`claim`] did.
pub(super) enum Claimed {
    /// The rows claimed, with their nonces, and the key's counter after them.
    Done { claimed: HashMap<String, u64>, next: u64 },
    /// Nothing: the key has free nonces (the lowest is taken first), or no nonces row yet.
    Elsewhere,
}

impl PostgresJournal {
    fn claims(&self, key: &str) -> Arc<Claims> {
        let mut claims = self.inner.claims.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(claims.entry(key.to_owned()).or_default())
    }

    /// [`JournalStore::claim`](crate::journal::JournalStore::claim): with `wanted`, alone in its turn; without,
    /// in a batch.
    pub(super) async fn claim_in_turn(
        &self,
        fence: Fence,
        id: String,
        pending: u64,
        wanted: Option<u64>,
    ) -> Result<Claim, JournalError> {
        let claims = self.claims(&fence.key);
        if wanted.is_some() {
            let _turn = claims.turn.lock().await;
            return self.write(boxed(move |t| Box::pin(engine::claim(t, fence, id, pending, wanted)))).await;
        }
        let (answer, mut answered) = oneshot::channel();
        claims.waiting.lock().unwrap_or_else(PoisonError::into_inner).push(Waiting { fence, id, pending, answer });
        let turn = Arc::clone(&claims.turn).lock_owned().await;
        if let Ok(result) = answered.try_recv() {
            return result; // made in the turn before
        }
        let batch = std::mem::take(&mut *claims.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        // In a task of its own, holding the turn: the claims of others in the batch do not depend on this
        // caller staying (a request whose client went away).
        let journal = self.clone();
        let _ = tokio::spawn(async move {
            journal.claim_batch(batch).await;
            drop(turn);
        })
        .await;
        answered.await.unwrap_or_else(|_| Err(JournalError::Postgres("the claim's task stopped".into())))
    }

    /// Makes the claims of `batch` (oldest first) and answers each.
    async fn claim_batch(&self, mut batch: Vec<Waiting>) {
        while !batch.is_empty() {
            // One fence at a time (all of them but across a change of lease).
            let epoch = batch[0].fence.epoch;
            let (now, later): (Vec<_>, Vec<_>) = batch.into_iter().partition(|waiting| waiting.fence.epoch == epoch);
            batch = later;
            let fence = now[0].fence.clone();
            let ids: Arc<Vec<String>> = Arc::new(now.iter().map(|waiting| waiting.id.clone()).collect());
            let pending = now.iter().map(|waiting| waiting.pending).max().unwrap_or_default();
            let held = fence.clone();
            let made = self
                .single(statements(move |client| {
                    let (fence, ids) = (held.clone(), Arc::clone(&ids));
                    Box::pin(async move { claim(client, &fence, &ids, pending).await })
                }))
                .await;
            match made {
                Ok(Claimed::Done { mut claimed, next }) => {
                    for waiting in now {
                        // A row asked for twice is claimed once: for the first asking.
                        let claim = match (claimed.remove(&waiting.id), Nonces::from_stored(next, "")) {
                            (Some(nonce), Some(nonces)) => Claim::Claimed { nonce, nonces },
                            _ => Claim::NotAccepted,
                        };
                        let _ = waiting.answer.send(Ok(claim));
                    }
                }
                Ok(Claimed::Elsewhere) => {
                    for Waiting { fence, id, pending, answer } in now {
                        let claim = boxed(move |t| Box::pin(engine::claim(t, fence, id, pending, None)));
                        let _ = answer.send(self.write(claim).await);
                    }
                }
                Err(error) => {
                    for waiting in now {
                        let _ = waiting.answer.send(Err(copy(&error)));
                    }
                }
            }
        }
    }
}

/// The same error, for every claim of a batch.
fn copy(error: &JournalError) -> JournalError {
    match error {
        JournalError::Fenced { key, epoch } => JournalError::Fenced { key: key.clone(), epoch: *epoch },
        JournalError::Refused(reason) => JournalError::Refused(reason.clone()),
        JournalError::Closed => JournalError::Closed,
        JournalError::Postgres(message) => JournalError::Postgres(message.clone()),
        error => JournalError::Postgres(error.to_string()),
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
