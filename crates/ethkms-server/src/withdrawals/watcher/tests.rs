//! Tests of the watcher against a journal and a node that does not answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use ethkms::backend::{CreateKeyRequest, KeyBackend, KeyHandle, KeyRef, MemoryBackend};
use ethkms::eth::KmsSigner;
use ethkms::{ChainSettings, WalletManager};

use super::*;
use crate::config::{FeeCaps, WithdrawalSettings};
use crate::journal::{JournalStore, SqliteJournal};
use crate::policy::PolicyEngine;
use crate::shared::Shared;
use crate::withdrawals::engine::HeldLease;

/// An engine on a memory key and a temporary journal; its node is never reached.
async fn engine(name: &str) -> Arc<Engine> {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::with_seed(7));
    let info = backend.create_key(&CreateKeyRequest::new()).await.unwrap();
    let handle = KeyHandle::open(Arc::clone(&backend), KeyRef::new(info.key_id).unwrap()).await.unwrap();
    let key = Key {
        name: "hot".into(),
        signer: KmsSigner::from_handle(handle, Some(1)),
        chain_id: 1,
        fee_caps: FeeCaps::default(),
        confirmations: 1,
    };
    let manager =
        WalletManager::with_backend(backend, ChainSettings::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let audit_path = std::env::temp_dir().join(format!("ethkms-watcher-{name}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&audit_path);
    let audit = ethkms::audit::AuditWriter::spawn(ethkms::audit::AuditLog::open(&audit_path).unwrap()).unwrap();
    let shared = Arc::new(Shared::new(
        manager,
        BTreeMap::from([("hot".into(), key)]),
        PolicyEngine::default(),
        audit,
        "test".into(),
    ));
    let journal_path = audit_path.with_extension("sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", journal_path.display()));
    }
    let journal: Arc<dyn JournalStore> = Arc::new(SqliteJournal::open(&journal_path).unwrap());
    let engine = Engine::new(shared, journal, WithdrawalSettings::default(), crate::config::ReplicaSettings::default());
    let epoch = engine.journal.acquire_lease("hot", "test", Duration::from_secs(60)).await.unwrap().unwrap();
    *engine.state("hot").unwrap().lease.lock().unwrap() =
        Some(HeldLease { epoch, valid_until: Instant::now() + Duration::from_secs(60), recovered: true });
    engine
}

#[tokio::test]
async fn a_refused_gap_fill_backs_off_doubling_and_is_not_recreated_meanwhile() {
    let engine = engine("gap-backoff").await;
    let key = engine.shared.keys.get("hot").unwrap();
    let state = engine.state("hot").unwrap();
    let fence = engine.fence("hot").unwrap();
    // Nonces 0..3 taken, 1 given back: a gap.
    let nonces = engine.journal.recover_nonces(&fence, 3).await.unwrap();
    let nonces = engine.journal.release_nonces(&fence, 1..2).await.unwrap_or(nonces);
    assert_eq!(nonces.gaps(), [1]);
    *state.nonces.lock().unwrap() = nonces;
    let row = engine.journal.insert_gap_fill(&fence, 1, key.address()).await.unwrap().unwrap();
    engine.fail_unpaid(&fence, &row, "the node refused the transaction: insufficient funds").await;
    let (first_until, first_wait) = *state.gap_backoff.lock().unwrap();
    assert!(first_until.is_some_and(|until| until > Instant::now()), "a wait after a refused gap fill");
    assert_eq!(state.nonces.lock().unwrap().gaps(), [1], "the nonce is free again");
    // While waiting, the gap is not filled again: no new row, no signature.
    engine.fill_gaps(&fence, key, 0).await;
    assert!(engine.journal.unfinished(None).await.unwrap().is_empty(), "a gap fill was re-created during the wait");
    let row = engine.journal.insert_gap_fill(&fence, 1, key.address()).await.unwrap().unwrap();
    engine.fail_unpaid(&fence, &row, "refused again").await;
    let (_, second_wait) = *state.gap_backoff.lock().unwrap();
    assert_eq!(second_wait, first_wait * 2, "the wait doubles");
    assert_eq!(engine.shared.metrics.gap_fill_failures.get(), 2, "each refusal is counted (alerts)");
}
