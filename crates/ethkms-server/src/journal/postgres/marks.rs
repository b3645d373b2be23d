//! Status writes in batches ([`Batches`]): a replica's `mark_submitted` and `mark_mined` of a paid row, for
//! one key, take turns, and the one whose turn it is writes every one waiting by then — one statement for
//! each kind (the watcher settles the rows mined in a block together). Each statement is fenced as a
//! write of one row is ([`single`]): the lease locked first, in the statement, and nothing written unless
//! its epoch is the fence's; a statement that changed nothing reads the epoch again to tell fenced from
//! nothing to do, for all its rows at once (one fence, one answer).
//!
//! A row's writes keep their order: a batch is written in waves, each with at most one write of a row.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use alloy_primitives::B256;
use deadpool_postgres::GenericClient;

use super::batch::{Batches, Waiting, copy};
use super::rows::{NOW_MS, execute, to_i64};
use super::single::{self, FENCE, nothing_or_fenced};
use super::{Failure, PostgresJournal, statements};
use crate::journal::{Fence, JournalError};

/// What is written.
#[derive(Clone, Copy)]
pub(super) enum Mark {
    /// `signed → submitted`.
    Submitted,
    /// Mined and paid (`mined`, or `confirmed` when already deep enough).
    Paid { tx_hash: B256, block: u64, block_hash: B256, confirmed: bool },
}

/// A write of row `id` under `fence`.
pub(super) struct Marked {
    pub(super) fence: Fence,
    pub(super) id: String,
    pub(super) mark: Mark,
}

/// The status writes of one key waiting for their turn.
pub(super) type Marks = Batches<Marked, ()>;

impl PostgresJournal {
    /// Writes `marked`, in a batch of the key's status writes.
    pub(super) async fn mark(&self, marked: Marked) -> Result<(), JournalError> {
        let marks = {
            let mut marks = self.inner.marks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(marks.entry(marked.fence.key.clone()).or_default())
        };
        let journal = self.clone();
        marks.make(marked, move |batch| Box::pin(async move { journal.mark_batch(batch).await })).await
    }

    async fn mark_batch(&self, mut batch: Vec<Waiting<Marked, ()>>) {
        while !batch.is_empty() {
            // A wave: the first write of each row; of those, one statement per kind and fence.
            let mut rows = HashSet::new();
            let (wave, later): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|waiting| rows.insert(waiting.request.id.clone()));
            batch = later;
            let mut groups: Vec<Vec<Waiting<Marked, ()>>> = Vec::new();
            for waiting in wave {
                let same = |other: &Waiting<Marked, ()>| {
                    other.request.fence == waiting.request.fence
                        && matches!(
                            (other.request.mark, waiting.request.mark),
                            (Mark::Submitted, Mark::Submitted) | (Mark::Paid { .. }, Mark::Paid { .. })
                        )
                };
                match groups.iter_mut().find(|group| same(&group[0])) {
                    Some(group) => group.push(waiting),
                    None => groups.push(vec![waiting]),
                }
            }
            for group in groups {
                let (fence, mark) = (group[0].request.fence.clone(), group[0].request.mark);
                let rows: Arc<Vec<(String, Mark)>> =
                    Arc::new(group.iter().map(|waiting| (waiting.request.id.clone(), waiting.request.mark)).collect());
                let written = self
                    .single(statements(move |client| {
                        let (fence, rows) = (fence.clone(), Arc::clone(&rows));
                        Box::pin(async move {
                            match mark {
                                Mark::Submitted => submitted(client, &fence, &rows).await,
                                Mark::Paid { .. } => paid(client, &fence, &rows).await,
                            }
                        })
                    }))
                    .await;
                for waiting in group {
                    waiting.answer(written.as_ref().map(|_| ()).map_err(copy));
                }
            }
        }
    }
}

/// `signed → submitted` for `rows` (all [`Mark::Submitted`]) of the fence's key, in one statement.
async fn submitted(client: &impl GenericClient, fence: &Fence, rows: &[(String, Mark)]) -> Result<(), Failure> {
    let sql = format!(
        "UPDATE withdrawals SET status = 'submitted', updated_ms = {NOW_MS} \
         WHERE id = ANY($1) AND key = $2 AND status = 'signed' AND {FENCE}"
    );
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    if execute(client, &sql, &[&ids, &fence.key, &to_i64(fence.epoch)]).await? == 0 {
        nothing_or_fenced(client, fence).await?;
    }
    Ok(())
}

/// `rows` (all [`Mark::Paid`]) of the fence's key mined and paid, in one statement.
async fn paid(client: &impl GenericClient, fence: &Fence, rows: &[(String, Mark)]) -> Result<(), Failure> {
    // Found by `= ANY` (the primary key), whatever the statistics of the table say.
    let sql = format!(
        "UPDATE withdrawals SET status = mined.status, tx_hash = mined.tx_hash, block_number = mined.block, \
             block_hash = mined.block_hash, error = NULL, confirmed = mined.confirmed, updated_ms = {NOW_MS} \
         FROM unnest($1::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::boolean[]) \
             AS mined (id, status, tx_hash, block, block_hash, confirmed) \
         WHERE withdrawals.id = ANY($1) AND withdrawals.id = mined.id AND withdrawals.key = $2 AND {FENCE}"
    );
    let (mut ids, mut statuses, mut hashes, mut blocks, mut block_hashes, mut confirmations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, mark) in rows {
        if let Mark::Paid { tx_hash, block, block_hash, confirmed } = mark {
            ids.push(id.as_str());
            statuses.push(single::paid_status(*confirmed).as_str());
            hashes.push(tx_hash.to_string());
            blocks.push(to_i64(*block));
            block_hashes.push(block_hash.to_string());
            confirmations.push(*confirmed);
        }
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
        [&ids, &fence.key, &to_i64(fence.epoch), &statuses, &hashes, &blocks, &block_hashes, &confirmations];
    if execute(client, &sql, &params).await? == 0 {
        nothing_or_fenced(client, fence).await?;
    }
    Ok(())
}
