//! Tests of the SQLite journal: claims, attempts, statuses, idempotency, migrations, refusals.

use super::*;
use crate::journal::Kind;
use crate::policy::Rule;
use alloy_primitives::Address;

fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ethkms-journal-{name}-{}.sqlite", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn withdrawal(idempotency_key: &str, amount: u64) -> NewWithdrawal {
    NewWithdrawal {
        client: "exchange".into(),
        idempotency_key: idempotency_key.into(),
        key: "hot".into(),
        recipient: Address::with_last_byte(7),
        asset: Asset::Ether,
        amount: U256::from(amount),
    }
}

fn allow() -> LimitCheck {
    LimitCheck::count(vec![(Asset::Ether, U256::from(5))])
}

/// Key `hot`'s lease, taken as a starting server does.
async fn lease(journal: &SqliteJournal) -> Fence {
    let epoch = journal.acquire_lease("hot", "test", Duration::from_secs(60)).await.unwrap().unwrap();
    Fence { key: "hot".into(), epoch }
}

/// What key `hot` moved of ether in the last 24 hours, as a daily-limit check reads it.
async fn spent(journal: &SqliteJournal) -> U256 {
    let (sender, receiver) = mpsc::channel();
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

fn attempt(byte: u8, fee: u128) -> Attempt {
    Attempt {
        tx_hash: B256::repeat_byte(byte),
        raw: vec![byte; 3].into(),
        max_fee_per_gas: fee,
        priority_fee_per_gas: fee / 2,
        signed_ms: 1,
        cancel: false,
    }
}

async fn new_row(journal: &SqliteJournal, key: &str) -> Withdrawal {
    let Inserted::New(row) = journal.insert(withdrawal(key, 9), allow()).await.unwrap() else { panic!() };
    row
}

#[tokio::test]
async fn idempotency_keys_survive_reopening_and_concurrent_inserts_store_one_row() {
    let path = temp("idempotency");
    let journal = SqliteJournal::open(&path).unwrap();
    let inserts = (0..16).map(|_| journal.insert(withdrawal("w-1", 5), allow()));
    let results = futures_util::future::join_all(inserts).await;
    let new = results.iter().filter(|result| matches!(result, Ok(Inserted::New(_)))).count();
    assert_eq!(new, 1, "exactly one of 16 concurrent inserts with one idempotency key is new");
    let Ok(Inserted::New(first)) = results.into_iter().find(|r| matches!(r, Ok(Inserted::New(_)))).unwrap() else {
        unreachable!()
    };
    assert_eq!(first.status, Status::Accepted);
    journal.close();
    let reopened = SqliteJournal::open(&path).unwrap();
    let Inserted::Existing(again) = reopened.insert(withdrawal("w-1", 5), allow()).await.unwrap() else {
        panic!("the idempotency key was forgotten")
    };
    assert_eq!(again.id, first.id);
    // The check ran once: one spend recorded.
    assert_eq!(spent(&reopened).await, U256::from(5));
    let denied = Denial { rule: Rule::MaxValue, message: "denied".into() };
    let check = LimitCheck { assets: Vec::new(), check: Box::new(move |_| Err(denied)) };
    let refused = reopened.insert(withdrawal("w-2", 5), check).await.unwrap();
    let Inserted::Refused(reason) = refused else { panic!("a refused check stored a row") };
    assert_eq!(reason.message, "denied");
    assert!(reopened.unfinished(None).await.unwrap().iter().all(|row| row.idempotency_key.as_deref() == Some("w-1")));
}

#[tokio::test]
async fn one_claim_wins_and_a_row_never_holds_a_second_nonce() {
    let path = temp("claim");
    let journal = SqliteJournal::open(&path).unwrap();
    let fence = lease(&journal).await;
    let row = new_row(&journal, "w-1").await;
    let claims = futures_util::future::join_all((0..8).map(|_| journal.claim(&fence, &row.id, 4, None))).await;
    let won: Vec<u64> = claims
        .iter()
        .filter_map(|claim| match claim {
            Ok(Claim::Claimed { nonce, .. }) => Some(*nonce),
            _ => None,
        })
        .collect();
    assert_eq!(won, [4], "exactly one of 8 concurrent claims wins, with the node's pending count: {claims:?}");
    assert!(claims.iter().filter(|claim| matches!(claim, Ok(Claim::NotAccepted))).count() == 7, "{claims:?}");
    let nonce = won[0];
    let other = nonce + 1;
    let refused = journal.add_attempt(&fence, &row.id, other, attempt(1, 100)).await.unwrap_err();
    assert!(matches!(refused, JournalError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains(&format!("nonce {other}")), "{refused}");
    journal.add_attempt(&fence, &row.id, nonce, attempt(1, 100)).await.unwrap();
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.attempts.len()), (Status::Signed, Some(nonce), 1));
    // A claimed row cannot be claimed again, and a final row takes no transaction.
    assert_eq!(journal.claim(&fence, &row.id, 4, None).await.unwrap(), Claim::NotAccepted);
    journal.mark_failed(&fence, &row.id, "test", Release { spends: false, nonce: false }).await.unwrap();
    let late = journal.add_attempt(&fence, &row.id, nonce, attempt(2, 110)).await;
    assert!(matches!(late, Err(JournalError::Refused(_))), "{late:?}");
}

#[tokio::test]
async fn attempts_statuses_confirmations_and_reorgs_are_stored_in_order() {
    let path = temp("attempts");
    let journal = SqliteJournal::open(&path).unwrap();
    let fence = lease(&journal).await;
    let row = new_row(&journal, "w-1").await;
    assert!(matches!(journal.claim(&fence, &row.id, 4, None).await.unwrap(), Claim::Claimed { nonce: 4, .. }));
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signing);
    journal.add_attempt(&fence, &row.id, 4, attempt(1, 100)).await.unwrap();
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signed);
    journal.mark_submitted(&fence, &row.id).await.unwrap();
    journal.add_attempt(&fence, &row.id, 4, attempt(2, 110)).await.unwrap();
    assert!(SqliteJournal::open(&path).unwrap_err().to_string().contains("another ethkms-server"));
    journal.close();
    let journal = SqliteJournal::open(&path).unwrap();
    // A restarted server takes the key with a new epoch; the old one is fenced.
    let old = fence;
    let fence = lease(&journal).await;
    assert!(fence.epoch > old.epoch);
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
    assert_eq!((reorged.status, reorged.block_number), (Status::Submitted, None));
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

#[tokio::test]
async fn cancelling_before_signing_gives_the_amount_back_and_after_signing_is_a_request() {
    let path = temp("cancel");
    let journal = SqliteJournal::open(&path).unwrap();
    let fence = lease(&journal).await;
    let early = new_row(&journal, "w-early").await;
    let Cancelled::Now(released) = journal.cancel(&early.id).await.unwrap() else { panic!() };
    assert_eq!(
        released.iter().map(|released| (released.asset, released.amount)).collect::<Vec<_>>(),
        [(Asset::Ether, U256::from(5))]
    );
    assert_eq!(journal.get(&early.id).await.unwrap().unwrap().status, Status::Cancelled);
    let claim = journal.claim(&fence, &early.id, 0, None).await.unwrap();
    assert_eq!(claim, Claim::NotAccepted, "a cancelled withdrawal is never signed");
    assert_eq!(journal.cancel(&early.id).await.unwrap(), Cancelled::Unchanged(Status::Cancelled));
    let late = new_row(&journal, "w-late").await;
    assert!(matches!(journal.claim(&fence, &late.id, 0, None).await.unwrap(), Claim::Claimed { nonce: 0, .. }));
    assert_eq!(journal.cancel(&late.id).await.unwrap(), Cancelled::Requested);
    assert!(journal.get(&late.id).await.unwrap().unwrap().cancel_requested);
    assert_eq!(spent(&journal).await, U256::from(5), "only the signed one still counts");
    // A mined cancellation gives the amount back and is followed until confirmed.
    journal.add_attempt(&fence, &late.id, 0, Attempt { cancel: true, ..attempt(3, 10) }).await.unwrap();
    journal
        .mark_mined(&fence, &late.id, B256::repeat_byte(3), 5, B256::repeat_byte(0xb3), MinedAs::Cancelled, false)
        .await
        .unwrap();
    assert_eq!(spent(&journal).await, U256::ZERO);
    assert_eq!(journal.unfinished(None).await.unwrap().len(), 1);
    journal.mark_confirmed(&fence, &late.id).await.unwrap();
    assert_eq!(journal.get(&late.id).await.unwrap().unwrap().status, Status::Cancelled);
    assert!(journal.unfinished(None).await.unwrap().is_empty());
    assert_eq!(journal.cancel("nope").await.unwrap(), Cancelled::NotFound);
}

#[tokio::test]
async fn a_version_1_journal_is_migrated_and_a_newer_one_refused() {
    let path = temp("migrate");
    {
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch(MIGRATIONS[0]).unwrap();
        connection
            .execute(
                "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, status, nonce, created_ms, \
                 updated_ms) VALUES ('old', 'withdrawal', 'hot', ?1, 'ETH', '7', 'submitted', 3, 1, 1)",
                params![Address::with_last_byte(7).to_string()],
            )
            .unwrap();
        connection.execute_batch("PRAGMA user_version = 1").unwrap();
    }
    let journal = SqliteJournal::open(&path).unwrap();
    let old = journal.get("old").await.unwrap().unwrap();
    assert_eq!((old.status, old.nonce, old.cancel_requested), (Status::Submitted, Some(3), false));
    journal.close();
    {
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1)).unwrap();
    }
    let error = SqliteJournal::open(&path).unwrap_err().to_string();
    assert!(error.contains("newer than this program"), "{error}");
}

#[tokio::test]
async fn a_file_that_is_not_a_journal_is_refused_by_name() {
    let path = temp("garbage");
    std::fs::write(&path, b"this is not a database, it is a text file that is long enough to be checked").unwrap();
    let error = SqliteJournal::open(&path).unwrap_err().to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn nonces_are_allocated_in_the_claim_given_back_reused_and_filled() {
    let path = temp("nonces");
    let journal = SqliteJournal::open(&path).unwrap();
    let fence = lease(&journal).await;
    let mut rows = Vec::new();
    for key in ["a", "b", "c"] {
        rows.push(new_row(&journal, key).await);
    }
    let mut nonces = Vec::new();
    for row in &rows {
        let Claim::Claimed { nonce, .. } = journal.claim(&fence, &row.id, 7, None).await.unwrap() else { panic!() };
        nonces.push(nonce);
    }
    assert_eq!(nonces, [7, 8, 9], "contiguous from the node's pending count");
    // A client asking for a nonce that is not the next is refused, and nothing is taken.
    let d = new_row(&journal, "d").await;
    assert_eq!(journal.claim(&fence, &d.id, 7, Some(3)).await.unwrap(), Claim::NotNext { next: 10 });
    // The middle one refused by the node: its nonce is free, reused by the next claim.
    let (_, after) = journal.mark_failed(&fence, &rows[1].id, "refused", Release::UNPAID).await.unwrap();
    assert_eq!(after.gaps(), [8]);
    assert!(matches!(journal.claim(&fence, &d.id, 7, Some(8)).await.unwrap(), Claim::Claimed { nonce: 8, .. }));
    // Freed again (by a vanished foreign transaction, say), a gap fill takes it once.
    let freed = journal.release_nonces(&fence, 8..9).await.unwrap();
    assert_eq!(freed.gaps(), [8]);
    let fill = journal.insert_gap_fill(&fence, 8, Address::with_last_byte(1)).await.unwrap().unwrap();
    assert_eq!((fill.kind, fill.status, fill.nonce), (Kind::GapFill, Status::Signing, Some(8)));
    assert!(journal.insert_gap_fill(&fence, 8, Address::with_last_byte(1)).await.unwrap().is_none());
    // Recovery: every open row's nonce held, the rest from the node's count up free.
    let recovered = journal.recover_nonces(&fence, 7).await.unwrap();
    assert_eq!((recovered.next(), recovered.gaps()), (10, vec![]));
    journal.mark_failed(&fence, &rows[2].id, "gone", Release::UNPAID).await.unwrap();
    let recovered = journal.recover_nonces(&fence, 7).await.unwrap();
    assert_eq!((recovered.next(), recovered.gaps()), (9, vec![]), "the newest freed: the counter steps back");
}

#[tokio::test]
async fn a_lease_is_one_holders_until_released_and_every_write_checks_it() {
    let path = temp("leases");
    let journal = SqliteJournal::open(&path).unwrap();
    let fence = lease(&journal).await;
    let ttl = Duration::from_secs(60);
    assert!(journal.renew_lease(&fence, "test", ttl).await.unwrap());
    assert!(!journal.renew_lease(&fence, "someone-else", ttl).await.unwrap());
    journal.release_lease(&fence, "test").await.unwrap();
    let rows = journal.leases().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].holder.as_str(), rows[0].epoch, rows[0].expires_ms), ("test", fence.epoch, 0));
    // One server per SQLite file: a lease still running is a crashed predecessor's, taken at once.
    let next = journal.acquire_lease("hot", "other", ttl).await.unwrap().unwrap();
    assert_eq!(next, fence.epoch + 1);
    assert_eq!(journal.acquire_lease("hot", "third", ttl).await.unwrap(), Some(next + 1));
    assert!(!journal.renew_lease(&fence, "test", ttl).await.unwrap(), "the old holder's epoch is gone");
    let row = new_row(&journal, "w").await;
    let fenced = journal.claim(&Fence { epoch: next, ..fence.clone() }, &row.id, 0, None).await;
    assert!(matches!(fenced, Err(JournalError::Fenced { .. })), "{fenced:?}");
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Accepted, "nothing stored");
}
