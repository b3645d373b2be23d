//! The PostgreSQL journal's [`WebhookStore`]: the outbox of migration 5 (its triggers write the events),
//! read and updated by the deliverer. Its attempts are fenced by the [`WEBHOOK_LEASE`] as the engine's
//! writes are by a key's lease, so that one replica delivers at a time.
//!
//! [`WEBHOOK_LEASE`]: crate::journal::webhooks::WEBHOOK_LEASE

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::engine::fenced;
use super::rows::{NOW_MS, execute, query, query_one, to_u64};
use super::{Failure, PostgresJournal, boxed};
use crate::journal::webhooks::{DeliveryState, Outcome, WebhookEvent, WebhookStore};
use crate::journal::{Fence, JournalError};

/// The columns [`event_row`] reads, in its order.
const COLUMNS: &str = "e.seq, e.id, e.client, e.subject_type, e.subject, e.sequence, e.type, e.data, e.created_ms, \
    e.state, e.attempts, e.next_ms, e.last_error, e.delivered_ms";

fn event_row(row: &Row) -> Result<WebhookEvent, Failure> {
    let state: String = row.try_get(9)?;
    Ok(WebhookEvent {
        seq: to_u64(row.try_get(0)?)?,
        id: row.try_get(1)?,
        client: row.try_get(2)?,
        subject_type: row.try_get(3)?,
        subject: row.try_get(4)?,
        sequence: to_u64(row.try_get(5)?)?,
        event_type: row.try_get(6)?,
        data: row.try_get(7)?,
        created_ms: to_u64(row.try_get(8)?)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| Failure::Invalid(format!("delivery state `{state}` cannot be read")))?,
        attempts: u32::try_from(row.try_get::<_, i32>(10)?).unwrap_or(0),
        next_attempt_ms: to_u64(row.try_get(11)?)?,
        last_error: row.try_get(12)?,
        delivered_ms: row.try_get::<_, Option<i64>>(13)?.map(to_u64).transpose()?,
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn set_clients(transaction: &Transaction<'_>, clients: Vec<String>) -> Result<(), Failure> {
    execute(transaction, "DELETE FROM webhook_clients WHERE NOT (client = ANY($1))", &[&clients]).await?;
    execute(
        transaction,
        "INSERT INTO webhook_clients (client) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        &[&clients],
    )
    .await?;
    Ok(())
}

async fn record(transaction: &Transaction<'_>, fence: Fence, id: String, outcome: Outcome) -> Result<bool, Failure> {
    fenced(transaction, &fence).await?;
    let changed = match outcome {
        Outcome::Delivered => {
            let sql = format!(
                "UPDATE webhook_events SET state = 'delivered', attempts = attempts + 1, delivered_ms = {NOW_MS}, \
                 last_error = NULL WHERE id = $1 AND state <> 'delivered'"
            );
            execute(transaction, &sql, &[&id]).await?
        }
        Outcome::Failed { error, retry_in } => {
            let sql = format!(
                "UPDATE webhook_events SET state = 'failing', attempts = attempts + 1, next_ms = {NOW_MS} + $2, \
                 last_error = $3 WHERE id = $1 AND state <> 'delivered'"
            );
            let retry_in = i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX / 2);
            execute(transaction, &sql, &[&id, &retry_in, &error]).await?
        }
    };
    Ok(changed == 1)
}

#[async_trait]
impl WebhookStore for PostgresJournal {
    async fn set_webhook_clients(&self, clients: Vec<String>) -> Result<(), JournalError> {
        self.write(boxed(move |t| Box::pin(set_clients(t, clients)))).await
    }

    async fn due_events(&self, client: &str, limit: usize) -> Result<Vec<WebhookEvent>, JournalError> {
        let client = client.to_owned();
        self.read(boxed(move |t| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM webhook_events e WHERE e.state <> 'delivered' AND e.next_ms <= {NOW_MS} \
                     AND e.client = $2 AND e.client IN (SELECT client FROM webhook_clients) \
                     AND NOT EXISTS (SELECT 1 FROM webhook_events p WHERE p.subject_type = e.subject_type \
                         AND p.subject = e.subject AND p.sequence < e.sequence AND p.state <> 'delivered') \
                     ORDER BY e.seq LIMIT $1"
                );
                query(t, &sql, &[&limit_of(limit), &client]).await?.iter().map(event_row).collect()
            })
        }))
        .await
    }

    async fn record_delivery(&self, fence: &Fence, id: &str, outcome: Outcome) -> Result<bool, JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.write(boxed(move |t| Box::pin(record(t, fence, id, outcome)))).await
    }

    async fn webhook_events(
        &self,
        client: &str,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<WebhookEvent>, JournalError> {
        let client = client.to_owned();
        self.read(boxed(move |t| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {COLUMNS} FROM webhook_events e WHERE e.client = $1 AND ($2::text IS NULL OR e.state = $2) \
                     ORDER BY e.seq DESC LIMIT $3"
                );
                let state = state.map(DeliveryState::as_str);
                query(t, &sql, &[&client, &state, &limit_of(limit)]).await?.iter().map(event_row).collect()
            })
        }))
        .await
    }

    async fn waiting_events(&self) -> Result<u64, JournalError> {
        self.read(boxed(move |t| {
            Box::pin(async move {
                let row = query_one(
                    t,
                    "SELECT count(*) FROM webhook_events WHERE state <> 'delivered' \
                     AND client IN (SELECT client FROM webhook_clients)",
                    &[],
                )
                .await?;
                to_u64(row.try_get(0)?)
            })
        }))
        .await
    }
}
