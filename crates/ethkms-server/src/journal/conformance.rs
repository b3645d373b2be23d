//! The journal's contract ([`JournalStore`]), one set of tests run against every implementation: each case
//! below runs once on a [`SqliteJournal`] (a temporary file) and once on a [`PostgresJournal`] (a database of
//! its own on the server of `ETHKMS_TEST_POSTGRES_URL`; skipped without one, failed under
//! `ETHKMS_REQUIRE_SERVICES=1`).
//!
//! What only one implementation does is tested in its own folder: reopening, the exclusive lock and the
//! file migrations for SQLite; replicas racing each other, leases running out, notifications and lost
//! connections for PostgreSQL.

use std::time::Duration;

use alloy_primitives::{Address, B256, U256};

use super::{
    Attempt, Cancelled, Claim, Fence, Inserted, JournalError, JournalStore, Kind, LimitCheck, MinedAs, NewRpc,
    NewWithdrawal, Release, Status, Withdrawal,
};
use crate::policy::{Asset, Denial, Rule};

pub(super) fn withdrawal(idempotency_key: &str, amount: u64) -> NewWithdrawal {
    NewWithdrawal {
        client: "exchange".into(),
        idempotency_key: idempotency_key.into(),
        key: "hot".into(),
        recipient: Address::with_last_byte(7),
        asset: Asset::Ether,
        amount: U256::from(amount),
        approval: None,
    }
}

pub(super) fn allow() -> LimitCheck {
    LimitCheck::count(vec![(Asset::Ether, U256::from(5))])
}

/// Key `hot`'s lease for `test`.
pub(super) async fn lease(journal: &dyn JournalStore) -> Fence {
    let epoch = journal.acquire_lease("hot", "test", Duration::from_secs(60)).await.unwrap().unwrap();
    Fence { key: "hot".into(), epoch }
}

/// What key `hot` moved of ether in the last 24 hours, as a daily-limit check reads it.
pub(super) async fn spent(journal: &dyn JournalStore) -> U256 {
    let (sender, receiver) = std::sync::mpsc::channel();
    let check = LimitCheck {
        assets: vec![Asset::Ether],
        check: Box::new(move |spent| {
            let _ = sender.send(spent.get(&Asset::Ether).copied().unwrap_or_default());
            Err(Denial { rule: Rule::DailyLimit, message: "probe".into() })
        }),
    };
    assert!(journal.record_spends("hot", "probe", check).await.unwrap().is_err());
    receiver.recv().unwrap()
}

pub(super) fn attempt(byte: u8, fee: u128) -> Attempt {
    Attempt {
        tx_hash: B256::repeat_byte(byte),
        raw: vec![byte; 3].into(),
        max_fee_per_gas: fee,
        priority_fee_per_gas: fee / 2,
        signed_ms: 1,
        cancel: false,
    }
}

pub(super) async fn new_row(journal: &dyn JournalStore, idempotency_key: &str) -> Withdrawal {
    let Inserted::New(row) = journal.insert(withdrawal(idempotency_key, 9), allow()).await.unwrap() else { panic!() };
    row
}

fn rpc(key: &str) -> NewRpc {
    NewRpc {
        id: format!("tx-{}", uuid::Uuid::new_v4()),
        client: "wallet".into(),
        key: key.into(),
        recipient: Address::with_last_byte(9),
        amount: U256::from(3),
        request: "{}".into(),
    }
}

async fn concurrent_inserts_with_one_idempotency_key_store_one_row(journal: &dyn JournalStore) {
    let inserts = (0..16).map(|_| journal.insert(withdrawal("w-1", 5), allow()));
    let results = futures_util::future::join_all(inserts).await;
    let new: Vec<&Withdrawal> = results
        .iter()
        .filter_map(|result| match result {
            Ok(Inserted::New(row)) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(new.len(), 1, "exactly one of 16 concurrent inserts with one idempotency key is new: {results:?}");
    for result in &results {
        if let Ok(Inserted::Existing(row)) = result {
            assert_eq!(row.id, new[0].id);
        }
    }
    assert_eq!(new[0].status, Status::Accepted);
    let Inserted::Existing(again) = journal.insert(withdrawal("w-1", 5), allow()).await.unwrap() else {
        panic!("the idempotency key was forgotten")
    };
    assert_eq!(again.id, new[0].id);
    assert_eq!(spent(journal).await, U256::from(5), "the check's amounts were recorded once");
    let denied = Denial { rule: Rule::MaxValue, message: "denied".into() };
    let check = LimitCheck { assets: Vec::new(), check: Box::new(move |_| Err(denied)) };
    let Inserted::Refused(reason) = journal.insert(withdrawal("w-2", 5), check).await.unwrap() else {
        panic!("a refused check stored a row")
    };
    assert_eq!(reason.message, "denied");
    let open = journal.unfinished(None).await.unwrap();
    assert_eq!(open.iter().map(|row| row.idempotency_key.as_deref()).collect::<Vec<_>>(), [Some("w-1")]);
}

async fn one_claim_wins_and_a_row_never_holds_a_second_nonce(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let row = new_row(journal, "w-1").await;
    let claims = futures_util::future::join_all((0..8).map(|_| journal.claim(&fence, &row.id, 4, None))).await;
    let won: Vec<u64> = claims
        .iter()
        .filter_map(|claim| match claim {
            Ok(Claim::Claimed { nonce, .. }) => Some(*nonce),
            _ => None,
        })
        .collect();
    assert_eq!(won, [4], "exactly one of 8 concurrent claims wins, with the node's pending count: {claims:?}");
    assert_eq!(claims.iter().filter(|claim| matches!(claim, Ok(Claim::NotAccepted))).count(), 7, "{claims:?}");
    let refused = journal.add_attempt(&fence, &row.id, 5, attempt(1, 100)).await.unwrap_err();
    assert!(matches!(refused, JournalError::Refused(_)) && refused.to_string().contains("nonce 5"), "{refused}");
    journal.add_attempt(&fence, &row.id, 4, attempt(1, 100)).await.unwrap();
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.attempts.len()), (Status::Signed, Some(4), 1));
    // A claimed row cannot be claimed again, and a final row takes no transaction.
    assert_eq!(journal.claim(&fence, &row.id, 4, None).await.unwrap(), Claim::NotAccepted);
    journal.mark_failed(&fence, &row.id, "test", Release { spends: false, nonce: false }).await.unwrap();
    let late = journal.add_attempt(&fence, &row.id, 4, attempt(2, 110)).await;
    assert!(matches!(late, Err(JournalError::Refused(_))), "{late:?}");
}

async fn attempts_statuses_confirmations_and_reorgs_are_stored_in_order(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let row = new_row(journal, "w-1").await;
    assert!(matches!(journal.claim(&fence, &row.id, 4, None).await.unwrap(), Claim::Claimed { nonce: 4, .. }));
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signing);
    journal.add_attempt(&fence, &row.id, 4, attempt(1, 100)).await.unwrap();
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signed);
    journal.mark_submitted(&fence, &row.id).await.unwrap();
    journal.add_attempt(&fence, &row.id, 4, attempt(2, 110)).await.unwrap();
    // Another holder takes the key with a new epoch; the old one is fenced.
    journal.release_lease(&fence, "test").await.unwrap();
    let old = fence;
    let epoch = journal.acquire_lease("hot", "next", Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(epoch, old.epoch + 1);
    let fence = Fence { key: "hot".into(), epoch };
    let stale = journal.mark_submitted(&old, &row.id).await;
    assert!(matches!(stale, Err(JournalError::Fenced { epoch, .. }) if epoch == old.epoch), "{stale:?}");
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.tx_hash), (Status::Submitted, Some(4), Some(B256::repeat_byte(2))));
    assert_eq!(stored.attempts, vec![attempt(1, 100), attempt(2, 110)]);
    journal
        .mark_mined(&fence, &row.id, B256::repeat_byte(1), 12, B256::repeat_byte(0xb1), MinedAs::Paid, false)
        .await
        .unwrap();
    let mined = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!(
        (mined.status, mined.tx_hash, mined.block_number, mined.block_hash),
        (Status::Mined, Some(B256::repeat_byte(1)), Some(12), Some(B256::repeat_byte(0xb1)))
    );
    assert_eq!(journal.unfinished(None).await.unwrap().len(), 1, "mined is followed until confirmed");
    // A reorg: back to submitted, the block forgotten.
    journal.mark_unmined(&fence, &row.id).await.unwrap();
    let reorged = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((reorged.status, reorged.block_number, reorged.block_hash), (Status::Submitted, None, None));
    journal
        .mark_mined(&fence, &row.id, B256::repeat_byte(2), 13, B256::repeat_byte(0xb2), MinedAs::Paid, false)
        .await
        .unwrap();
    journal.mark_confirmed(&fence, &row.id).await.unwrap();
    let confirmed = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((confirmed.status, confirmed.confirmed), (Status::Confirmed, true));
    assert!(journal.unfinished(None).await.unwrap().is_empty());
    assert!(journal.get("no-such-id").await.unwrap().is_none());
}

async fn cancelling_before_signing_gives_the_amount_back_and_after_signing_is_a_request(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let early = new_row(journal, "w-early").await;
    let Cancelled::Now(released) = journal.cancel(&early.id).await.unwrap() else { panic!() };
    assert_eq!(
        released.iter().map(|released| (released.key.as_str(), released.asset, released.amount)).collect::<Vec<_>>(),
        [("hot", Asset::Ether, U256::from(5))]
    );
    assert_eq!(journal.get(&early.id).await.unwrap().unwrap().status, Status::Cancelled);
    let claim = journal.claim(&fence, &early.id, 0, None).await.unwrap();
    assert_eq!(claim, Claim::NotAccepted, "a cancelled withdrawal is never signed");
    assert_eq!(journal.cancel(&early.id).await.unwrap(), Cancelled::Unchanged(Status::Cancelled));
    let late = new_row(journal, "w-late").await;
    assert!(matches!(journal.claim(&fence, &late.id, 0, None).await.unwrap(), Claim::Claimed { nonce: 0, .. }));
    assert_eq!(journal.cancel(&late.id).await.unwrap(), Cancelled::Requested);
    assert!(journal.get(&late.id).await.unwrap().unwrap().cancel_requested);
    assert_eq!(journal.cancellations("hot").await.unwrap(), std::slice::from_ref(&late.id));
    assert_eq!(spent(journal).await, U256::from(5), "only the signed one still counts");
    // A mined cancellation gives the amount back and is followed until confirmed.
    journal.add_attempt(&fence, &late.id, 0, Attempt { cancel: true, ..attempt(3, 10) }).await.unwrap();
    journal
        .mark_mined(&fence, &late.id, B256::repeat_byte(3), 5, B256::repeat_byte(0xb3), MinedAs::Cancelled, false)
        .await
        .unwrap();
    assert_eq!(spent(journal).await, U256::ZERO);
    assert_eq!(journal.unfinished(None).await.unwrap().len(), 1);
    assert_eq!(journal.cancel(&late.id).await.unwrap(), Cancelled::Unchanged(Status::Cancelled));
    journal.mark_confirmed(&fence, &late.id).await.unwrap();
    let cancelled = journal.get(&late.id).await.unwrap().unwrap();
    assert_eq!((cancelled.status, cancelled.confirmed), (Status::Cancelled, true));
    assert!(journal.unfinished(None).await.unwrap().is_empty());
    assert!(journal.cancellations("hot").await.unwrap().is_empty());
    assert_eq!(journal.cancel("nope").await.unwrap(), Cancelled::NotFound);
}

async fn nonces_are_allocated_in_the_claim_given_back_reused_and_filled(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let mut rows = Vec::new();
    for key in ["a", "b", "c"] {
        rows.push(new_row(journal, key).await);
    }
    let mut nonces = Vec::new();
    for row in &rows {
        let Claim::Claimed { nonce, .. } = journal.claim(&fence, &row.id, 7, None).await.unwrap() else { panic!() };
        nonces.push(nonce);
    }
    assert_eq!(nonces, [7, 8, 9], "contiguous from the node's pending count");
    // A client asking for a nonce that is not the next is refused, and nothing is taken.
    let d = new_row(journal, "d").await;
    assert_eq!(journal.claim(&fence, &d.id, 7, Some(3)).await.unwrap(), Claim::NotNext { next: 10 });
    assert_eq!(journal.get(&d.id).await.unwrap().unwrap().status, Status::Accepted);
    // The middle one refused by the node: its nonce is free, reused by the next claim.
    let (released, after) = journal.mark_failed(&fence, &rows[1].id, "refused", Release::UNPAID).await.unwrap();
    assert_eq!((released.len(), after.gaps()), (1, vec![8]));
    assert!(matches!(journal.claim(&fence, &d.id, 7, Some(8)).await.unwrap(), Claim::Claimed { nonce: 8, .. }));
    // Freed again (by a vanished foreign transaction, say), a gap fill takes it once.
    let freed = journal.release_nonces(&fence, 8..9).await.unwrap();
    assert_eq!(freed.gaps(), [8]);
    let fill = journal.insert_gap_fill(&fence, 8, Address::with_last_byte(1)).await.unwrap().unwrap();
    assert_eq!(
        (fill.kind, fill.status, fill.nonce, fill.amount),
        (Kind::GapFill, Status::Signing, Some(8), U256::ZERO)
    );
    assert!(journal.insert_gap_fill(&fence, 8, Address::with_last_byte(1)).await.unwrap().is_none());
    // Recovery: every open row's nonce held, the rest from the node's count up free.
    let recovered = journal.recover_nonces(&fence, 7).await.unwrap();
    assert_eq!((recovered.next(), recovered.gaps()), (10, vec![]));
    journal.mark_failed(&fence, &rows[2].id, "gone", Release::UNPAID).await.unwrap();
    let recovered = journal.recover_nonces(&fence, 7).await.unwrap();
    assert_eq!((recovered.next(), recovered.gaps()), (9, vec![]), "the newest freed: the counter steps back");
    // The node counts more than the journal holds: someone else used those nonces.
    let e = new_row(journal, "e").await;
    assert!(matches!(journal.claim(&fence, &e.id, 20, None).await.unwrap(), Claim::Claimed { nonce: 20, .. }));
}

async fn a_released_lease_is_taken_with_a_new_epoch_and_every_write_checks_it(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let ttl = Duration::from_secs(60);
    assert!(journal.renew_lease(&fence, "test", ttl).await.unwrap());
    assert!(!journal.renew_lease(&fence, "someone-else", ttl).await.unwrap());
    let stale = Fence { epoch: fence.epoch + 5, ..fence.clone() };
    assert!(!journal.renew_lease(&stale, "test", ttl).await.unwrap(), "another epoch is not renewed");
    journal.release_lease(&fence, "test").await.unwrap();
    let rows = journal.leases().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].key.as_str(), rows[0].holder.as_str(), rows[0].epoch), ("hot", "test", fence.epoch));
    assert_eq!(rows[0].expires_ms, 0, "released: run out");
    let next = journal.acquire_lease("hot", "other", ttl).await.unwrap().unwrap();
    assert_eq!(next, fence.epoch + 1);
    assert!(!journal.renew_lease(&fence, "test", ttl).await.unwrap(), "the old holder's epoch is gone");
    let row = new_row(journal, "w").await;
    for write in [
        journal.claim(&fence, &row.id, 0, None).await.map(drop),
        journal.recover_nonces(&fence, 0).await.map(drop),
        journal.release_nonces(&fence, 0..1).await.map(drop),
        journal.insert_gap_fill(&fence, 0, Address::ZERO).await.map(drop),
        journal.add_attempt(&fence, &row.id, 0, attempt(1, 1)).await,
        journal.mark_confirmed(&fence, &row.id).await,
        journal.mark_failed(&fence, &row.id, "no", Release::UNPAID).await.map(drop),
    ] {
        assert!(matches!(write, Err(JournalError::Fenced { ref key, epoch }) if key == "hot" && epoch == fence.epoch));
    }
    let unleased = Fence { key: "cold".into(), epoch: 1 };
    assert!(matches!(journal.recover_nonces(&unleased, 0).await, Err(JournalError::Fenced { .. })));
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.confirmed), (Status::Accepted, None, false), "nothing stored");
}

async fn open_rows_come_oldest_first_and_waiting_work_is_listed_by_key(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let mut ids = Vec::new();
    for index in 0..6 {
        ids.push(new_row(journal, &format!("w-{index}")).await.id);
    }
    let other = journal.insert(NewWithdrawal { key: "cold".into(), ..withdrawal("w-cold", 1) }, allow()).await;
    let Ok(Inserted::New(other)) = other else { panic!("{other:?}") };
    let call = journal.insert_rpc(rpc("hot"), allow()).await.unwrap().unwrap();
    assert_eq!((call.kind, call.status, call.request.as_deref()), (Kind::Rpc, Status::Accepted, Some("{}")));
    let Claim::Claimed { nonce, .. } = journal.claim(&fence, &ids[2], 2, None).await.unwrap() else { panic!() };
    assert_eq!(journal.release_nonces(&fence, 0..2).await.unwrap().gaps(), [0, 1]);
    let gap = journal.insert_gap_fill(&fence, 1, Address::ZERO).await.unwrap().unwrap();
    let mut waiting = ids.clone();
    waiting.remove(2);
    waiting.push(call.id.clone());
    assert_eq!(journal.accepted("hot").await.unwrap(), waiting, "accepted rows of the key, oldest first");
    assert_eq!(journal.accepted("cold").await.unwrap(), std::slice::from_ref(&other.id));
    let mut open = ids.clone();
    open.extend([call.id.clone(), gap.id.clone()]);
    let hot: Vec<String> = journal.unfinished(Some("hot")).await.unwrap().into_iter().map(|row| row.id).collect();
    assert_eq!(hot, open, "oldest first: insertion order, not the ids' order");
    let all: Vec<String> = journal.unfinished(None).await.unwrap().into_iter().map(|row| row.id).collect();
    assert_eq!(all.len(), open.len() + 1);
    assert_eq!(all[6], other.id);
    // A row's attempts come with it.
    journal.add_attempt(&fence, &ids[2], nonce, attempt(4, 10)).await.unwrap();
    let loaded = journal.unfinished(Some("hot")).await.unwrap();
    let row = loaded.iter().find(|row| row.id == ids[2]).unwrap();
    assert_eq!(row.attempts, [attempt(4, 10)]);
    assert!(loaded.iter().filter(|row| row.id != ids[2]).all(|row| row.attempts.is_empty()));
    // Given up before anyone claimed it: failed, its amount given back; a claimed row is not abandoned.
    assert!(journal.abandon(&call.id, "client gone").await.unwrap());
    assert!(!journal.abandon(&call.id, "client gone").await.unwrap());
    assert!(!journal.abandon(&ids[2], "client gone").await.unwrap());
    let abandoned = journal.get(&call.id).await.unwrap().unwrap();
    assert_eq!((abandoned.status, abandoned.error.as_deref()), (Status::Failed, Some("client gone")));
}

async fn daily_limits_read_the_last_day_and_amounts_are_given_back(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    // A check sees what was counted before it, per asset, and counts its own.
    let token = Asset::Token(Address::with_last_byte(0x70));
    let limited = |limit: u64, amount: u64| LimitCheck {
        assets: vec![Asset::Ether, token],
        check: Box::new(move |spent| {
            assert_eq!(spent.get(&token), Some(&U256::ZERO), "an asset not moved counts as zero");
            let total = spent.get(&Asset::Ether).copied().unwrap_or_default() + U256::from(amount);
            if total > U256::from(limit) {
                return Err(Denial { rule: Rule::DailyLimit, message: format!("{total} > {limit}") });
            }
            Ok(vec![(Asset::Ether, U256::from(amount))])
        }),
    };
    let first = journal.insert(withdrawal("w-1", 6), limited(10, 6)).await.unwrap();
    let Inserted::New(first) = first else { panic!("{first:?}") };
    let refused = journal.insert(withdrawal("w-2", 6), limited(10, 6)).await.unwrap();
    assert!(matches!(refused, Inserted::Refused(ref denial) if denial.rule == Rule::DailyLimit), "{refused:?}");
    let permit = journal.record_spends("hot", "permit-1", limited(10, 3)).await.unwrap().unwrap();
    assert_eq!(permit, [(Asset::Ether, U256::from(3))]);
    assert_eq!(spent(journal).await, U256::from(9));
    let released = journal.release_spends("permit-1").await.unwrap();
    assert_eq!(released.iter().map(|released| released.amount).collect::<Vec<_>>(), [U256::from(3)]);
    assert!(journal.release_spends("permit-1").await.unwrap().is_empty(), "given back once");
    let rpc = journal.insert_rpc(rpc("hot"), limited(10, 5)).await.unwrap();
    assert!(matches!(rpc, Err(ref denial) if denial.rule == Rule::DailyLimit), "{rpc:?}");
    // A failure that keeps the amount (its value may have left) and one that gives it back.
    let Claim::Claimed { .. } = journal.claim(&fence, &first.id, 0, None).await.unwrap() else { panic!() };
    let kept = journal.mark_failed(&fence, &first.id, "unknown", Release { spends: false, nonce: false }).await;
    assert!(kept.unwrap().0.is_empty());
    assert_eq!(spent(journal).await, U256::from(6));
    let second = new_row(journal, "w-3").await;
    assert_eq!(spent(journal).await, U256::from(11));
    let (released, _) =
        journal.mark_failed(&fence, &second.id, "refused", Release { spends: true, nonce: false }).await.unwrap();
    assert_eq!(released.iter().map(|released| released.amount).collect::<Vec<_>>(), [U256::from(5)]);
    assert_eq!(spent(journal).await, U256::from(6));
}

async fn a_reverted_payment_is_final_and_a_deep_one_confirmed_in_one_write(journal: &dyn JournalStore) {
    let fence = lease(journal).await;
    let (reverted, deep) = (new_row(journal, "w-1").await, new_row(journal, "w-2").await);
    for (row, nonce, byte) in [(&reverted, 0, 1), (&deep, 1, 2)] {
        assert!(matches!(journal.claim(&fence, &row.id, 0, None).await.unwrap(), Claim::Claimed { .. }));
        journal.add_attempt(&fence, &row.id, nonce, attempt(byte, 10)).await.unwrap();
        journal.mark_submitted(&fence, &row.id).await.unwrap();
    }
    assert_eq!(spent(journal).await, U256::from(10));
    journal
        .mark_mined(&fence, &reverted.id, B256::repeat_byte(1), 7, B256::repeat_byte(0xb7), MinedAs::Reverted, false)
        .await
        .unwrap();
    let failed = journal.get(&reverted.id).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.block_number), (Status::Failed, Some(7)));
    assert!(failed.error.unwrap().contains("reverted"));
    assert_eq!(spent(journal).await, U256::from(5), "no value left: the amount is given back");
    journal
        .mark_mined(&fence, &deep.id, B256::repeat_byte(2), 8, B256::repeat_byte(0xb8), MinedAs::Paid, true)
        .await
        .unwrap();
    let confirmed = journal.get(&deep.id).await.unwrap().unwrap();
    assert_eq!((confirmed.status, confirmed.confirmed), (Status::Confirmed, true));
    assert!(journal.unfinished(None).await.unwrap().is_empty());
    // A status write is conditional: a confirmed row is not taken back to `submitted` by a late one.
    journal.mark_submitted(&fence, &deep.id).await.unwrap();
    assert_eq!(journal.get(&deep.id).await.unwrap().unwrap().status, Status::Confirmed);
}

/// Each case as a test of each journal.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use crate::journal::SqliteJournal;

            $(
                #[tokio::test]
                async fn $case() {
                    let path = std::env::temp_dir()
                        .join(format!("ethkms-conformance-{}-{}.sqlite", stringify!($case), std::process::id()));
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    let journal = SqliteJournal::open(&path).unwrap();
                    super::$case(&journal).await;
                    crate::journal::JournalStore::close(&journal);
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                }
            )*
        }

        mod postgres {
            use crate::journal::postgres::tests::{TestDatabase, journal};

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(database) = TestDatabase::create().await else { return };
                    let journal = journal(&database).await;
                    super::$case(&journal).await;
                    crate::journal::JournalStore::close(&journal);
                }
            )*
        }
    };
}

/// The deposit store's suite runs the same way (`deposit_conformance`).
pub(super) use conformance;

conformance!(
    concurrent_inserts_with_one_idempotency_key_store_one_row,
    one_claim_wins_and_a_row_never_holds_a_second_nonce,
    attempts_statuses_confirmations_and_reorgs_are_stored_in_order,
    cancelling_before_signing_gives_the_amount_back_and_after_signing_is_a_request,
    nonces_are_allocated_in_the_claim_given_back_reused_and_filled,
    a_released_lease_is_taken_with_a_new_epoch_and_every_write_checks_it,
    open_rows_come_oldest_first_and_waiting_work_is_listed_by_key,
    daily_limits_read_the_last_day_and_amounts_are_given_back,
    a_reverted_payment_is_final_and_a_deep_one_confirmed_in_one_write,
);
