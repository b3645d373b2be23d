//! State shared by the HTTP routes, the JSON-RPC methods and the withdrawal engine, so that none of them
//! imports another: the opened keys, the Ethereum node, the policy engine, the audit log and the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alloy_primitives::Address;
use alloy_signer::Signer as _;
use ethkms::WalletManager;
use ethkms::audit::AuditWriter;
use ethkms::backend::BackendError;
use ethkms::eth::{KmsSigner, SignerError};
use serde_json::Value;

use crate::config::FeeCaps;
use crate::journal::LimitCheck;
use crate::metrics::Metrics;
use crate::policy::{PolicyEngine, SignRequest, totals};

/// One configured key, opened.
pub(crate) struct Key {
    /// Its name in the configuration.
    pub(crate) name: String,
    pub(crate) signer: KmsSigner,
    pub(crate) chain_id: u64,
    /// Fee caps for every transaction it signs.
    pub(crate) fee_caps: FeeCaps,
    /// Blocks (the including one counted) before a mined transaction is final.
    pub(crate) confirmations: u64,
}

impl Key {
    pub(crate) fn address(&self) -> Address {
        self.signer.address()
    }
}

/// The audit log could not take a record: nothing was released.
#[derive(Debug, thiserror::Error)]
#[error("audit log: {0}; nothing was released")]
pub(crate) struct AuditFailure(pub(crate) String);

/// What the routes and the engine share.
pub(crate) struct Shared {
    pub(crate) manager: WalletManager,
    pub(crate) keys: BTreeMap<String, Key>,
    pub(crate) by_address: BTreeMap<Address, String>,
    pub(crate) policy: Mutex<PolicyEngine>,
    audit: AuditWriter,
    pub(crate) metrics: Metrics,
    /// This replica's name, on every audit record (each replica keeps its own hash chain).
    replica: String,
}

impl Shared {
    pub(crate) fn new(
        manager: WalletManager,
        keys: BTreeMap<String, Key>,
        policy: PolicyEngine,
        audit: AuditWriter,
        replica: String,
    ) -> Self {
        let by_address = keys.values().map(|key| (key.address(), key.name.clone())).collect();
        Self { manager, keys, by_address, policy: Mutex::new(policy), audit, metrics: Metrics::default(), replica }
    }

    /// Appends `event` to the audit log and returns once it is flushed to disk (group commit: one flush
    /// for every record queued meanwhile). Every record names the replica; inside a request, it carries its
    /// `request_id`.
    pub(crate) async fn audit(&self, mut event: Value) -> Result<(), AuditFailure> {
        if let Some(record) = event.as_object_mut() {
            record.entry("replica").or_insert_with(|| Value::String(self.replica.clone()));
            if let Ok(id) = REQUEST_ID.try_with(Clone::clone) {
                record.insert("request_id".into(), id);
            }
        }
        self.audit.append(event).await.map(|_| ()).map_err(|error| AuditFailure(error.to_string()))
    }

    /// Counts a key-service error by kind (`ethkms_kms_errors_total`); other errors are not counted.
    pub(crate) fn count_kms_error(&self, error: &SignerError) {
        let kind = match &error {
            SignerError::Backend(BackendError::Throttled { .. }) => "throttled",
            SignerError::Backend(BackendError::Timeout { .. } | BackendError::Transport { .. }) => "transport",
            SignerError::Backend(BackendError::InvalidSignature { .. }) => "invalid_signature",
            SignerError::Backend(_) => "other",
            _ => return,
        };
        self.metrics.kms_errors.inc(kind);
    }
}

/// The daily-limit check of `request`, for the journal to run under its lock with what the key moved in
/// the last 24 hours (on every replica).
pub(crate) fn limit_check(shared: &Arc<Shared>, request: SignRequest) -> LimitCheck {
    let assets = shared.policy.lock().unwrap_or_else(PoisonError::into_inner).limited_assets(&request.key);
    let shared = Arc::clone(shared);
    LimitCheck {
        assets,
        check: Box::new(move |spent| {
            let policy = shared.policy.lock().unwrap_or_else(PoisonError::into_inner);
            policy
                .check_spent(&request, spent, std::time::SystemTime::now())
                .map(|movements| totals(&movements).into_iter().collect())
        }),
    }
}

/// Counts pieces of work in progress; each [`WorkCounter::start`] guard counts until dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkCounter {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

/// One piece of work of a [`WorkCounter`].
pub(crate) struct WorkGuard(WorkCounter);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl WorkCounter {
    pub(crate) fn start(&self) -> WorkGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        WorkGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in progress, or `timeout`; returns whether it got there.
    pub(crate) async fn idle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

pub(crate) use ethkms::eth::redact_urls;

/// What an audit record says of a signed transaction, for forensics: chain id, nonce, to, value, the
/// calldata's selector and Keccak-256 (not the calldata itself), gas and every fee field it has.
pub(crate) fn transaction_fields(transaction: &impl alloy_consensus::Transaction) -> Value {
    let input = transaction.input();
    serde_json::json!({
        "type": transaction.ty(),
        "chain_id": transaction.chain_id(),
        "nonce": transaction.nonce(),
        "to": transaction.to(),
        "value": transaction.value().to_string(),
        "selector": input.get(..4).map(alloy_primitives::hex::encode_prefixed),
        "calldata_keccak256": (!input.is_empty()).then(|| alloy_primitives::keccak256(input)),
        "calldata_bytes": input.len(),
        "gas": transaction.gas_limit(),
        "gas_price": transaction.gas_price().map(|fee| fee.to_string()),
        "max_fee_per_gas": (transaction.gas_price().is_none()).then(|| transaction.max_fee_per_gas().to_string()),
        "max_priority_fee_per_gas": transaction.max_priority_fee_per_gas().map(|fee| fee.to_string()),
        "max_fee_per_blob_gas": transaction.max_fee_per_blob_gas().map(|fee| fee.to_string()),
    })
}

tokio::task_local! {
    /// The id of the request being answered (the JSON-RPC `id`, or a REST request's `X-Request-Id`), for
    /// the audit records it causes.
    static REQUEST_ID: Value;
}

/// Runs `work` as part of the request `id`: every audit record it makes carries it.
pub(crate) async fn with_request_id<F: Future>(id: Value, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// What an audit record says of a transaction a client asked for (before the service fills anything in):
/// chain id, nonce, to, value, the calldata's selector and Keccak-256, gas and fee fields.
pub(crate) fn request_fields(request: &alloy_rpc_types_eth::TransactionRequest) -> Value {
    let input = request.input.input().map(alloy_primitives::Bytes::as_ref).unwrap_or_default();
    serde_json::json!({
        "chain_id": request.chain_id,
        "nonce": request.nonce,
        "to": request.to.and_then(|to| to.to().copied()),
        "value": request.value.unwrap_or_default().to_string(),
        "selector": input.get(..4).map(alloy_primitives::hex::encode_prefixed),
        "calldata_keccak256": (!input.is_empty()).then(|| alloy_primitives::keccak256(input)),
        "calldata_bytes": input.len(),
        "gas": request.gas,
        "gas_price": request.gas_price.map(|fee| fee.to_string()),
        "max_fee_per_gas": request.max_fee_per_gas.map(|fee| fee.to_string()),
        "max_priority_fee_per_gas": request.max_priority_fee_per_gas.map(|fee| fee.to_string()),
        "max_fee_per_blob_gas": request.max_fee_per_blob_gas.map(|fee| fee.to_string()),
    })
}
