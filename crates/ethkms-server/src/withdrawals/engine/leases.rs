//! Leases: which keys this replica processes. Each key's rows are processed by the one replica holding
//! its lease in the journal; the holder renews it every third of the lease time, and any replica takes a
//! lease that has run out (its epoch one higher). Every journal write of the engine carries the epoch it
//! holds ([`Fence`]) and is refused once another replica holds the key, so a replica that lost a key
//! while paused or cut off stores — and so broadcasts — nothing new for it.
//!
//! On taking a key, the replica recovers it: unanswered RPC rows fail, the nonces are set from the node
//! and the journal, stored transactions are followed (and broadcast again), accepted rows are processed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ethkms::eth::chain;

use super::share::{PASSES_BEFORE_TAKING, Share};
use super::{Engine, HeldLease, Trouble, backoff};
use crate::journal::{Fence, Kind, Release, Status};

impl Engine {
    /// The fence of `key`'s lease while this replica surely holds it.
    pub(crate) fn fence(&self, key: &str) -> Option<Fence> {
        let lease = (*self.state(key)?.lease.lock().unwrap_or_else(PoisonError::into_inner))?;
        (Instant::now() < lease.valid_until).then(|| Fence { key: key.to_owned(), epoch: lease.epoch })
    }

    /// The fence of `key`'s lease once its rows are recovered: new rows are processed at once.
    pub(crate) fn ready_fence(&self, key: &str) -> Option<Fence> {
        let lease = (*self.state(key)?.lease.lock().unwrap_or_else(PoisonError::into_inner))?;
        (lease.recovered && Instant::now() < lease.valid_until)
            .then(|| Fence { key: key.to_owned(), epoch: lease.epoch })
    }

    /// Whether `fence` is still this replica's lease (asked before anything is broadcast).
    pub(crate) fn holds(&self, fence: &Fence) -> bool {
        self.fence(&fence.key).as_ref() == Some(fence)
    }

    /// The journal refused a write of `fence`: another replica holds the key now.
    pub(crate) fn fenced(&self, fence: &Fence) {
        self.shared.metrics.fenced_writes.inc();
        self.lose(fence, "a journal write was refused: another replica holds the key");
    }

    /// Stops processing `fence`'s key here: what is followed is forgotten (its new holder follows it).
    pub(crate) fn lose(&self, fence: &Fence, why: &str) {
        if !self.drop_lease(fence) {
            return;
        }
        self.shared.metrics.lease_losses.inc();
        tracing::warn!(key = %fence.key, epoch = fence.epoch, replica = %self.replica.name, why, "lease lost");
    }

    /// Forgets the lease of `fence` here and what is followed of its key; `false` if it was not held.
    fn drop_lease(&self, fence: &Fence) -> bool {
        let Some(state) = self.state(&fence.key) else { return false };
        {
            let mut lease = state.lease.lock().unwrap_or_else(PoisonError::into_inner);
            if lease.is_none_or(|held| held.epoch != fence.epoch) {
                return false;
            }
            *lease = None;
        }
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, entry| entry.row.key != fence.key);
        self.shared.metrics.lease_held(&fence.key, false);
        true
    }

    /// Runs until the service stops: announces this replica, renews the leases it holds, takes those of
    /// keys nobody holds and hands one over when it holds more than its share ([`super::share`]).
    pub(crate) async fn hold_leases(self: Arc<Self>) {
        let every = (self.replica.lease / 3).max(Duration::from_millis(100));
        // Passes each free key has waited (this replica not holding the fewest keys).
        let mut waited: HashMap<String, u32> = HashMap::new();
        loop {
            {
                let _pass = self.lease_pass.lock().await;
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                let share = self.share().await;
                for key in self.shared.keys.keys() {
                    self.keep_lease(key, share, &mut waited).await;
                }
                if share.hand_over {
                    self.hand_over(&mut waited).await;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Announces this replica and decides what it does at this pass.
    async fn share(&self) -> Share {
        if let Err(error) = self.journal.announce(&self.replica.name, self.replica.lease).await {
            tracing::warn!(%error, "announcing this replica");
        }
        match self.journal.replicas().await {
            Ok(replicas) => Share::decide(&self.replica.name, self.held_leases().len(), &replicas),
            Err(error) => {
                tracing::warn!(%error, "listing the replicas");
                Share::ALONE
            }
        }
    }

    /// The fences of the leases this replica holds.
    fn held_leases(&self) -> Vec<Fence> {
        self.shared.keys.keys().filter_map(|key| self.fence(key)).collect()
    }

    /// Gives up the held key with the fewest rows in flight: processing stops here, and the lease ends
    /// now so that a replica with fewer keys takes it (and recovers it, as after a takeover).
    async fn hand_over(&self, waited: &mut HashMap<String, u32>) {
        let held = self.held_leases();
        let fence = {
            let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            let busy = |fence: &Fence| in_flight.values().filter(|entry| entry.row.key == fence.key).count();
            held.into_iter().min_by_key(busy)
        };
        let Some(fence) = fence else { return };
        if !self.drop_lease(&fence) {
            return;
        }
        waited.insert(fence.key.clone(), 0);
        self.shared.metrics.lease_handovers.inc();
        tracing::info!(key = %fence.key, epoch = fence.epoch, replica = %self.replica.name, "lease handed over");
        if let Err(error) = self.journal.release_lease(&fence, &self.replica.name).await {
            tracing::warn!(key = %fence.key, %error, "releasing a handed-over lease (it runs out by itself)");
        }
    }

    async fn keep_lease(self: &Arc<Self>, key: &str, share: Share, waited: &mut HashMap<String, u32>) {
        let Some(state) = self.state(key) else { return };
        let ttl = self.replica.lease;
        let held = *state.lease.lock().unwrap_or_else(PoisonError::into_inner);
        // Measured from before the request: the journal's expiry is later than this.
        let asked = Instant::now();
        let valid_until = asked + ttl - ttl / 5;
        match held {
            Some(lease) => {
                waited.remove(key);
                let fence = Fence { key: key.to_owned(), epoch: lease.epoch };
                match self.journal.renew_lease(&fence, &self.replica.name, ttl).await {
                    Ok(true) => {
                        let mut current = state.lease.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(current) = current.as_mut().filter(|current| current.epoch == lease.epoch) {
                            current.valid_until = valid_until;
                        }
                    }
                    Ok(false) => self.lose(&fence, "another replica took the lease"),
                    Err(error) => {
                        tracing::warn!(key, %error, "renewing the lease");
                        if Instant::now() >= lease.valid_until {
                            self.lose(&fence, "the lease ran out while the journal did not answer");
                        }
                    }
                }
            }
            None => {
                if !share.fewest {
                    let passes = waited.entry(key.to_owned()).or_default();
                    *passes += 1;
                    if *passes < PASSES_BEFORE_TAKING {
                        return;
                    }
                }
                waited.remove(key);
                match self.journal.acquire_lease(key, &self.replica.name, ttl).await {
                    Ok(Some(epoch)) => {
                        *state.lease.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(HeldLease { epoch, valid_until, recovered: false });
                        self.shared.metrics.lease_acquisitions.inc();
                        self.shared.metrics.lease_held(key, true);
                        tracing::info!(key, epoch, replica = %self.replica.name, "lease taken");
                        let fence = Fence { key: key.to_owned(), epoch };
                        tokio::spawn(Arc::clone(self).recover_key(fence));
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(key, %error, "taking the lease"),
                }
            }
        }
    }

    /// Recovers `fence`'s key after taking it, retrying while the lease is held; then processes what waits.
    async fn recover_key(self: Arc<Self>, fence: Fence) {
        let mut tries = 0;
        while self.holds(&fence) && !self.stopping.load(Ordering::Relaxed) {
            match self.try_recover_key(&fence).await {
                Ok(resumed) => {
                    if let Some(state) = self.state(&fence.key) {
                        let mut lease = state.lease.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(lease) = lease.as_mut().filter(|lease| lease.epoch == fence.epoch) {
                            lease.recovered = true;
                        }
                    }
                    tracing::info!(key = %fence.key, epoch = fence.epoch, resumed, "key recovered");
                    // Rows posted while it was recovered.
                    self.sweep_key(&fence).await;
                    return;
                }
                Err(
                    Trouble::Retry { reason, .. }
                    | Trouble::Skip(reason)
                    | Trouble::Fail(reason)
                    | Trouble::Invalid(reason),
                ) => {
                    self.shared.metrics.retries.inc("recovery");
                    let delay = backoff(tries, Duration::from_millis(200));
                    tries += 1;
                    tracing::warn!(key = %fence.key, %reason, ?delay, "recovering the key; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_recover_key(self: &Arc<Self>, fence: &Fence) -> Result<usize, Trouble> {
        let key = self.shared.keys.get(&fence.key).ok_or_else(|| Trouble::Fail(format!("no key `{}`", fence.key)))?;
        let rows = self.journal.unfinished(Some(&fence.key)).await.map_err(|error| self.trouble(fence, &error))?;
        for row in rows.iter().filter(|row| row.kind == Kind::Rpc && row.attempts.is_empty()) {
            // Its client was never answered by us (and may have tried again): it is not signed now. A
            // client waiting on another replica is told it failed.
            let reason =
                "the key's owner changed before it was signed; the client was not answered; nothing was signed";
            let release = Release { spends: true, nonce: false };
            self.journal
                .mark_failed(fence, &row.id, reason, release)
                .await
                .map_err(|error| self.trouble(fence, &error))?;
            self.shared.metrics.withdrawals.inc("failed");
        }
        let pending = chain::nonce(self.shared.manager.provider(), key.address())
            .await
            .map_err(|error| Trouble::node(format!("the nonce of `{}`: {error}", key.name)))?;
        let nonces = self.journal.recover_nonces(fence, pending).await.map_err(|error| self.trouble(fence, &error))?;
        if let Some(state) = self.state(&fence.key) {
            *state.nonces.lock().unwrap_or_else(PoisonError::into_inner) = nonces;
        }
        let mut resumed = 0;
        for row in rows {
            if row.kind == Kind::Rpc && row.attempts.is_empty() {
                continue;
            }
            if !row.attempts.is_empty() {
                // Broadcast again as they are by the watcher (or confirmed, if mined).
                self.track(row, false, None);
            } else if matches!(row.status, Status::Accepted | Status::Signing) {
                resumed += 1;
                self.spawn_processing(row);
            }
        }
        Ok(resumed)
    }

    /// A journal error as [`Trouble`]; a fenced write also gives the key up here.
    pub(crate) fn trouble(&self, fence: &Fence, error: &crate::journal::JournalError) -> Trouble {
        if matches!(error, crate::journal::JournalError::Fenced { .. }) {
            self.fenced(fence);
        }
        Trouble::journal(error)
    }

    /// Processes `fence`'s accepted rows that no task has (posted on any replica), and takes in the
    /// cancellations asked for its rows.
    pub(crate) async fn sweep_key(self: &Arc<Self>, fence: &Fence) -> usize {
        let mut spawned = 0;
        match self.journal.accepted(&fence.key).await {
            Ok(ids) => {
                let unknown: Vec<String> = {
                    let processing = self.processing.lock().unwrap_or_else(PoisonError::into_inner);
                    ids.into_iter().filter(|id| !processing.contains(id)).collect()
                };
                if !unknown.is_empty() && self.holds(fence) {
                    match self.journal.get_many(&unknown).await {
                        Ok(mut rows) => {
                            rows.sort_by_key(|row| row.created_ms);
                            for row in rows.into_iter().filter(|row| row.status == Status::Accepted) {
                                spawned += 1;
                                self.spawn_processing(row);
                            }
                        }
                        Err(error) => tracing::warn!(key = %fence.key, %error, "loading accepted rows"),
                    }
                }
            }
            Err(error) => tracing::warn!(key = %fence.key, %error, "looking for accepted rows"),
        }
        match self.journal.cancellations(&fence.key).await {
            Ok(ids) => {
                for id in ids {
                    self.cancel_requested(&id);
                }
            }
            Err(error) => tracing::warn!(key = %fence.key, %error, "looking for cancellations"),
        }
        spawned
    }
}
