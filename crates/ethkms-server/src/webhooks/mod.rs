//! Webhooks: every state change of a client's withdrawals and deposits, posted to the client's URL and
//! signed ([`signature`]).
//!
//! The journal writes each change's event to its outbox in the transaction of the change (see
//! [`crate::journal::webhooks`]): that insert is the only cost on the signing path. The deliverer here runs
//! in the background, on its own HTTP client and tasks, so a slow or dead receiver never delays the engine:
//!
//! - **at least once**: an event is `delivered` only once its receiver answered 2xx; until then it is
//!   tried again, however long it takes (a crash or `kill -9` between the change and the delivery loses
//!   nothing: the event is in the journal);
//! - **in order per subject**: event *n + 1* of a withdrawal (or deposit) is not sent before *n* was
//!   acknowledged; different subjects are sent in parallel, at most `concurrency` at once;
//! - **fair between clients**: each client with a webhook has at most its share of `concurrency` (divided
//!   among them, rounded up) in flight, and each pass asks the outbox client by client, starting with the
//!   next one each time — so a client whose receiver hangs takes its share of the attempts, never another
//!   client's;
//! - **retries** after a failure (a non-2xx answer, a transport error, no answer within `timeout`) wait an
//!   exponential back-off with full jitter: a random time up to `min_backoff × 2^(attempts − 1)`, capped at
//!   `max_backoff`;
//! - **one replica delivers at a time**: the one holding the journal lease [`WEBHOOK_LEASE`], every
//!   attempt's record fenced by it (with SQLite, the one server always holds it).
//!
//! Each request is `POST`ed with `Content-Type: application/json`, the [`signature::SIGNATURE_HEADER`]
//! and the [`signature::EVENT_ID_HEADER`]; its body is the event as JSON (`id`, `type`, `created_ms`, `subject_type`, `subject`, `sequence`,
//! and `data`: the row in the REST API's representation at that change). Delivery state, attempts and
//! the last error are listed by `GET /v1/webhooks/deliveries`; metrics
//! `ethkms_webhook_deliveries_total{outcome}` and `ethkms_webhook_events_waiting`.

pub(crate) mod api;
pub(crate) mod body;
pub mod signature;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;

use crate::config::{ReplicaSettings, WebhookConfig, WebhookSettings};
use crate::journal::{Fence, JournalError, JournalStore, Outcome, WEBHOOK_LEASE, WebhookEvent, WebhookStore};
use crate::shared::Shared;

/// How often, at most, the number of events waiting is read for its metric.
const WAITING_EVERY: Duration = Duration::from_secs(1);

/// The webhook deliverer of the service.
pub(crate) struct Webhooks {
    pub(crate) store: Arc<dyn WebhookStore>,
    /// The same journal, for the lease.
    journal: Arc<dyn JournalStore>,
    endpoints: HashMap<String, WebhookConfig>,
    settings: WebhookSettings,
    shared: Arc<Shared>,
    replica: ReplicaSettings,
    http: reqwest::Client,
    stopping: AtomicBool,
    wake: Notify,
    /// The lease held (and until when it is surely valid); taken by the loop and by `stop`.
    lease: Mutex<Option<(Fence, Instant)>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("clients", &self.endpoints.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Now, in Unix seconds.
fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// A random number (the random bits of a version-4 UUID: the operating system's generator).
fn random() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().1
}

/// The wait before attempt `attempts + 1`, after `attempts` failed: full jitter, a random time up to
/// `min × 2^(attempts − 1)`, at most `max`.
pub(crate) fn backoff(settings: &WebhookSettings, attempts: u32, random: u64) -> Duration {
    let doubled = settings.min_backoff.saturating_mul(1u32 << attempts.saturating_sub(1).min(30));
    let bound = u64::try_from(doubled.min(settings.max_backoff).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % bound.saturating_add(1))
}

/// A transport error without the URL (it may carry credentials), with its causes.
fn transport_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() { "timed out".to_owned() } else { "transport error".to_owned() };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::shared::redact_urls(&text)
}

impl Webhooks {
    /// The deliverer of the clients' webhooks of `endpoints`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub(crate) fn new(
        store: Arc<dyn WebhookStore>,
        journal: Arc<dyn JournalStore>,
        endpoints: HashMap<String, WebhookConfig>,
        settings: WebhookSettings,
        shared: Arc<Shared>,
        replica: ReplicaSettings,
    ) -> Result<Self, JournalError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ethkms-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                JournalError::Refused(format!("the webhooks' HTTP client: {}", transport_error(&error)))
            })?;
        Ok(Self {
            store,
            journal,
            endpoints,
            settings,
            shared,
            replica,
            http,
            stopping: AtomicBool::new(false),
            wake: Notify::new(),
            lease: Mutex::new(None),
            task: std::sync::Mutex::new(None),
        })
    }

    /// Starts delivering in the background.
    pub(crate) fn start(self: &Arc<Self>) {
        let task = tokio::spawn(Arc::clone(self).run());
        *self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
    }

    /// Stops delivering (attempts under way are dropped: tried again later, by whoever delivers) and gives
    /// up the lease, so that another replica delivers at once.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some((fence, _)) = self.lease.lock().await.take()
            && let Err(error) = self.journal.release_lease(&fence, &self.replica.name).await
        {
            tracing::warn!(%error, "releasing the webhook deliverer's lease (it runs out by itself)");
        }
    }

    /// The lease, if this replica delivers now: taken or renewed.
    async fn hold_lease(&self) -> Option<Fence> {
        let mut lease = self.lease.lock().await;
        let ttl = self.replica.lease;
        let asked = Instant::now();
        let valid_until = asked + ttl - ttl / 5;
        match lease.take() {
            Some((fence, until)) => match self.journal.renew_lease(&fence, &self.replica.name, ttl).await {
                Ok(true) => *lease = Some((fence, valid_until)),
                Ok(false) => tracing::info!("webhooks: another replica took the delivery lease"),
                Err(error) if Instant::now() < until => {
                    tracing::warn!(%error, "renewing the webhook deliverer's lease");
                    *lease = Some((fence, until));
                }
                Err(error) => tracing::warn!(%error, "renewing the webhook deliverer's lease: given up"),
            },
            None => match self.journal.acquire_lease(WEBHOOK_LEASE, &self.replica.name, ttl).await {
                Ok(Some(epoch)) => {
                    tracing::info!(epoch, replica = %self.replica.name, "webhooks: delivery lease taken");
                    *lease = Some((Fence { key: WEBHOOK_LEASE.to_owned(), epoch }, valid_until));
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "taking the webhook deliverer's lease"),
            },
        }
        lease.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(fence, _)| fence.clone())
    }

    async fn run(self: Arc<Self>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        // The client and subject each task delivers to, by task: one event of a subject at a time.
        let mut subjects: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        // Attempts in flight per client, each at most `share`; the client asked first turns each pass.
        let clients: Vec<String> = {
            let mut names: Vec<String> = self.endpoints.keys().cloned().collect();
            names.sort();
            names
        };
        let share = self.settings.concurrency.div_ceil(clients.len().max(1)).max(1);
        let mut flying: HashMap<String, usize> = HashMap::new();
        let mut turn = 0;
        let mut renewed = Instant::now() - self.replica.lease;
        let mut fence = None;
        let mut counted = Instant::now() - WAITING_EVERY;
        while !self.stopping.load(Ordering::Relaxed) {
            // The lease is renewed a few times per its time, not at every pass.
            if renewed.elapsed() >= self.replica.lease / 4 || fence.is_none() {
                fence = self.hold_lease().await;
                renewed = Instant::now();
            }
            if let Some(fence) = &fence {
                let mut free = self.settings.concurrency.saturating_sub(tasks.len());
                turn = (turn + 1) % clients.len().max(1);
                for offset in 0..clients.len() {
                    let client = &clients[(turn + offset) % clients.len()];
                    let in_flight = flying.get(client).copied().unwrap_or(0);
                    let room = share.saturating_sub(in_flight).min(free);
                    if room == 0 {
                        continue;
                    }
                    // Its subjects in flight may be among its due events (skipped below): ask for as many more.
                    match self.store.due_events(client, room + in_flight).await {
                        Ok(events) => {
                            let events: Vec<WebhookEvent> = events
                                .into_iter()
                                .filter(|event| !busy.contains(&subject_of(event)))
                                .take(room)
                                .collect();
                            for event in events {
                                let subject = subject_of(&event);
                                let handle = tasks.spawn(Arc::clone(&self).deliver(fence.clone(), event));
                                subjects.insert(handle.id(), (client.clone(), subject.clone()));
                                busy.insert(subject);
                                *flying.entry(client.clone()).or_default() += 1;
                                free -= 1;
                            }
                        }
                        Err(error) => tracing::warn!(%error, client, "webhooks: reading the outbox"),
                    }
                }
                if counted.elapsed() >= WAITING_EVERY {
                    counted = Instant::now();
                    match self.store.waiting_events().await {
                        Ok(waiting) => {
                            self.shared.metrics.webhook_events_waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
                        }
                        Err(error) => tracing::debug!(%error, "webhooks: counting the events waiting"),
                    }
                }
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match &done { Ok((id, ())) => *id, Err(error) => error.id() };
                    if let Some((client, subject)) = subjects.remove(&id) {
                        busy.remove(&subject);
                        if let Some(count) = flying.get_mut(&client) {
                            *count = count.saturating_sub(1);
                        }
                    }
                    // Its subject's next event may be due now: no wait.
                }
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = self.wake.notified() => {}
            }
        }
        tasks.abort_all();
    }

    /// One attempt of `event`, recorded under `fence`.
    async fn deliver(self: Arc<Self>, fence: Fence, event: WebhookEvent) {
        let Some(endpoint) = self.endpoints.get(&event.client) else { return };
        let keys = &self.shared.keys;
        let outcome = match body::render(&event, &|key| keys.get(key).map(crate::shared::Key::address)) {
            Ok(body) => self.post(endpoint, &event, body).await,
            Err(error) => Err(format!("the event cannot be sent: {error}")),
        };
        let outcome = match outcome {
            Ok(()) => {
                self.shared.metrics.webhook_deliveries.inc("delivered");
                tracing::debug!(event = %event.id, kind = %event.event_type, client = %event.client, "webhook delivered");
                Outcome::Delivered
            }
            Err(error) => {
                self.shared.metrics.webhook_deliveries.inc("failed");
                let retry_in = backoff(&self.settings, event.attempts.saturating_add(1), random());
                tracing::info!(event = %event.id, kind = %event.event_type, client = %event.client,
                    attempts = event.attempts + 1, %error, retry_in_ms = retry_in.as_millis(), "webhook not delivered");
                Outcome::Failed { error, retry_in }
            }
        };
        match self.store.record_delivery(&fence, &event.id, outcome).await {
            Ok(_) => {}
            Err(JournalError::Fenced { .. }) => {
                tracing::info!(event = %event.id, "webhooks: the lease moved on; the new holder sends it again");
            }
            Err(error) => {
                tracing::warn!(event = %event.id, %error, "webhooks: recording an attempt (it is tried again)");
            }
        }
    }

    /// Posts `body`, signed now: `Ok` on a 2xx answer, else why not (no URL in it).
    async fn post(&self, endpoint: &WebhookConfig, event: &WebhookEvent, body: Vec<u8>) -> Result<(), String> {
        let signed = signature::header(&endpoint.secret, unix_seconds(), &body);
        let response = self
            .http
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::SIGNATURE_HEADER, signed)
            .header(signature::EVENT_ID_HEADER, &event.id)
            .body(body)
            .send()
            .await
            .map_err(|error| transport_error(&error))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("HTTP {}", status.as_u16())) }
    }
}

/// The subject `event` is of, as one string.
fn subject_of(event: &WebhookEvent) -> String {
    format!("{}/{}", event.subject_type, event.subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_full_jitter() {
        let settings = WebhookSettings {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..WebhookSettings::default()
        };
        let bound = |attempts| (0..2000).map(|_| backoff(&settings, attempts, random())).max().unwrap_or_default();
        for (attempts, limit) in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (40, 60), (u32::MAX, 60)] {
            let largest = bound(attempts);
            assert!(largest <= Duration::from_secs(limit), "attempt {attempts}: {largest:?}");
            assert!(
                largest > Duration::from_secs(limit) / 2,
                "attempt {attempts}: random up to the bound, {largest:?}"
            );
        }
        assert_eq!(backoff(&settings, 3, 0), Duration::ZERO, "full jitter reaches down to zero");
        assert_eq!(backoff(&settings, 3, 1234), Duration::from_millis(1234));
    }
}
