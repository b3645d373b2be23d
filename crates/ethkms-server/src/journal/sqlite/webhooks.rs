//! The SQLite journal's [`WebhookStore`]: the outbox of migration 6 (its triggers write the events), read
//! and updated by the deliverer, on the journal's thread like every other operation.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::deposits::u64_of;
use super::leases::fenced;
use super::rows::{exec, invalid, row, sql_u64};
use super::{Failure, SqliteJournal, millis, now_ms};
use crate::journal::webhooks::{DeliveryState, Outcome, WebhookEvent, WebhookStore};
use crate::journal::{Fence, JournalError};

/// The columns [`event_row`] reads, in its order.
const COLUMNS: &str = "e.seq, e.id, e.client, e.subject_type, e.subject, e.sequence, e.type, e.data, e.created_ms, \
    e.state, e.attempts, e.next_ms, e.last_error, e.delivered_ms";

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookEvent> {
    let state: String = row.get(9)?;
    Ok(WebhookEvent {
        seq: u64_of(row.get(0)?),
        id: row.get(1)?,
        client: row.get(2)?,
        subject_type: row.get(3)?,
        subject: row.get(4)?,
        sequence: u64_of(row.get(5)?),
        event_type: row.get(6)?,
        data: row.get(7)?,
        created_ms: u64_of(row.get(8)?),
        state: DeliveryState::parse(&state).ok_or_else(|| invalid(format!("delivery state `{state}`")))?,
        attempts: u32::try_from(row.get::<_, i64>(10)?).unwrap_or(u32::MAX),
        next_attempt_ms: u64_of(row.get(11)?),
        last_error: row.get(12)?,
        delivered_ms: row.get::<_, Option<i64>>(13)?.map(u64_of),
    })
}

fn events<P: rusqlite::Params>(
    connection: &Connection,
    sql: &str,
    parameters: P,
) -> Result<Vec<WebhookEvent>, Failure> {
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map(parameters, event_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl WebhookStore for SqliteJournal {
    async fn set_webhook_clients(&self, clients: Vec<String>) -> Result<(), JournalError> {
        self.run(move |connection| {
            exec(connection, "DELETE FROM webhook_clients", [])?;
            for client in &clients {
                exec(connection, "INSERT OR IGNORE INTO webhook_clients (client) VALUES (?1)", params![client])?;
            }
            Ok(())
        })
        .await
    }

    async fn due_events(&self, client: &str, limit: usize) -> Result<Vec<WebhookEvent>, JournalError> {
        let client = client.to_owned();
        self.run(move |connection| {
            let sql = format!(
                "SELECT {COLUMNS} FROM webhook_events e WHERE e.state <> 'delivered' AND e.next_ms <= ?1 \
                 AND e.client = ?3 AND e.client IN (SELECT client FROM webhook_clients) \
                 AND NOT EXISTS (SELECT 1 FROM webhook_events p WHERE p.subject_type = e.subject_type \
                     AND p.subject = e.subject AND p.sequence < e.sequence AND p.state <> 'delivered') \
                 ORDER BY e.seq LIMIT ?2"
            );
            events(connection, &sql, params![sql_u64(now_ms()), limit_of(limit), client])
        })
        .await
    }

    async fn record_delivery(&self, fence: &Fence, id: &str, outcome: Outcome) -> Result<bool, JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let now = now_ms();
            let changed = match outcome {
                Outcome::Delivered => exec(
                    connection,
                    "UPDATE webhook_events SET state = 'delivered', attempts = attempts + 1, delivered_ms = ?2, \
                     last_error = NULL WHERE id = ?1 AND state <> 'delivered'",
                    params![id, sql_u64(now)],
                )?,
                Outcome::Failed { error, retry_in } => exec(
                    connection,
                    "UPDATE webhook_events SET state = 'failing', attempts = attempts + 1, next_ms = ?2, \
                     last_error = ?3 WHERE id = ?1 AND state <> 'delivered'",
                    params![id, sql_u64(now.saturating_add(millis(retry_in))), error],
                )?,
            };
            Ok(changed == 1)
        })
        .await
    }

    async fn webhook_events(
        &self,
        client: &str,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<WebhookEvent>, JournalError> {
        let client = client.to_owned();
        self.run(move |connection| match state {
            Some(state) => events(
                connection,
                &format!(
                    "SELECT {COLUMNS} FROM webhook_events e WHERE e.client = ?1 AND e.state = ?2 \
                     ORDER BY e.seq DESC LIMIT ?3"
                ),
                params![client, state.as_str(), limit_of(limit)],
            ),
            None => events(
                connection,
                &format!("SELECT {COLUMNS} FROM webhook_events e WHERE e.client = ?1 ORDER BY e.seq DESC LIMIT ?2"),
                params![client, limit_of(limit)],
            ),
        })
        .await
    }

    async fn waiting_events(&self) -> Result<u64, JournalError> {
        self.run(move |connection| {
            let count: i64 = row(
                connection,
                "SELECT count(*) FROM webhook_events WHERE state <> 'delivered' \
                 AND client IN (SELECT client FROM webhook_clients)",
                [],
                |row| row.get(0),
            )?;
            Ok(u64_of(count))
        })
        .await
    }
}
