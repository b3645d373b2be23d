//! The webhook outbox: [`WebhookStore`], what the [webhook deliverer](crate::webhooks) needs of a journal.
//!
//! Every state change of a client's withdrawal (its insert, and every change of `status` or `confirmed`)
//! and of a deposit to one of its addresses (recorded, and every change of `status` or `sweep_status`) is
//! written to the table `webhook_events` **by the database itself** — triggers of SQLite migration 6 and
//! PostgreSQL migration 5 — in the same transaction as the change: no write of the journal can change a
//! row without its event, nor store an event of a change that was rolled back. Only clients listed in
//! `webhook_clients` (those with a webhook, set at start by [`WebhookStore::set_webhook_clients`]) get
//! events; for the others the cost is one lookup in that small table.
//!
//! An event holds a new UUID (its id, for receivers to de-duplicate), the client, the subject (`withdrawal`
//! and its id, or `deposit` and `TX_HASH:LOG_INDEX`, -1 for a transaction's own value), its number among
//! the subject's events (1, 2, …), its type (`withdrawal.signed`, `deposit.confirmed`, …), a JSON snapshot
//! of the row (rendered as the REST API's representation when sent) and the row's `updated_ms`.
//!
//! Delivery is in order per subject: [`due_events`](WebhookStore::due_events) answers only the first
//! undelivered event of each subject.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::{Fence, JournalError};

/// The journal lease the delivering replica holds (not a key's: keys' names cannot start with `@`).
pub const WEBHOOK_LEASE: &str = "@webhooks";

/// Where an event's delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not tried yet.
    Pending,
    /// Acknowledged by the receiver (a 2xx answer): final.
    Delivered,
    /// Tried and not acknowledged: tried again at `next_attempt_ms`.
    Failing,
}

impl DeliveryState {
    /// The name used in the journal and the API.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failing => "failing",
        }
    }

    /// The state named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failing" => Self::Failing,
            _ => return None,
        })
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event of the outbox, with its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Its place in the outbox (the order events were stored in).
    pub seq: u64,
    /// Its id: a UUID, the same at every attempt (receivers de-duplicate by it).
    pub id: String,
    /// The client it is sent to.
    pub client: String,
    /// `withdrawal` or `deposit`.
    pub subject_type: String,
    /// The withdrawal's id, or the deposit's `TX_HASH:LOG_INDEX`.
    pub subject: String,
    /// Its number among the subject's events, from 1.
    pub sequence: u64,
    /// What happened: `withdrawal.` or `deposit.` and the new status.
    pub event_type: String,
    /// The row as it was (JSON; see [`crate::journal::webhooks`]).
    pub data: String,
    /// When the change happened, Unix milliseconds (the row's `updated_ms`).
    pub created_ms: u64,
    /// Where its delivery is.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When it is tried next (pending and failing), Unix milliseconds on the journal's clock.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed: the receiver's status code or a transport error (no URL in it).
    pub last_error: Option<String>,
    /// When it was acknowledged.
    pub delivered_ms: Option<u64>,
}

/// What became of one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not: why (no URL in it), and when to try again.
    Failed {
        /// The status code, or the transport error.
        error: String,
        /// The back-off before the next attempt.
        retry_in: Duration,
    },
}

/// What the webhook deliverer needs of a journal (both journals implement it).
#[async_trait]
pub trait WebhookStore: Send + Sync + fmt::Debug {
    /// The clients with a webhook (replacing the list): only their rows' changes are written to the outbox
    /// from now on, and only their events are [due](Self::due_events).
    async fn set_webhook_clients(&self, clients: Vec<String>) -> Result<(), JournalError>;

    /// Up to `limit` of `client`'s events to send now, oldest first: of each subject, the first one not yet
    /// delivered, if it is due (pending, or failing and its back-off over). Asked client by client, so that
    /// one client's backlog never hides another's events.
    async fn due_events(&self, client: &str, limit: usize) -> Result<Vec<WebhookEvent>, JournalError>;

    /// Records an attempt of event `id` — only while `fence` (the [`WEBHOOK_LEASE`]) is current
    /// ([`JournalError::Fenced`] if not) and the event is not yet delivered. Returns whether it changed it.
    async fn record_delivery(&self, fence: &Fence, id: &str, outcome: Outcome) -> Result<bool, JournalError>;

    /// `client`'s events, newest first, in `state` if given: at most `limit`.
    async fn webhook_events(
        &self,
        client: &str,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<WebhookEvent>, JournalError>;

    /// How many events of clients with a webhook are not yet delivered.
    async fn waiting_events(&self) -> Result<u64, JournalError>;
}
