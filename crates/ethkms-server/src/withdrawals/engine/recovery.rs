//! The engine's start: every key's chain checked against the node's (a key for another chain halts the
//! engine), then the leases are taken — each key is recovered by the replica that takes it
//! ([`leases`](super::leases)) — and wake-ups from other replicas are listened to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use alloy_provider::Provider;

use super::{Engine, Trouble, backoff};

/// The shortest time between two sweeps for wake-ups.
const WAKE_UP_EVERY: Duration = Duration::from_millis(50);

impl Engine {
    /// After a start: checks each key's chain against the node's, retrying until the node answers; then
    /// holds the keys' leases and listens for work stored by other replicas.
    pub(super) async fn recover(self: Arc<Self>) {
        let mut tries = 0;
        loop {
            match self.check_chains().await {
                Ok(()) => break,
                Err(Trouble::Fail(reason) | Trouble::Invalid(reason)) => {
                    tracing::error!(%reason, "the withdrawal engine is halted: nothing is signed");
                    *self.halted.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                    return;
                }
                Err(Trouble::Retry { reason, .. } | Trouble::Skip(reason)) => {
                    self.shared.metrics.retries.inc("recovery");
                    let delay = backoff(tries, Duration::from_millis(200));
                    tries += 1;
                    tracing::warn!(%reason, ?delay, "checking the node's chain; retrying");
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        // `send_replace`, not `send`: `send` stores nothing while no receiver exists yet (the watcher may not
        // have subscribed), and the flag would stay `false` for ever.
        self.recovered.send_replace(true);
        tracing::info!(replica = %self.replica.name, "the node's chain is the keys'; taking leases");
        if let Some(wake_ups) = self.journal.wake_ups() {
            tokio::spawn(Arc::clone(&self).follow_wake_ups(wake_ups));
        }
        self.hold_leases().await;
    }

    /// Sweeps the held keys that other replicas stored work for, as the journal announces it: every wake-up
    /// queued meanwhile is taken in one go and each key swept once, at most every [`WAKE_UP_EVERY`] — a
    /// thousand withdrawals posted at once make a few sweeps, not a thousand.
    async fn follow_wake_ups(self: Arc<Self>, mut wake_ups: tokio::sync::broadcast::Receiver<String>) {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            let mut keys = std::collections::BTreeSet::new();
            match wake_ups.recv().await {
                Ok(key) => {
                    keys.insert(key);
                }
                // Missed some: every key.
                Err(RecvError::Lagged(_)) => keys.extend(self.shared.keys.keys().cloned()),
                Err(RecvError::Closed) => return,
            }
            loop {
                match wake_ups.try_recv() {
                    Ok(key) => {
                        keys.insert(key);
                    }
                    Err(TryRecvError::Lagged(_)) => keys.extend(self.shared.keys.keys().cloned()),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return,
                }
            }
            for key in keys {
                if let Some(fence) = self.ready_fence(&key) {
                    self.sweep_key(&fence).await;
                }
            }
            tokio::time::sleep(WAKE_UP_EVERY).await;
        }
    }

    async fn check_chains(&self) -> Result<(), Trouble> {
        let provider = self.shared.manager.provider();
        let chain = provider.get_chain_id().await.map_err(|error| Trouble::node(format!("eth_chainId: {error}")))?;
        for key in self.shared.keys.values() {
            if key.chain_id != chain {
                return Err(Trouble::Fail(format!(
                    "key `{}` is configured for chain {} but the upstream node is chain {chain}",
                    key.name, key.chain_id
                )));
            }
        }
        Ok(())
    }
}
