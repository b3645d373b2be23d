//! Tests of the SQLite journal: claims, attempts, statuses, idempotency, migrations, refusals.

use super::*;
use crate::policy::{Denial, Rule};
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

fn allow() -> Check {
    Box::new(|| Ok(vec![(Asset::Ether, U256::from(5))]))
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
    assert_eq!(reopened.spends_since(0).await.unwrap().len(), 1);
    let denied = Denial { rule: Rule::MaxValue, message: "denied".into() };
    let refused = reopened.insert(withdrawal("w-2", 5), Box::new(move || Err(denied))).await.unwrap();
    let Inserted::Refused(reason) = refused else { panic!("a refused check stored a row") };
    assert_eq!(reason.message, "denied");
    assert!(reopened.unfinished().await.unwrap().iter().all(|row| row.idempotency_key.as_deref() == Some("w-1")));
}

#[tokio::test]
async fn one_claim_wins_and_a_row_never_holds_a_second_nonce() {
    let path = temp("claim");
    let journal = SqliteJournal::open(&path).unwrap();
    let row = new_row(&journal, "w-1").await;
    let claims = futures_util::future::join_all((0..8).map(|nonce| journal.claim(&row.id, nonce))).await;
    let won: Vec<u64> = (0..8).filter(|nonce| matches!(claims[usize::try_from(*nonce).unwrap()], Ok(true))).collect();
    assert_eq!(won.len(), 1, "exactly one of 8 concurrent claims wins: {claims:?}");
    let nonce = won[0];
    let other = nonce + 1;
    let refused = journal.add_attempt(&row.id, other, attempt(1, 100)).await.unwrap_err();
    assert!(matches!(refused, JournalError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains(&format!("nonce {other}")), "{refused}");
    journal.add_attempt(&row.id, nonce, attempt(1, 100)).await.unwrap();
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.attempts.len()), (Status::Signed, Some(nonce), 1));
    // A claimed row cannot be claimed again, and a final row takes no transaction.
    assert!(!journal.claim(&row.id, nonce).await.unwrap());
    journal.mark_failed(&row.id, "test", false).await.unwrap();
    assert!(matches!(journal.add_attempt(&row.id, nonce, attempt(2, 110)).await, Err(JournalError::Refused(_))));
}

#[tokio::test]
async fn attempts_statuses_confirmations_and_reorgs_are_stored_in_order() {
    let path = temp("attempts");
    let journal = SqliteJournal::open(&path).unwrap();
    let row = new_row(&journal, "w-1").await;
    assert!(journal.claim(&row.id, 4).await.unwrap());
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signing);
    journal.add_attempt(&row.id, 4, attempt(1, 100)).await.unwrap();
    assert_eq!(journal.get(&row.id).await.unwrap().unwrap().status, Status::Signed);
    journal.mark_submitted(&row.id).await.unwrap();
    journal.add_attempt(&row.id, 4, attempt(2, 110)).await.unwrap();
    assert!(SqliteJournal::open(&path).unwrap_err().to_string().contains("another ethkms-server"));
    journal.close();
    let journal = SqliteJournal::open(&path).unwrap();
    let stored = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.nonce, stored.tx_hash), (Status::Submitted, Some(4), Some(B256::repeat_byte(2))));
    assert_eq!(stored.attempts, vec![attempt(1, 100), attempt(2, 110)]);
    journal.mark_mined(&row.id, B256::repeat_byte(1), 12, B256::repeat_byte(0xb1), MinedAs::Paid, false).await.unwrap();
    let mined = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!(
        (mined.status, mined.tx_hash, mined.block_number, mined.block_hash),
        (Status::Mined, Some(B256::repeat_byte(1)), Some(12), Some(B256::repeat_byte(0xb1)))
    );
    assert_eq!(journal.unfinished().await.unwrap().len(), 1, "mined is followed until confirmed");
    // A reorg: back to submitted, the block forgotten.
    journal.mark_unmined(&row.id).await.unwrap();
    let reorged = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((reorged.status, reorged.block_number), (Status::Submitted, None));
    journal.mark_mined(&row.id, B256::repeat_byte(2), 13, B256::repeat_byte(0xb2), MinedAs::Paid, false).await.unwrap();
    journal.mark_confirmed(&row.id).await.unwrap();
    let confirmed = journal.get(&row.id).await.unwrap().unwrap();
    assert_eq!((confirmed.status, confirmed.confirmed), (Status::Confirmed, true));
    assert!(journal.unfinished().await.unwrap().is_empty());
    assert!(journal.get("no-such-id").await.unwrap().is_none());
}

#[tokio::test]
async fn cancelling_before_signing_gives_the_amount_back_and_after_signing_is_a_request() {
    let path = temp("cancel");
    let journal = SqliteJournal::open(&path).unwrap();
    let early = new_row(&journal, "w-early").await;
    let Cancelled::Now(released) = journal.cancel(&early.id).await.unwrap() else { panic!() };
    assert_eq!(
        released.iter().map(|released| (released.asset, released.amount)).collect::<Vec<_>>(),
        [(Asset::Ether, U256::from(5))]
    );
    assert_eq!(journal.get(&early.id).await.unwrap().unwrap().status, Status::Cancelled);
    assert!(!journal.claim(&early.id, 0).await.unwrap(), "a cancelled withdrawal is never signed");
    assert_eq!(journal.cancel(&early.id).await.unwrap(), Cancelled::Unchanged(Status::Cancelled));
    let late = new_row(&journal, "w-late").await;
    assert!(journal.claim(&late.id, 0).await.unwrap());
    assert_eq!(journal.cancel(&late.id).await.unwrap(), Cancelled::Requested);
    assert!(journal.get(&late.id).await.unwrap().unwrap().cancel_requested);
    assert_eq!(journal.spends_since(0).await.unwrap().len(), 1, "only the signed one still counts");
    // A mined cancellation gives the amount back and is followed until confirmed.
    journal.add_attempt(&late.id, 0, Attempt { cancel: true, ..attempt(3, 10) }).await.unwrap();
    journal
        .mark_mined(&late.id, B256::repeat_byte(3), 5, B256::repeat_byte(0xb3), MinedAs::Cancelled, false)
        .await
        .unwrap();
    assert!(journal.spends_since(0).await.unwrap().is_empty());
    assert_eq!(journal.unfinished().await.unwrap().len(), 1);
    journal.mark_confirmed(&late.id).await.unwrap();
    assert_eq!(journal.get(&late.id).await.unwrap().unwrap().status, Status::Cancelled);
    assert!(journal.unfinished().await.unwrap().is_empty());
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
