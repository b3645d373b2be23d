//! The [`Engine`]: claims a row, signs its transaction, stores it, broadcasts it, and hands it to the
//! [watcher](super::watcher); recovers the journal after a start. See the [module](super) for the
//! invariant this keeps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction as _, TxEnvelope, TypedTransaction};
use alloy_eips::eip2718::Encodable2718;
use ethkms::eth::SignerError;
use ethkms::eth::chain::Fees;
use serde_json::{Value, json};

use super::broadcast::{self, outcome_name};
use super::rejections::BroadcastOutcome;
use super::settlement::{self, AfterBroadcast};
use crate::config::{ReplicaSettings, WithdrawalSettings};
use crate::journal::{Attempt, Claim, Fence, JournalError, JournalStore, Kind, Release, Status, Withdrawal, now_ms};
use crate::shared::{Key, Shared, WorkCounter, transaction_fields};

mod leases;
mod recovery;
mod rpc;
mod share;
mod state;
mod transaction;

pub(crate) use state::{FailureKind, Foreign, HeldLease, InFlight, KeyState, Processed, RpcFailure, Trouble};

use transaction::rpc_request;
pub(crate) use transaction::withdrawal_request;

/// How long fee estimates are reused.
const FEES_FOR: Duration = Duration::from_secs(1);

/// The longest wait between two tries of something passing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long an RPC client waits for its transaction to be signed through passing trouble before it is
/// answered with an error (the transaction is then not signed, and its nonce given back).
pub(crate) const RPC_DEADLINE: Duration = Duration::from_secs(30);

/// The withdrawal engine. Shared by the REST routes, the JSON-RPC methods and its own background tasks.
pub(crate) struct Engine {
    pub(crate) shared: Arc<Shared>,
    pub(crate) journal: Arc<dyn JournalStore>,
    pub(crate) settings: WithdrawalSettings,
    /// This replica's name and lease time.
    pub(crate) replica: ReplicaSettings,
    pub(crate) key_states: BTreeMap<String, KeyState>,
    /// Rows with a stored transaction, not yet final, by id.
    pub(crate) in_flight: Mutex<HashMap<String, InFlight>>,
    /// Cancellations asked for rows not yet followed by the watcher.
    cancel_requests: Mutex<HashSet<String>>,
    /// Rows a task is processing now (claim to broadcast), by id.
    processing: Mutex<HashSet<String>>,
    fee_cache: Mutex<Option<(Instant, Fees)>>,
    /// Permits to be between taking a nonce and the first broadcast ([`WithdrawalSettings::signing_concurrency`]).
    signing: tokio::sync::Semaphore,
    /// Rows being signed and sent, which shutdown waits for.
    pub(crate) work: WorkCounter,
    pub(crate) stopping: AtomicBool,
    /// Held by each pass of the lease loop, and by `stop` while it releases the leases: no pass renews or
    /// takes a lease after they are released.
    pub(crate) lease_pass: tokio::sync::Mutex<()>,
    /// `true` once the journal has been recovered after the start.
    recovered: tokio::sync::watch::Sender<bool>,
    /// Why the engine refuses to work (a key configured for another chain than the node's).
    halted: Mutex<Option<String>>,
}

/// See [`Engine::processing_guard`].
pub(crate) struct ProcessingGuard<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for ProcessingGuard<'_> {
    fn drop(&mut self) {
        self.engine.processing.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("journal", &self.journal)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A wait of `base × 2^attempt`, at most [`MAX_BACKOFF`], with ±25% jitter so that many rows retrying
/// together do not stampede.
pub(crate) fn backoff(attempt: u32, base: Duration) -> Duration {
    let delay = base.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(MAX_BACKOFF);
    let random = std::collections::hash_map::RandomState::new().hash_one((attempt, Instant::now()));
    let quarter = delay / 4;
    let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX).max(1);
    delay - quarter + Duration::from_nanos(random % (2 * nanos))
}

fn retryable(error: &SignerError) -> bool {
    matches!(error, SignerError::Backend(backend) if backend.is_retryable())
}

impl Engine {
    pub(crate) fn new(
        shared: Arc<Shared>,
        journal: Arc<dyn JournalStore>,
        settings: WithdrawalSettings,
        replica: ReplicaSettings,
    ) -> Arc<Self> {
        let key_states = shared.keys.keys().map(|name| (name.clone(), KeyState::default())).collect();
        for name in shared.keys.keys() {
            shared.metrics.lease_held(name, false);
        }
        Arc::new(Self {
            shared,
            journal,
            settings,
            replica,
            key_states,
            in_flight: Mutex::new(HashMap::new()),
            cancel_requests: Mutex::new(HashSet::new()),
            processing: Mutex::new(HashSet::new()),
            fee_cache: Mutex::new(None),
            signing: tokio::sync::Semaphore::new(settings.signing_concurrency),
            work: WorkCounter::default(),
            stopping: AtomicBool::new(false),
            lease_pass: tokio::sync::Mutex::new(()),
            recovered: tokio::sync::watch::Sender::new(false),
            halted: Mutex::new(None),
        })
    }

    /// Starts recovery and the watcher in the background.
    pub(crate) fn start(self: &Arc<Self>) {
        let recovering = Arc::clone(self);
        tokio::spawn(async move { recovering.recover().await });
        tokio::spawn(Arc::clone(self).watch());
    }

    /// Whether recovery is done.
    pub(crate) fn is_recovered(&self) -> bool {
        *self.recovered.borrow()
    }

    /// Why the engine refuses to work, if it does.
    pub(crate) fn halted(&self) -> Option<String> {
        self.halted.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) async fn wait_recovered(&self) {
        let _ = self.recovered.subscribe().wait_for(|done| *done).await;
    }

    pub(crate) fn state(&self, key: &str) -> Option<&KeyState> {
        self.key_states.get(key)
    }

    /// A client withdrawal `row` was stored: processed now if this replica holds its key and has recovered
    /// it; otherwise the key's owner takes it (woken by the journal, or at its next sweep), or this replica
    /// once it has recovered the key.
    pub(crate) fn submit(self: &Arc<Self>, row: Withdrawal) {
        if self.halted().is_none() && self.ready_fence(&row.key).is_some() {
            self.spawn_processing(row);
        }
    }

    /// Withdrawals taken by a task and not yet signed or given up: what a new one would wait behind.
    pub(crate) fn backlog(&self) -> usize {
        self.processing.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Runs `row` (accepted; or signing with its nonce and no transaction) in the background until it is
    /// sent or fails; passing trouble is retried while this replica holds the key.
    pub(crate) fn spawn_processing(self: &Arc<Self>, mut row: Withdrawal) {
        if !self.processing.lock().unwrap_or_else(PoisonError::into_inner).insert(row.id.clone()) {
            return; // a task has it already
        }
        let engine = Arc::clone(self);
        let guard = self.work.start();
        tokio::spawn(async move {
            let mut tries = 0;
            loop {
                match engine.process(&mut row).await {
                    Ok(_) => break,
                    Err(Trouble::Fail(reason) | Trouble::Invalid(reason)) => {
                        if let Some(fence) = engine.fence(&row.key) {
                            engine.fail_unpaid(&fence, &row, &reason).await;
                        }
                        break;
                    }
                    Err(Trouble::Skip(reason)) => {
                        tracing::debug!(withdrawal = %row.id, %reason, "not processed here");
                        break;
                    }
                    Err(Trouble::Retry { cause, reason }) => {
                        engine.shared.metrics.retries.inc(cause);
                        if engine.stopping.load(Ordering::Relaxed) || engine.fence(&row.key).is_none() {
                            tracing::info!(withdrawal = %row.id, %reason, "left for the key's next owner");
                            break;
                        }
                        let delay = backoff(tries, Duration::from_millis(200));
                        tries += 1;
                        tracing::warn!(withdrawal = %row.id, key = %row.key, nonce = ?row.nonce, cause, %reason, ?delay, "retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            engine.processing.lock().unwrap_or_else(PoisonError::into_inner).remove(&row.id);
            drop(guard);
        });
    }

    /// Processes an RPC transaction `row` now, for a client waiting for the answer: passing trouble is
    /// retried until [`RPC_DEADLINE`], then the row fails (nothing was broadcast) and the error is returned.
    pub(crate) async fn process_now(&self, row: &mut Withdrawal) -> Result<Processed, RpcFailure> {
        let _guard = self.work.start();
        let started = Instant::now();
        let mut tries = 0;
        loop {
            let (kind, reason) = match self.process(row).await {
                Ok(processed) => return Ok(processed),
                Err(Trouble::Invalid(reason)) => (FailureKind::Client, reason),
                Err(Trouble::Fail(reason) | Trouble::Skip(reason)) => (FailureKind::Server, reason),
                Err(Trouble::Retry { cause, reason }) => {
                    self.shared.metrics.retries.inc(cause);
                    if started.elapsed() < RPC_DEADLINE && !self.stopping.load(Ordering::Relaxed) {
                        tokio::time::sleep(backoff(tries, Duration::from_millis(100))).await;
                        tries += 1;
                        continue;
                    }
                    let kind = if cause == "kms_throttled" { FailureKind::Throttled } else { FailureKind::Unavailable };
                    (kind, format!("{reason} (gave up after {:?}; nothing was signed)", started.elapsed()))
                }
            };
            if let Some(fence) = self.fence(&row.key) {
                self.fail_unpaid(&fence, row, &reason).await;
            }
            return Err(RpcFailure { kind, reason });
        }
    }

    /// Claims `row` if it is not yet (taking a nonce), signs its transaction, stores and broadcasts it.
    async fn process(&self, row: &mut Withdrawal) -> Result<Processed, Trouble> {
        let key = self
            .shared
            .keys
            .get(&row.key)
            .ok_or_else(|| Trouble::Fail(format!("no key named `{}` in the configuration", row.key)))?;
        let state = self.state(&row.key).ok_or_else(|| Trouble::Fail(format!("no key named `{}`", row.key)))?;
        let fence = self.fence(&row.key).ok_or_else(|| Trouble::Skip("this replica does not hold the key".into()))?;
        let _processing = state.in_process.start();
        let waiting = state.waiting.start();
        let started = Instant::now();
        tracing::debug!(withdrawal = %row.id, status = %row.status, "processing");
        let request = self.request_for(key, row)?;
        let gas = self.gas(row, &request).await?;
        let market = self.current_fees().await?;
        let fees = Self::fees_for(key, row, &request, market, gas, &self.shared)?;
        let nonce = match row.nonce {
            Some(nonce) => nonce,
            None => {
                let pending = self.pending_count(key, state).await?;
                let wanted = if row.kind == Kind::Rpc { rpc_request(row)?.1.nonce } else { None };
                let claimed = self.journal.claim(&fence, &row.id, pending, wanted).await;
                match claimed.map_err(|error| self.trouble(&fence, &error))? {
                    Claim::Claimed { nonce, nonces } => {
                        *state.nonces.lock().unwrap_or_else(PoisonError::into_inner) = nonces;
                        row.nonce = Some(nonce);
                        row.status = Status::Signing;
                        nonce
                    }
                    Claim::NotAccepted => {
                        // Claimed by an earlier try of this very task whose answer was lost (a PostgreSQL
                        // connection that broke at commit)? Only this replica processes the key and only one task
                        // here a row, so a `signing` row without a transaction is ours to go on with.
                        match self.journal.get(&row.id).await.map_err(|error| self.trouble(&fence, &error))? {
                            Some(stored)
                                if stored.status == Status::Signing
                                    && stored.attempts.is_empty()
                                    && stored.nonce.is_some() =>
                            {
                                let nonce = stored.nonce.unwrap_or_default();
                                tracing::info!(withdrawal = %row.id, nonce, "claimed by an earlier try; going on");
                                row.nonce = Some(nonce);
                                row.status = Status::Signing;
                                nonce
                            }
                            _ => return Err(Trouble::Skip("claimed by another task, or no longer accepted".into())),
                        }
                    }
                    Claim::NotNext { next } => {
                        let wanted = wanted.unwrap_or_default();
                        return Err(Trouble::Invalid(format!(
                            "nonce {wanted}: the service allocates this key's nonces and the next is {next}; leave \
                             `nonce` out"
                        )));
                    }
                }
            }
        };
        drop(waiting);
        let claimed = started.elapsed();
        // Only so many signatures at once, in the order their nonces were taken (the semaphore is first come,
        // first served): a low nonce is not left behind a queue inside the key service.
        let permit = self.signing.acquire().await.map_err(|_| Trouble::Skip("the engine is stopping".into()))?;
        let mut request = fees.apply(request.nonce(nonce).gas_limit(gas));
        request.chain_id = Some(key.chain_id);
        let unsigned = request
            .build_typed_tx()
            .map_err(|request| Trouble::Fail(format!("cannot build a transaction from {request:?}")))?;
        let attempt = self.sign_and_store(&fence, key, row, unsigned, fees, false, Some(permit)).await?;
        row.attempts.push(attempt.clone());
        row.status = Status::Signed;
        row.tx_hash = Some(attempt.tx_hash);
        if row.kind == Kind::GapFill {
            self.shared.metrics.gaps_filled.inc();
        }
        let stored = started.elapsed();
        if !self.holds(&fence) {
            // Stored under a lease that has run out since: the key's next owner broadcasts it.
            tracing::warn!(withdrawal = %row.id, key = %row.key, nonce, "the lease ran out before broadcasting; left to the key's next owner");
            return Ok(Processed::Sent { attempt });
        }
        let outcome = broadcast::send(self.shared.manager.provider(), &attempt.raw).await;
        self.shared.metrics.broadcasts.inc(outcome_name(outcome));
        tracing::debug!(
            withdrawal = %row.id, nonce, claimed_ms = claimed.as_millis(), signed_and_stored_ms = stored.as_millis(),
            sent_ms = started.elapsed().as_millis(), outcome = outcome_name(outcome), "sent"
        );
        // This is the first broadcast of the row's only transaction: it was stored just now, and a row
        // recovered after a crash without a transaction had none broadcast.
        match settlement::after_broadcast(outcome, row.attempts.len() == 1) {
            AfterBroadcast::Submitted => {
                if let Err(error) = self.journal.mark_submitted(&fence, &row.id).await {
                    tracing::warn!(withdrawal = %row.id, %error, "marking submitted (the watcher retries)");
                }
                row.status = Status::Submitted;
                self.track(row.clone(), true, Some(fees));
            }
            AfterBroadcast::FailUnpaid => {
                // Definitely refused: never in any pool, so the nonce is free and nothing was paid.
                let refusal = match outcome {
                    BroadcastOutcome::Refused(refusal) => refusal.to_string(),
                    other => outcome_name(other).to_owned(),
                };
                let reason = format!("the node refused the transaction: {refusal}");
                self.fail_unpaid(&fence, row, &reason).await;
                return Ok(Processed::Failed(reason));
            }
            AfterBroadcast::Keep => {
                tracing::warn!(
                    withdrawal = %row.id, key = %row.key, nonce, outcome = outcome_name(outcome),
                    "broadcast not confirmed by the node; the nonce is kept and the transaction broadcast again"
                );
                self.track(row.clone(), false, None);
            }
        }
        Ok(Processed::Sent { attempt })
    }

    /// Signs `unsigned` (a transaction of `row`, with its nonce) with KMS, writes the audit record and stores
    /// the transaction in the journal; returns it. Nothing is broadcast here. A signing `permit` is given back
    /// as soon as KMS has answered.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn sign_and_store(
        &self,
        fence: &Fence,
        key: &Key,
        row: &Withdrawal,
        unsigned: TypedTransaction,
        fees: Fees,
        cancel: bool,
        permit: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<Attempt, Trouble> {
        let nonce = row.nonce.ok_or_else(|| Trouble::Skip("no nonce".into()))?;
        let started = Instant::now();
        let signed = key.signer.sign_digest(&unsigned.signature_hash()).await;
        // The next nonce may be taken now: what follows is quick.
        drop(permit);
        let signature = signed.map_err(|error| {
            self.shared.count_kms_error(&error);
            if matches!(error, SignerError::Backend(ethkms::backend::BackendError::Throttled { .. })) {
                Trouble::Retry { cause: "kms_throttled", reason: error.to_string() }
            } else if retryable(&error) {
                Trouble::Retry { cause: "kms", reason: error.to_string() }
            } else {
                Trouble::Fail(format!("signing failed: {error}"))
            }
        })?;
        let signed = started.elapsed();
        self.shared.metrics.signing_seconds.observe(signed.as_secs_f64());
        let envelope: TxEnvelope = unsigned.into_envelope(signature);
        let rpc_method = if row.kind == Kind::Rpc { rpc_request(row).ok().map(|(method, _)| method) } else { None };
        let method = match (row.kind, cancel) {
            (_, true) => "cancel",
            (Kind::GapFill, false) => "gap_fill",
            (Kind::Rpc, false) => rpc_method.as_deref().unwrap_or("rpc"),
            (Kind::Withdrawal, false) => "withdrawals",
            (Kind::Sweep, false) => "sweep",
        };
        let mut record = json!({
            "kind": "signature", "method": method, "client": row.client, "key": key.name,
            "address": key.address(), "withdrawal": row.id, "idempotency_key": row.idempotency_key,
            "tx_hash": envelope.tx_hash(), "recipient": row.recipient, "asset": row.asset.to_string(),
            "amount": row.amount.to_string(), "epoch": fence.epoch,
        });
        if let (Some(record), Value::Object(fields)) = (record.as_object_mut(), transaction_fields(&envelope)) {
            record.extend(fields);
        }
        self.shared
            .audit(record)
            .await
            .map_err(|error| Trouble::Retry { cause: "audit", reason: error.to_string() })?;
        let audited = started.elapsed();
        self.shared.metrics.signatures.inc(method);
        let (max_fee_per_gas, priority_fee_per_gas) = fees.max_and_priority();
        let attempt = Attempt {
            tx_hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            max_fee_per_gas,
            priority_fee_per_gas,
            signed_ms: now_ms(),
            cancel,
        };
        self.journal.add_attempt(fence, &row.id, nonce, attempt.clone()).await.map_err(|error| {
            if matches!(error, JournalError::Refused(_) | JournalError::Fenced { .. }) {
                tracing::error!(withdrawal = %row.id, nonce, %error, "the journal refused a transaction; it is not broadcast");
            }
            self.trouble(fence, &error)
        })?;
        tracing::trace!(
            withdrawal = %row.id, nonce, sign_ms = signed.as_millis(), audit_ms = (audited - signed).as_millis(),
            store_ms = (started.elapsed() - audited).as_millis(), "signed and stored"
        );
        Ok(attempt)
    }

    /// Marks `row` failed, unpaid: nothing of it was ever broadcast (or its one broadcast was definitely
    /// refused), so its nonce is given back and its amount returned to the daily limit. The nonce is given
    /// back only once the journal has the failure.
    pub(crate) async fn fail_unpaid(&self, fence: &Fence, row: &Withdrawal, reason: &str) {
        let mut tries = 0;
        let nonces = loop {
            match self.journal.mark_failed(fence, &row.id, reason, Release::UNPAID).await {
                Ok((_, nonces)) => break nonces,
                Err(error @ JournalError::Fenced { .. }) => {
                    self.fenced(fence);
                    tracing::warn!(withdrawal = %row.id, %error, "not marked failed here; the key's new owner decides");
                    return;
                }
                Err(error) if tries < 5 && !matches!(error, JournalError::Closed) => {
                    self.shared.metrics.retries.inc("journal");
                    tokio::time::sleep(backoff(tries, Duration::from_millis(100))).await;
                    tries += 1;
                }
                Err(error) => {
                    tracing::error!(withdrawal = %row.id, %error, "cannot mark failed; its nonce stays taken until a restart");
                    return;
                }
            }
        };
        if let Some(state) = self.state(&row.key) {
            *state.nonces.lock().unwrap_or_else(PoisonError::into_inner) = nonces;
        }
        self.untrack(&row.id);
        self.shared.metrics.withdrawals.inc("failed");
        if row.kind == Kind::GapFill
            && let Some(state) = self.state(&row.key)
        {
            self.shared.metrics.gap_fill_failures.inc();
            let mut gap = state.gap_backoff.lock().unwrap_or_else(PoisonError::into_inner);
            let delay = (gap.1 * 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
            *gap = (Some(Instant::now() + delay), delay);
            tracing::error!(key = %row.key, nonce = ?row.nonce, %reason, ?delay, "a gap fill failed; the next waits");
        } else {
            tracing::warn!(withdrawal = %row.id, key = %row.key, nonce = ?row.nonce, %reason, "failed, unpaid");
        }
    }

    /// Starts following `row` (its transaction is stored).
    pub(crate) fn track(&self, mut row: Withdrawal, submitted: bool, accepted_fees: Option<Fees>) {
        if self.cancel_requests.lock().unwrap_or_else(PoisonError::into_inner).remove(&row.id) {
            row.cancel_requested = true;
        }
        let id = row.id.clone();
        let entry = InFlight {
            row,
            submitted,
            accepted_fees,
            next_broadcast: Instant::now() + self.settings.poll_interval,
            broadcast_delay: self.settings.poll_interval,
            misses: 0,
            foreign: None,
            cap_reported: false,
            lost_sent_ms: None,
        };
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(id, entry);
    }

    pub(crate) fn untrack(&self, id: &str) {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    /// A client's cancellation of `id` was stored as requested: the watcher signs the cancellation.
    pub(crate) fn cancel_requested(&self, id: &str) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        match in_flight.get_mut(id) {
            Some(entry) => entry.row.cancel_requested = true,
            None => {
                self.cancel_requests.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned());
            }
        }
    }

    /// Stops background work: waits up to `timeout` for rows being signed and sent (what is left resumes at
    /// the next start) and closes the journal.
    pub(crate) async fn stop(&self, timeout: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        if !self.work.idle(timeout).await {
            tracing::warn!(
                in_progress = self.work.count(),
                "withdrawals still in progress; they resume at the next start"
            );
        }
        // Handed over at once rather than when they run out: another replica takes the keys now. A pass of
        // the lease loop under way ends first, and none starts after (it sees `stopping`).
        let _pass = self.lease_pass.lock().await;
        for key in self.shared.keys.keys() {
            let lease = self.state(key).and_then(|state| *state.lease.lock().unwrap_or_else(PoisonError::into_inner));
            if let Some(lease) = lease {
                let fence = Fence { key: key.clone(), epoch: lease.epoch };
                if let Err(error) = self.journal.release_lease(&fence, &self.replica.name).await {
                    tracing::warn!(key, %error, "releasing the lease (it runs out by itself)");
                }
            }
        }
        if let Err(error) = self.journal.announce(&self.replica.name, Duration::ZERO).await {
            tracing::warn!(%error, "withdrawing this replica's announcement (it runs out by itself)");
        }
        self.journal.close();
    }

    /// Marks `id` as taken by a task until the guard is dropped, so that no sweep starts a second one.
    pub(crate) fn processing_guard(&self, id: &str) -> ProcessingGuard<'_> {
        self.processing.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned());
        ProcessingGuard { engine: self, id: id.to_owned() }
    }
}
