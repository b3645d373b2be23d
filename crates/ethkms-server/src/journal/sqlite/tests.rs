//! Tests of what only the SQLite journal does: idempotency across reopening the file, migrations, refusing
//! a file that is not a journal, and leases of one server per file (the rest is `conformance`, run against
//! both journals).

use super::*;
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
        approval: None,
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
