//! The watcher: every poll interval, for each key with rows in flight, reads the key's mined transaction
//! count and the chain head, and
//!
//! - settles each row whose nonce is mined: one of its own transactions has a receipt (→ `mined`, or
//!   `cancelled` if it was the cancellation, or `failed` if it reverted), or — after a few rounds without one
//!   — the transaction at that nonce is found by a binary search over blocks: someone else's, once it has the
//!   key's confirmations, fails the row with the proof (`ethkms_nonce_taken_by_foreign_transaction_total`);
//! - confirms mined rows once they are `confirmations` deep (the receipt's block hash checked again), and
//!   takes a row whose transaction a reorg dropped back to `submitted`, broadcasting its bytes again as they
//!   are (`ethkms_reorgs_total`);
//! - broadcasts again a transaction the node has not confirmed having, with back-off;
//! - re-signs, with bumped fees ([`fees::bump`](super::fees::bump)), a transaction unmined for
//!   `rebroadcast_after` that holds the key's next nonce or pays less than the market; signs a requested
//!   cancellation;
//! - sends again, and then replaces, the key's next transaction when the node has [lost](lost) it;
//! - fills a nonce left free below those in use (a zero-value transfer to the key itself), with back-off
//!   after a refused one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use alloy_consensus::Transaction as _;
use alloy_eips::BlockNumberOrTag;
use alloy_provider::Provider;
use ethkms::eth::chain::Fees;

use super::broadcast::{self, outcome_name};
use super::engine::{Engine, Foreign, InFlight};
use super::fees::{self, Bump};
use super::rejections::BroadcastOutcome;
use super::settlement::{self, NonceSettled};
use crate::journal::{Fence, Kind, MinedAs, Release, Status, now_ms};
use crate::shared::{Key, redact_urls};

mod action;
mod holes;
mod lost;

use action::{Action, action};

/// Watcher rounds without a receipt for a mined nonce before the transaction at that nonce is looked up.
const MISSES_BEFORE_LOOKUP: u32 = 3;

/// How often each held key's accepted rows that no task has (posted on another replica, when no wake-up
/// came) and its requested cancellations are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Watcher rounds without any answer before an unresolved row is reported.
const MISSES_BEFORE_WARNING: u32 = 20;

impl Engine {
    /// Runs until the service stops.
    pub(crate) async fn watch(self: Arc<Self>) {
        self.wait_recovered().await;
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            ticker.tick().await;
            let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
            if sweep {
                last_sweep = Instant::now();
            }
            for key in self.shared.keys.values() {
                let Some(fence) = self.ready_fence(&key.name) else { continue };
                if sweep {
                    let found = self.sweep_key(&fence).await;
                    if found > 0 {
                        tracing::debug!(key = %key.name, found, "accepted rows picked up by the sweep");
                    }
                }
                if let Err(reason) = self.watch_key(key, &fence).await {
                    self.shared.metrics.retries.inc("node");
                    tracing::warn!(key = %key.name, %reason, "watching the key's transactions; next round retries");
                }
            }
        }
    }

    /// Applies `change` to the followed entry `id`, if it is still followed.
    fn update(&self, id: &str, change: impl FnOnce(&mut InFlight)) {
        if let Some(entry) = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).get_mut(id) {
            change(entry);
        }
    }

    async fn watch_key(self: &Arc<Self>, key: &Key, fence: &Fence) -> Result<(), String> {
        let Some(state) = self.state(&key.name) else { return Ok(()) };
        let followed =
            self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).values().any(|e| e.row.key == key.name);
        let has_gaps = !state.nonces.lock().unwrap_or_else(PoisonError::into_inner).gaps().is_empty();
        if !followed && !has_gaps {
            return Ok(());
        }
        let provider = self.shared.manager.provider();
        let address = key.address();
        let mined_count = provider
            .get_transaction_count(address)
            .latest()
            .await
            .map_err(|error| redact_urls(&format!("nonce: {error}")))?;
        let head = provider.get_block_number().await.map_err(|error| redact_urls(&format!("block number: {error}")))?;
        let now = now_ms();
        let rebroadcast_after = u64::try_from(self.settings.rebroadcast_after.as_millis()).unwrap_or(u64::MAX);
        let unmined_long = |entry: &InFlight| {
            entry.row.attempts.last().is_some_and(|last| now.saturating_sub(last.signed_ms) >= rebroadcast_after)
        };
        // First pass, nothing copied: whether the market's fees are needed, and the lowest nonce held.
        let (needs_market, lowest_held) = {
            let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            let unmined = || {
                in_flight.values().filter(|entry| {
                    entry.row.key == key.name
                        && entry.row.block_number.is_none()
                        && entry.row.nonce.is_some_and(|nonce| nonce >= mined_count)
                })
            };
            let needs_market = unmined().any(|entry| unmined_long(entry) || entry.row.cancel_requested);
            (needs_market, unmined().filter_map(|entry| entry.row.nonce).min())
        };
        let market = if needs_market { self.current_fees().await.ok() } else { None };
        // Second pass: only the rows that need something this round are copied out (most wait quietly).
        let confirmations = key.confirmations;
        let mut actionable: Vec<(InFlight, Action)> = {
            let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            in_flight
                .values()
                .filter(|entry| entry.row.key == key.name)
                .filter_map(|entry| {
                    let long = unmined_long(entry);
                    action(entry, mined_count, head, confirmations, market, long).map(|action| (entry.clone(), action))
                })
                .collect()
        };
        if let Some((entry, action)) = self.lost_head(key, mined_count, now).await
            && !actionable.iter().any(|(followed, _)| followed.row.id == entry.row.id)
        {
            actionable.push((entry, action));
        }
        let mut work = Vec::new();
        for (entry, action) in actionable {
            let (engine, fence) = (Arc::clone(self), fence.clone());
            work.push(tokio::spawn(async move {
                let Some(key) = engine.shared.keys.get(&entry.row.key) else { return };
                let fence = &fence;
                match action {
                    Action::Reorged => engine.reorged(fence, &entry).await,
                    Action::Confirm => engine.confirm(fence, key, &entry).await,
                    Action::Settle => engine.settle(fence, key, entry, head).await,
                    // The nonce is free again (a reorg): whatever was found there is no proof any more.
                    Action::ForgetForeign => engine.update(&entry.row.id, |followed| followed.foreign = None),
                    Action::Replace { cancel } => engine.replace(fence, key, &entry, market, cancel).await,
                    Action::Rebroadcast => engine.rebroadcast(fence, &entry).await,
                }
            }));
        }
        for task in work {
            let _ = task.await;
        }
        self.release_holes(fence, key, lowest_held, mined_count).await?;
        self.fill_gaps(fence, key, mined_count).await;
        Ok(())
    }

    /// Broadcasts the latest transaction of `entry` again; backs off while the node does not take it.
    async fn rebroadcast(&self, fence: &Fence, entry: &InFlight) {
        let Some(last) = entry.row.attempts.last() else { return };
        if !self.holds(fence) {
            return;
        }
        let outcome = broadcast::send(self.shared.manager.provider(), &last.raw).await;
        self.shared.metrics.broadcasts.inc(outcome_name(outcome));
        self.after_broadcast(fence, &entry.row.id, outcome, None).await;
    }

    async fn after_broadcast(&self, fence: &Fence, id: &str, outcome: BroadcastOutcome, fees: Option<Fees>) {
        let accepted = outcome == BroadcastOutcome::Accepted;
        let poll = self.settings.poll_interval;
        self.update(id, |entry| {
            entry.submitted = accepted;
            if accepted {
                if fees.is_some() {
                    entry.accepted_fees = fees;
                }
                entry.broadcast_delay = poll;
            } else {
                entry.broadcast_delay = (entry.broadcast_delay * 2).min(Duration::from_secs(30));
            }
            entry.next_broadcast = Instant::now() + entry.broadcast_delay;
        });
        if accepted {
            if let Err(error) = self.journal.mark_submitted(fence, id).await {
                self.trouble(fence, &error);
                tracing::warn!(withdrawal = %id, %error, "marking submitted");
            }
        } else {
            tracing::debug!(withdrawal = %id, outcome = outcome_name(outcome), "broadcast again, not taken yet");
        }
    }

    /// Signs a replacement for `entry`'s latest transaction — with bumped fees, or (`cancel`) a cancellation
    /// — and broadcasts it; at a fee cap, broadcasts the stored one again.
    async fn replace(&self, fence: &Fence, key: &Key, entry: &InFlight, market: Option<Fees>, cancel: bool) {
        let Some(last) = entry.row.attempts.last() else { return };
        let envelope = match broadcast::decode(&last.raw) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(withdrawal = %entry.row.id, %reason, "cannot replace");
                return;
            }
        };
        // Never compounding from a transaction the node refused: from the newest it accepted, else the first.
        let base = entry.accepted_fees.unwrap_or_else(|| {
            entry
                .row
                .attempts
                .first()
                .and_then(|first| broadcast::decode(&first.raw).ok())
                .map_or_else(|| broadcast::fees_of(&envelope), |first| broadcast::fees_of(&first))
        });
        let gas = if cancel { 21_000 } else { envelope.gas_limit() };
        let fees = match fees::bump(base, market, gas, &key.fee_caps) {
            Bump::To(fees) => fees,
            Bump::AtCap => {
                if !entry.cap_reported {
                    self.shared.metrics.fee_cap_reached.inc();
                    tracing::warn!(
                        withdrawal = %entry.row.id, key = %key.name, nonce = ?entry.row.nonce, ?base,
                        "fees are at the key's cap: the transaction is broadcast again as it is, not re-signed"
                    );
                    self.update(&entry.row.id, |entry| entry.cap_reported = true);
                }
                if Instant::now() >= entry.next_broadcast {
                    self.rebroadcast(fence, entry).await;
                }
                return;
            }
        };
        // A replacement already signed with these fees is broadcast again rather than signed twice.
        let (max_fee, priority) = fees.max_and_priority();
        if let Some(existing) = entry.row.attempts.iter().rev().find(|attempt| {
            attempt.cancel == cancel && attempt.max_fee_per_gas == max_fee && attempt.priority_fee_per_gas == priority
        }) {
            if !self.holds(fence) {
                return;
            }
            let outcome = broadcast::send(self.shared.manager.provider(), &existing.raw).await;
            self.shared.metrics.broadcasts.inc(outcome_name(outcome));
            self.after_broadcast(fence, &entry.row.id, outcome, Some(fees)).await;
            return;
        }
        let unsigned = if cancel {
            Ok(broadcast::cancellation(&envelope, key.address(), fees))
        } else {
            broadcast::with_fees(envelope, fees)
        };
        let unsigned = match unsigned {
            Ok(unsigned) => unsigned,
            Err(reason) => {
                tracing::error!(withdrawal = %entry.row.id, %reason, "cannot replace");
                return;
            }
        };
        let attempt = match self.sign_and_store(fence, key, &entry.row, unsigned, fees, cancel, None).await {
            Ok(attempt) => attempt,
            Err(trouble) => {
                tracing::warn!(withdrawal = %entry.row.id, ?trouble, "re-signing; the next round tries again");
                return;
            }
        };
        self.shared.metrics.rebroadcasts.inc();
        tracing::info!(
            withdrawal = %entry.row.id, key = %key.name, nonce = ?entry.row.nonce, cancel, ?fees,
            tx_hash = %attempt.tx_hash, "signed a replacement"
        );
        self.update(&entry.row.id, |entry| {
            entry.row.tx_hash = Some(attempt.tx_hash);
            entry.row.attempts.push(attempt.clone());
            entry.lost_sent_ms = None;
        });
        if !self.holds(fence) {
            return; // stored: the key's next owner broadcasts it
        }
        let outcome = broadcast::send(self.shared.manager.provider(), &attempt.raw).await;
        self.shared.metrics.broadcasts.inc(outcome_name(outcome));
        self.after_broadcast(fence, &entry.row.id, outcome, Some(fees)).await;
    }

    /// The nonce of `entry` is mined: finds which transaction took it.
    async fn settle(&self, fence: &Fence, key: &Key, entry: InFlight, head: u64) {
        let provider = self.shared.manager.provider();
        for attempt in entry.row.attempts.iter().rev() {
            match provider.get_transaction_receipt(attempt.tx_hash).await {
                Ok(Some(receipt)) => {
                    let (Some(block), Some(block_hash)) = (receipt.block_number, receipt.block_hash) else { return };
                    let outcome = match (attempt.cancel, receipt.status()) {
                        (true, _) => MinedAs::Cancelled,
                        (false, true) => MinedAs::Paid,
                        (false, false) => MinedAs::Reverted,
                    };
                    // Final at once (one write) when no more confirmations are needed and it paid.
                    let final_now = settlement::is_final(block, head, key.confirmations) && outcome == MinedAs::Paid;
                    if let Err(error) = self
                        .journal
                        .mark_mined(fence, &entry.row.id, attempt.tx_hash, block, block_hash, outcome, final_now)
                        .await
                    {
                        self.trouble(fence, &error);
                        tracing::warn!(withdrawal = %entry.row.id, %error, "recording the receipt; next round retries");
                        return;
                    }
                    let status = match outcome {
                        MinedAs::Paid => Status::Mined,
                        MinedAs::Reverted => Status::Failed,
                        MinedAs::Cancelled => Status::Cancelled,
                    };
                    self.shared.metrics.withdrawals.inc(status.as_str());
                    tracing::debug!(withdrawal = %entry.row.id, key = %key.name, nonce = ?entry.row.nonce, block, tx_hash = %attempt.tx_hash, %status, "mined");
                    if entry.row.kind == Kind::GapFill
                        && let Some(state) = self.state(&key.name)
                    {
                        *state.gap_backoff.lock().unwrap_or_else(PoisonError::into_inner) = (None, Duration::ZERO);
                    }
                    if final_now {
                        self.untrack(&entry.row.id);
                        self.shared.metrics.withdrawals.inc("confirmed");
                        return;
                    }
                    if outcome == MinedAs::Reverted {
                        // Final: the journal has it failed; no value moved.
                        self.untrack(&entry.row.id);
                        return;
                    }
                    let mut mined = entry.clone();
                    mined.row.status = status;
                    mined.row.block_number = Some(block);
                    mined.row.block_hash = Some(block_hash);
                    mined.row.tx_hash = Some(attempt.tx_hash);
                    self.update(&entry.row.id, |followed| *followed = mined.clone());
                    if settlement::is_final(block, head, key.confirmations) {
                        self.confirm(fence, key, &mined).await;
                    }
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(withdrawal = %entry.row.id, error = %redact_urls(&error.to_string()), "reading a receipt; next round retries");
                    return;
                }
            }
        }
        // None of its transactions has a receipt: the node may answer the count before the receipt, or
        // another transaction took the nonce. Never signed again with another nonce — one of its own could
        // still turn up — until that other transaction is found and confirmed.
        let misses = entry.misses + 1;
        self.update(&entry.row.id, |followed| followed.misses = misses);
        let Some(nonce) = entry.row.nonce else { return };
        let foreign = match entry.foreign {
            Some(foreign) => Some(foreign),
            None if misses >= MISSES_BEFORE_LOOKUP => self.transaction_at(key, nonce, head).await,
            None => None,
        };
        if let Some(mut foreign) = foreign {
            if entry.row.attempts.iter().any(|attempt| attempt.tx_hash == foreign.tx_hash) {
                return; // ours after all: its receipt will follow
            }
            // Never trusted from memory: a reorg may have taken it away (and another transaction may now be
            // at the nonce, less deep), so its receipt is read again every round.
            match provider.get_transaction_receipt(foreign.tx_hash).await {
                Ok(Some(receipt)) if receipt.block_number.is_some() => {
                    foreign.block = receipt.block_number.unwrap_or(foreign.block);
                }
                Ok(_) => {
                    self.update(&entry.row.id, |followed| followed.foreign = None);
                    return;
                }
                Err(error) => {
                    tracing::warn!(withdrawal = %entry.row.id, error = %redact_urls(&error.to_string()), "reading a receipt; next round retries");
                    return;
                }
            }
            self.update(&entry.row.id, |followed| followed.foreign = Some(foreign));
            if settlement::settle(false, Some(foreign.block), head, key.confirmations) == NonceSettled::TakenFinal {
                let reason = format!(
                    "nonce {nonce} was used by transaction {} in block {}, which this service did not sign; this \
                     withdrawal was not paid",
                    foreign.tx_hash, foreign.block
                );
                // Its value never left, but the nonce is used: only the amounts are given back.
                let release = Release { spends: true, nonce: false };
                match self.journal.mark_failed(fence, &entry.row.id, &reason, release).await {
                    Ok(_) => {
                        self.untrack(&entry.row.id);
                        self.shared.metrics.nonce_taken.inc();
                        self.shared.metrics.withdrawals.inc("failed");
                        tracing::error!(
                            withdrawal = %entry.row.id, key = %key.name, nonce, foreign_tx = %foreign.tx_hash,
                            block = foreign.block, "ALERT: another transaction took this withdrawal's nonce; failed, unpaid"
                        );
                    }
                    Err(error) => {
                        self.trouble(fence, &error);
                        tracing::warn!(withdrawal = %entry.row.id, %error, "recording the failure");
                    }
                }
            }
        } else if misses == MISSES_BEFORE_WARNING {
            self.shared.metrics.unresolved.inc();
            tracing::warn!(
                withdrawal = %entry.row.id, key = %key.name, nonce, transactions = entry.row.attempts.len(),
                "the nonce is mined but none of its transactions has a receipt and the transaction at the nonce \
                 was not found; it stays open until one is"
            );
        }
    }

    /// The transaction of `key` with `nonce` mined at or below `head`: the first block whose count passes
    /// `nonce`, found by binary search, then searched.
    async fn transaction_at(&self, key: &Key, nonce: u64, head: u64) -> Option<Foreign> {
        let provider = self.shared.manager.provider();
        let address = key.address();
        let (mut low, mut high) = (0, head);
        while low < high {
            let middle = low + (high - low) / 2;
            let count = provider.get_transaction_count(address).number(middle).await.ok()?;
            if count > nonce {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        let block = provider.get_block_by_number(BlockNumberOrTag::Number(low)).full().await.ok()??;
        block.transactions.txns().find_map(|tx| {
            (tx.inner.signer() == address && tx.nonce() == nonce)
                .then(|| Foreign { tx_hash: *tx.inner.tx_hash(), block: low })
        })
    }

    /// `entry` is mined and deep enough: confirmed if its receipt is still in the same block; moved if a
    /// reorg put it in another; taken back to `submitted` if it is gone.
    async fn confirm(&self, fence: &Fence, key: &Key, entry: &InFlight) {
        let Some(tx_hash) = entry.row.tx_hash else { return };
        let receipt = match self.shared.manager.provider().get_transaction_receipt(tx_hash).await {
            Ok(receipt) => receipt,
            Err(error) => {
                tracing::warn!(withdrawal = %entry.row.id, error = %redact_urls(&error.to_string()), "reading a receipt; next round retries");
                return;
            }
        };
        match receipt {
            Some(receipt) if receipt.block_hash == entry.row.block_hash => {
                if let Err(error) = self.journal.mark_confirmed(fence, &entry.row.id).await {
                    self.trouble(fence, &error);
                    tracing::warn!(withdrawal = %entry.row.id, %error, "recording the confirmation; next round retries");
                    return;
                }
                self.untrack(&entry.row.id);
                if entry.row.status == Status::Mined {
                    self.shared.metrics.withdrawals.inc("confirmed");
                }
                tracing::debug!(withdrawal = %entry.row.id, key = %key.name, %tx_hash, confirmations = key.confirmations, "final");
            }
            Some(receipt) => {
                let (Some(block), Some(block_hash)) = (receipt.block_number, receipt.block_hash) else { return };
                let outcome = if entry.row.status == Status::Cancelled { MinedAs::Cancelled } else { MinedAs::Paid };
                if self
                    .journal
                    .mark_mined(fence, &entry.row.id, tx_hash, block, block_hash, outcome, false)
                    .await
                    .is_ok()
                {
                    self.shared.metrics.reorgs.inc();
                    tracing::warn!(withdrawal = %entry.row.id, block, "a reorg moved the transaction to another block");
                    self.update(&entry.row.id, |followed| {
                        followed.row.block_number = Some(block);
                        followed.row.block_hash = Some(block_hash);
                    });
                }
            }
            None => self.reorged(fence, entry).await,
        }
    }

    /// A reorg dropped `entry`'s mined transaction: back to `submitted`, and its bytes broadcast again as
    /// they are.
    async fn reorged(&self, fence: &Fence, entry: &InFlight) {
        if let Err(error) = self.journal.mark_unmined(fence, &entry.row.id).await {
            self.trouble(fence, &error);
            tracing::warn!(withdrawal = %entry.row.id, %error, "recording a reorg; next round retries");
            return;
        }
        self.shared.metrics.reorgs.inc();
        tracing::warn!(withdrawal = %entry.row.id, tx_hash = ?entry.row.tx_hash, "a reorg dropped the mined transaction; broadcasting it again");
        let mined = entry.row.tx_hash;
        self.update(&entry.row.id, |followed| {
            followed.row.status = Status::Submitted;
            followed.row.block_number = None;
            followed.row.block_hash = None;
            followed.submitted = false;
            followed.misses = 0;
            followed.foreign = None;
        });
        let raw =
            entry.row.attempts.iter().find(|attempt| Some(attempt.tx_hash) == mined).map(|attempt| attempt.raw.clone());
        if let Some(raw) = raw
            && self.holds(fence)
        {
            let outcome = broadcast::send(self.shared.manager.provider(), &raw).await;
            self.shared.metrics.broadcasts.inc(outcome_name(outcome));
            self.after_broadcast(fence, &entry.row.id, outcome, None).await;
        }
    }

    /// Fills each free nonce below those in use with a zero-value transfer to the key itself, unless a row
    /// of this key is about to take it, or a refused gap fill asks to wait. The journal takes the nonce in
    /// the same transaction as it stores the fill.
    async fn fill_gaps(self: &Arc<Self>, fence: &Fence, key: &Key, mined_count: u64) {
        let Some(state) = self.state(&key.name) else { return };
        if state.gap_backoff.lock().unwrap_or_else(PoisonError::into_inner).0.is_some_and(|at| Instant::now() < at) {
            return;
        }
        if state.waiting.count() > 0 {
            return;
        }
        let gaps: Vec<u64> = state
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gaps()
            .into_iter()
            .filter(|nonce| *nonce >= mined_count)
            .collect();
        for nonce in gaps {
            match self.journal.insert_gap_fill(fence, nonce, key.address()).await {
                Ok(Some(fill)) => {
                    state.nonces.lock().unwrap_or_else(PoisonError::into_inner).take(nonce);
                    tracing::info!(key = %key.name, nonce, id = %fill.id, "filling a nonce gap");
                    self.spawn_processing(fill);
                }
                Ok(None) => {
                    // Taken meanwhile: the mirror was behind.
                    state.nonces.lock().unwrap_or_else(PoisonError::into_inner).take(nonce);
                }
                Err(error) => {
                    self.trouble(fence, &error);
                    tracing::warn!(key = %key.name, nonce, %error, "storing a gap fill; next round retries");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
