//! Recovery after a start: the chain of every key checked against the node's, nonces set from the node
//! and the journal, stored transactions followed (and broadcast) again, rows without one processed.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use alloy_provider::Provider;
use ethkms::eth::chain::{self};

use crate::journal::{Kind, Status, Withdrawal};
use crate::nonces::Nonces;

use super::{Engine, Trouble, backoff};

impl Engine {
    /// After a start: checks each key's chain against the node's, sets each key's nonces from the node and
    /// the journal, follows stored transactions again and processes rows that had none. Retries until the
    /// node and the journal answer; a key for another chain halts the engine.
    pub(super) async fn recover(self: Arc<Self>) {
        let mut tries = 0;
        let spawned = loop {
            match self.try_recover().await {
                Ok(spawned) => break spawned,
                Err(Trouble::Fail(reason) | Trouble::Invalid(reason)) => {
                    tracing::error!(%reason, "the withdrawal engine is halted: nothing is signed");
                    *self.halted.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                    return;
                }
                Err(Trouble::Retry { reason, .. } | Trouble::Skip(reason)) => {
                    self.shared.metrics.retries.inc("recovery");
                    let delay = backoff(tries, Duration::from_millis(200));
                    tries += 1;
                    tracing::warn!(%reason, ?delay, "recovering the journal; retrying");
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        };
        // `send_replace`, not `send`: `send` stores nothing while no receiver exists yet (the watcher may not
        // have subscribed), and the flag would stay `false` for ever.
        self.recovered.send_replace(true);
        tracing::info!(resumed = spawned, "withdrawal journal recovered");
        // Withdrawals posted while recovery ran were stored but not processed: take them now.
        let mut tries = 0;
        loop {
            match self.sweep_accepted().await {
                Ok(_) => break,
                Err(error) => {
                    let delay = backoff(tries, Duration::from_millis(200));
                    tries += 1;
                    tracing::warn!(%error, ?delay, "sweeping withdrawals posted during recovery; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_recover(self: &Arc<Self>) -> Result<usize, Trouble> {
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
        let rows = self.journal.unfinished().await.map_err(|error| Trouble::journal(&error))?;
        let mut held: HashMap<&str, BTreeSet<u64>> = HashMap::new();
        let mut unanswered = Vec::new();
        for row in &rows {
            if row.kind == Kind::Rpc && row.attempts.is_empty() {
                // The client was never answered (and may have tried again): it is not signed now.
                unanswered.push(row.clone());
                continue;
            }
            if let Some(nonce) = row.nonce {
                held.entry(row.key.as_str()).or_default().insert(nonce);
            }
        }
        for key in self.shared.keys.values() {
            let pending = chain::nonce(provider, key.address())
                .await
                .map_err(|error| Trouble::node(format!("the nonce of `{}`: {error}", key.name)))?;
            let nonces = held.get(key.name.as_str()).cloned().unwrap_or_default();
            if let Some(state) = self.state(&key.name) {
                let mut recovered = Nonces::default();
                recovered.recover(pending, &nonces);
                *state.nonces.lock().unwrap_or_else(PoisonError::into_inner) = recovered;
            }
        }
        for row in unanswered {
            self.fail_unpaid(
                &Withdrawal { nonce: None, ..row },
                "the service restarted before signing it; the client was not answered",
            )
            .await;
        }
        let mut spawned = 0;
        for row in rows {
            if row.kind == Kind::Rpc && row.attempts.is_empty() {
                continue;
            }
            if !row.attempts.is_empty() {
                // Broadcast again as they are by the watcher (or confirmed, if mined).
                self.track(row, false, None);
            } else if matches!(row.status, Status::Accepted | Status::Signing) {
                spawned += 1;
                self.spawn_processing(row);
            }
        }
        Ok(spawned)
    }
}
