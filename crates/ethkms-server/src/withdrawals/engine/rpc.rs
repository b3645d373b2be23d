//! Transactions of RPC clients (`eth_sendTransaction`, `eth_signTransaction`): stored after the daily-limit
//! check, then signed here if this replica holds the key — or by the key's owner, while this replica
//! waits for the outcome in the journal, so that a client may call any replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_rpc_types_eth::TransactionRequest;
use serde_json::json;

use super::{Engine, FailureKind, Processed, RPC_DEADLINE, RpcFailure};
use crate::journal::{Attempt, LimitCheck, NewRpc, Status};
use crate::policy::Denial;
use crate::shared::Key;

/// How often a replica waiting for another to sign looks at the journal.
const LOOK_EVERY: Duration = Duration::from_millis(50);

impl Engine {
    /// Stores the RPC transaction `request` of `client` for `key` (refused by `check` if it breaks a daily
    /// limit) and has it signed: its first signed transaction, or why not.
    pub(crate) async fn transact(
        self: &Arc<Self>,
        client: &str,
        method: &str,
        key: &Key,
        request: &TransactionRequest,
        check: LimitCheck,
    ) -> Result<Result<Attempt, Denial>, RpcFailure> {
        let id = format!("tx-{}", uuid::Uuid::new_v4());
        // Taken before it is stored, so that no sweep of this replica starts a second task for it.
        let _processing = self.processing_guard(&id);
        let new = NewRpc {
            id,
            client: client.to_owned(),
            key: key.name.clone(),
            recipient: request.to.and_then(|to| to.to().copied()).unwrap_or_default(),
            amount: request.value.unwrap_or_default(),
            request: json!({ "method": method, "transaction": request }).to_string(),
        };
        let id = new.id.clone();
        let inserted = match self.journal.insert_rpc(new, check).await {
            Ok(inserted) => inserted,
            Err(error) => {
                // The row may be stored all the same (an answer lost at commit): abandoned before the client is
                // told that nothing was signed, so that no owner signs it later.
                let reason = "the journal failed while storing it; nothing was signed";
                let abandoned = match self.journal.abandon(&id, reason).await {
                    Ok(true) => Ok(()),
                    // Not stored, or claimed already by the key's owner: which one?
                    Ok(false) => match self.journal.get(&id).await {
                        Ok(None) => Ok(()),
                        Ok(Some(row)) if row.status == Status::Failed => Ok(()),
                        Ok(Some(row)) => Err(format!("it was stored and is {}", row.status)),
                        Err(again) => Err(again.to_string()),
                    },
                    Err(again) => Err(again.to_string()),
                };
                let outcome = match abandoned {
                    Ok(()) => format!("{error}; nothing was signed"),
                    Err(again) => format!(
                        "{error}; storing it may have succeeded ({again}): look up transaction `{id}` before sending \
                         it again"
                    ),
                };
                return Err(RpcFailure { kind: FailureKind::Unavailable, reason: outcome });
            }
        };
        let mut row = match inserted {
            Ok(row) => row,
            Err(denial) => return Ok(Err(denial)),
        };
        if self.ready_fence(&row.key).is_some() {
            return match self.process_now(&mut row).await? {
                Processed::Sent { attempt } => Ok(Ok(attempt)),
                Processed::Failed(reason) => Err(RpcFailure { kind: FailureKind::Server, reason }),
            };
        }
        self.await_owner(&row.id).await.map(Ok)
    }

    /// Waits for the key's owner (another replica) to sign row `id`. Past [`RPC_DEADLINE`], the row is
    /// abandoned if nobody has claimed it yet — then nothing is signed — or waited for a while longer.
    async fn await_owner(&self, id: &str) -> Result<Attempt, RpcFailure> {
        let started = Instant::now();
        let mut abandoned = false;
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            match self.journal.get(id).await {
                Ok(Some(row)) => {
                    if let Some(first) = row.attempts.first() {
                        return Ok(first.clone());
                    }
                    if matches!(row.status, Status::Failed | Status::Cancelled) {
                        let reason = row.error.unwrap_or_else(|| format!("it was {}", row.status));
                        return Err(RpcFailure { kind: FailureKind::Server, reason });
                    }
                }
                Ok(None) => {
                    return Err(RpcFailure {
                        kind: FailureKind::Server,
                        reason: format!("transaction `{id}` vanished"),
                    });
                }
                Err(error) => tracing::debug!(transaction = id, %error, "waiting for the key's owner"),
            }
            if started.elapsed() < RPC_DEADLINE {
                continue;
            }
            if !abandoned {
                let reason = "no replica holding the key signed it in time; nothing was signed";
                match self.journal.abandon(id, reason).await {
                    Ok(true) => {
                        self.shared.metrics.withdrawals.inc("failed");
                        return Err(RpcFailure {
                            kind: FailureKind::Unavailable,
                            reason: format!("{reason} (waited {:?}; the key's owner may be down)", started.elapsed()),
                        });
                    }
                    // Claimed meanwhile: its transaction is on its way.
                    Ok(false) => abandoned = true,
                    Err(error) => tracing::warn!(transaction = id, %error, "giving up on the key's owner"),
                }
            } else if started.elapsed() > 2 * RPC_DEADLINE {
                return Err(RpcFailure {
                    kind: FailureKind::Unavailable,
                    reason: format!(
                        "transaction `{id}` was claimed by the key's owner but is not signed after {:?}; it may still \
                         be: do not send it again before checking the key's nonce",
                        started.elapsed()
                    ),
                });
            }
        }
    }
}
