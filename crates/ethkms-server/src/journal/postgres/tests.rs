//! Tests of what only the PostgreSQL journal does: fencing against a takeover in flight (two connections),
//! leases on the database's clock, replicas racing for nonces, idempotency keys and daily limits, schema
//! versions, wake-ups that survive a lost connection, a pool that survives PostgreSQL dropping every
//! connection, retried writes, and passwords kept out of messages. The contract both journals share is
//! tested in `journal/conformance.rs`.
//!
//! Each test makes a database of its own (test support's `TestDatabase`: `CREATE DATABASE ethkms_…`, dropped
//! after a passing test) on the server of `ETHKMS_TEST_POSTGRES_URL`; without it the tests are skipped (with
//! a line saying so), unless `ETHKMS_REQUIRE_SERVICES=1`, where they fail.

use std::time::Duration;

use alloy_primitives::U256;
pub(crate) use ethkms_test_support::postgres::TestDatabase;

use super::*;
use crate::journal::conformance::{allow, attempt, lease, new_row, withdrawal};
use crate::journal::{Attempt, Cancelled, Claim, Inserted, Status};
use crate::policy::Rule;

/// A journal on `database` (as one replica).
pub(crate) async fn journal(database: &TestDatabase) -> PostgresJournal {
    PostgresJournal::connect(&database.url).await.unwrap()
}

/// Whether `future` is still waiting after `wait`.
async fn blocked<T>(future: &mut JoinHandle<T>, wait: Duration) -> bool {
    tokio::time::timeout(wait, future).await.is_err()
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_fenced_writes_in_flight_and_then_fences_their_epoch() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    let fence = lease(&a).await;
    let (row, other) = (new_row(&a, "w-1").await, new_row(&a, "w-2").await);
    let Claim::Claimed { nonce, .. } = a.claim(&fence, &row.id, 0, None).await.unwrap() else { panic!() };
    // Fenced writes in flight — statements of one statement each, held uncommitted in a transaction here —
    // an attempt stored and a claim (fenced writes of one key do not wait for each other), and a third
    // transaction that has only checked its lease.
    let mut first = a.inner.pool.get().await.unwrap();
    let first = first.transaction().await.unwrap();
    let signed = attempts::Signed { fence: fence.clone(), id: row.id.clone(), nonce, attempt: attempt(1, 10) };
    assert!(attempts::add(&first, &fence, &[signed]).await.unwrap().pop().unwrap().is_ok());
    let mut second = a.inner.pool.get().await.unwrap();
    let second = second.transaction().await.unwrap();
    let claimed = claims::claim(&second, &fence, std::slice::from_ref(&other.id), 0).await.unwrap();
    assert!(matches!(claimed, claims::Claimed::Done { ref claimed, next: 2 } if claimed[&other.id] == 1));
    let mut third = a.inner.pool.get().await.unwrap();
    let third = third.transaction().await.unwrap();
    engine::fenced(&third, &fence).await.unwrap();
    // Renewing and releasing change only `expires_ms`: they do not wait for them.
    let renewed = tokio::time::timeout(Duration::from_secs(5), a.renew_lease(&fence, "test", LONG)).await;
    assert!(renewed.unwrap().unwrap());
    tokio::time::timeout(Duration::from_secs(5), a.release_lease(&fence, "test")).await.unwrap().unwrap();
    // A takeover waits for each.
    let taker = b.clone();
    let mut takeover = tokio::spawn(async move { taker.acquire_lease("hot", "b", LONG).await });
    assert!(blocked(&mut takeover, Duration::from_millis(500)).await, "the takeover did not wait");
    first.commit().await.unwrap();
    assert!(blocked(&mut takeover, Duration::from_millis(300)).await, "the takeover did not wait for the claim");
    second.rollback().await.unwrap();
    assert!(blocked(&mut takeover, Duration::from_millis(300)).await, "the takeover did not wait for the third");
    third.rollback().await.unwrap();
    let epoch = takeover.await.unwrap().unwrap().unwrap();
    assert_eq!(epoch, fence.epoch + 1);
    // What committed before it is stored; nothing of the old epoch is after it.
    assert_eq!(a.get(&row.id).await.unwrap().unwrap().attempts, [attempt(1, 10)]);
    let late = a.add_attempt(&fence, &row.id, nonce, attempt(2, 20)).await;
    assert!(matches!(late, Err(JournalError::Fenced { epoch, .. }) if epoch == fence.epoch), "{late:?}");
    assert_eq!(a.get(&row.id).await.unwrap().unwrap().attempts.len(), 1);
    // The other way round: fenced writes that reach the lease during a takeover wait for it, then are
    // refused — each kind of write of one statement.
    let new = Fence { key: "hot".into(), epoch };
    b.release_lease(&new, "b").await.unwrap();
    let mut fourth = a.inner.pool.get().await.unwrap();
    let fourth = fourth.transaction().await.unwrap();
    let taken = engine::acquire_lease(&fourth, "hot".into(), "c".into(), LONG).await.unwrap().unwrap();
    let hash = B256::repeat_byte(1);
    let mut late = Vec::new();
    for (write, id) in [(0, &row.id), (1, &row.id), (2, &row.id), (3, &row.id), (4, &other.id)] {
        let (writer, id, held, other) = (b.clone(), id.clone(), new.clone(), other.id.clone());
        late.push(tokio::spawn(async move {
            match write {
                0 => writer.add_attempt(&held, &id, nonce, attempt(3, 30)).await,
                1 => writer.mark_submitted(&held, &id).await,
                2 => writer.mark_mined(&held, &id, hash, 1, hash, MinedAs::Paid, true).await,
                3 => writer.mark_confirmed(&held, &id).await,
                _ => writer.claim(&held, &other, 0, None).await.map(drop),
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(late.iter().all(|write| !write.is_finished()), "fenced writes did not wait for the takeover");
    fourth.commit().await.unwrap();
    for write in late {
        let refused = write.await.unwrap();
        assert!(matches!(refused, Err(JournalError::Fenced { epoch, .. }) if epoch == new.epoch), "{refused:?}");
    }
    assert_eq!(taken, new.epoch + 1);
    let stored = a.get(&row.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts.len()), (Status::Signed, 1));
    assert_eq!(a.get(&other.id).await.unwrap().unwrap().status, Status::Accepted);
    let attempts = database.connect().await.query("SELECT epoch, replica FROM attempts", &[]).await.unwrap();
    let named: Vec<(i64, String)> = attempts.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(named, [(rows::to_i64(fence.epoch), "test".to_owned())], "an attempt names its lease");
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_takeover_are_stored_exactly_when_they_succeed() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    let fence = lease(&a).await;
    let mut rows = Vec::new();
    for index in 0..40 {
        rows.push(new_row(&a, &format!("w-{index}")).await.id);
    }
    let claims: Vec<_> = rows
        .iter()
        .map(|id| {
            let (journal, fence, id) = (a.clone(), fence.clone(), id.clone());
            tokio::spawn(async move { journal.claim(&fence, &id, 0, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.release_lease(&fence, "test").await.unwrap();
    let epoch = b.acquire_lease("hot", "b", LONG).await.unwrap().unwrap();
    let mut claimed = Vec::new();
    for (id, claim) in rows.iter().zip(claims) {
        let stored = a.get(id).await.unwrap().unwrap();
        match claim.await.unwrap() {
            Ok(Claim::Claimed { nonce, .. }) => {
                assert_eq!((stored.status, stored.nonce), (Status::Signing, Some(nonce)));
                claimed.push(nonce);
            }
            Err(JournalError::Fenced { .. }) => assert_eq!((stored.status, stored.nonce), (Status::Accepted, None)),
            other => panic!("{other:?}"),
        }
    }
    claimed.sort_unstable();
    assert_eq!(claimed, (0..claimed.len() as u64).collect::<Vec<_>>(), "contiguous: {claimed:?}");
    // The new holder goes on from what was stored.
    let next = Fence { key: "hot".into(), epoch };
    let nonces = b.recover_nonces(&next, 0).await.unwrap();
    assert_eq!((nonces.next(), nonces.gaps()), (claimed.len() as u64, vec![]));
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_run_out_on_the_databases_clock_and_a_holder_may_take_its_own_again() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    let epoch = a.acquire_lease("hot", "a", Duration::from_millis(400)).await.unwrap().unwrap();
    assert_eq!(epoch, 1);
    let clock: i64 = database.connect().await.query_one(&format!("SELECT {}", rows::NOW_MS), &[]).await.unwrap().get(0);
    let lease = b.leases().await.unwrap().pop().unwrap();
    let expires = i64::try_from(lease.expires_ms).unwrap();
    assert!(
        (clock - expires + 400).abs() < 2_000,
        "the expiry is the database's time plus the lease: {expires} {clock}"
    );
    assert_eq!(b.acquire_lease("hot", "b", LONG).await.unwrap(), None, "a running lease is its holder's");
    // A replica restarted under its configured name takes its lease back at once, with a new epoch.
    let again = a.acquire_lease("hot", "a", Duration::from_millis(400)).await.unwrap().unwrap();
    assert_eq!(again, 2);
    let old = Fence { key: "hot".into(), epoch };
    assert!(!a.renew_lease(&old, "a", LONG).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let taken = b.acquire_lease("hot", "b", LONG).await.unwrap().unwrap();
    assert_eq!(taken, 3, "run out: taken by another replica");
    let current = Fence { key: "hot".into(), epoch: again };
    assert!(!a.renew_lease(&current, "a", LONG).await.unwrap(), "the former holder cannot renew it");
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_listed_while_announced_with_the_leases_they_hold() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    assert_eq!(a.replicas().await.unwrap(), []);
    a.announce("a", LONG).await.unwrap();
    b.announce("b", Duration::from_millis(400)).await.unwrap();
    a.acquire_lease("hot", "a", LONG).await.unwrap().unwrap();
    a.acquire_lease("cold", "a", Duration::from_millis(400)).await.unwrap().unwrap();
    // A lease named with `@` (the deposit watcher's) is no key's: not counted.
    a.acquire_lease("@deposits", "a", LONG).await.unwrap().unwrap();
    let listed = |pairs: &[(&str, usize)]| -> Vec<ReplicaRow> {
        pairs.iter().map(|(name, leases)| ReplicaRow { name: (*name).into(), leases: *leases }).collect()
    };
    assert_eq!(b.replicas().await.unwrap(), listed(&[("a", 2), ("b", 0)]));
    // An announcement and a lease that ran out (on the database's clock) are no longer counted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.replicas().await.unwrap(), listed(&[("a", 1)]));
    // Announcing again renews it; a lease released is not counted; `ttl` zero withdraws it.
    b.announce("b", LONG).await.unwrap();
    let cold = b.acquire_lease("cold", "b", LONG).await.unwrap().unwrap();
    assert_eq!(a.replicas().await.unwrap(), listed(&[("a", 1), ("b", 1)]));
    b.release_lease(&Fence { key: "cold".into(), epoch: cold }, "b").await.unwrap();
    assert_eq!(a.replicas().await.unwrap(), listed(&[("a", 1), ("b", 0)]));
    b.announce("b", Duration::ZERO).await.unwrap();
    assert_eq!(a.replicas().await.unwrap(), listed(&[("a", 1)]));
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_made_together_take_contiguous_nonces_and_each_row_one() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    let fence = lease(&journal).await;
    let mut rows = Vec::new();
    for index in 0..30 {
        rows.push(new_row(&journal, &format!("w-{index}")).await.id);
    }
    for cancelled in [5, 17] {
        assert!(matches!(journal.cancel(&rows[cancelled]).await.unwrap(), Cancelled::Now(_)));
    }
    // Every row asked for at once (two of them twice), so that they are made in batches.
    let asked: Vec<&String> = rows.iter().chain([&rows[3], &rows[20]]).collect();
    let claims: Vec<_> = asked
        .iter()
        .map(|id| {
            let (journal, fence, id) = (journal.clone(), fence.clone(), (*id).clone());
            tokio::spawn(async move { (id.clone(), journal.claim(&fence, &id, 0, None).await.unwrap()) })
        })
        .collect();
    let mut nonces = std::collections::BTreeMap::new();
    let mut refused = Vec::new();
    for claim in claims {
        match claim.await.unwrap() {
            (id, Claim::Claimed { nonce, nonces: after }) => {
                assert!(after.next() > nonce && after.gaps().is_empty());
                assert_eq!(nonces.insert(nonce, id), None, "nonce {nonce} taken twice");
            }
            (id, Claim::NotAccepted) => refused.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(nonces.keys().copied().collect::<Vec<_>>(), (0..28).collect::<Vec<_>>());
    refused.sort();
    let mut expected = vec![rows[3].clone(), rows[5].clone(), rows[17].clone(), rows[20].clone()];
    expected.sort();
    assert_eq!(refused, expected, "the cancelled rows, and the second claim of a row");
    for (nonce, id) in &nonces {
        let stored = journal.get(id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.nonce), (Status::Signing, Some(*nonce)));
    }
    assert_eq!(journal.recover_nonces(&fence, 0).await.unwrap().next(), 28);
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_status_writes_made_together_are_each_answered_as_alone() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    let fence = lease(&journal).await;
    let mut rows = Vec::new();
    for index in 0..12 {
        let id = new_row(&journal, &format!("w-{index}")).await.id;
        assert!(
            matches!(journal.claim(&fence, &id, 0, None).await.unwrap(), Claim::Claimed { nonce, .. } if nonce == index)
        );
        rows.push(id);
    }
    // At once: each row's transaction (row 0's twice), one with another nonce than its row's, one for no row;
    // then a second transaction for each, one of which PostgreSQL refuses.
    let add = |id: &str, nonce: u64, attempt: Attempt| {
        let (journal, fence, id) = (journal.clone(), fence.clone(), id.to_owned());
        tokio::spawn(async move { journal.add_attempt(&fence, &id, nonce, attempt).await })
    };
    let mut adds: Vec<_> =
        (0..12u8).map(|index| add(&rows[usize::from(index)], u64::from(index), attempt(index, 10))).collect();
    adds.push(add(&rows[0], 0, attempt(0, 10)));
    let wrong = add(&rows[1], 7, attempt(99, 10));
    let missing = add("no-such-row", 0, attempt(98, 10));
    for added in adds {
        added.await.unwrap().unwrap();
    }
    assert!(matches!(wrong.await.unwrap(), Err(JournalError::Refused(ref why)) if why.contains("holds nonce Some(1)")));
    assert!(matches!(missing.await.unwrap(), Err(JournalError::Refused(ref why)) if why.contains("no row")));
    let client = database.connect().await;
    client.batch_execute("ALTER TABLE attempts ADD CONSTRAINT not_five CHECK (length(raw) <> 5)").await.unwrap();
    let five = Attempt { raw: vec![1; 5].into(), ..attempt(200, 20) };
    let seconds: Vec<_> = (0..12u8)
        .map(|index| {
            let second = if index == 3 { five.clone() } else { attempt(100 + index, 20) };
            add(&rows[usize::from(index)], u64::from(index), second)
        })
        .collect();
    for (index, added) in seconds.into_iter().enumerate() {
        match added.await.unwrap() {
            Err(JournalError::Postgres(why)) if index == 3 => assert!(why.contains("not_five"), "{why}"),
            other => assert!(other.is_ok() && index != 3, "{index}: {other:?}"),
        }
    }
    // Status writes at once, a row's in the order asked: submitted, then mined.
    let marks: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let (journal, fence, id) = (journal.clone(), fence.clone(), id.clone());
            tokio::spawn(async move {
                journal.mark_submitted(&fence, &id).await?;
                if index % 2 == 0 {
                    let hash = B256::repeat_byte(u8::try_from(index).unwrap());
                    journal.mark_mined(&fence, &id, hash, 5, hash, MinedAs::Paid, index % 4 == 0).await?;
                }
                Ok::<_, JournalError>(())
            })
        })
        .collect();
    for mark in marks {
        mark.await.unwrap().unwrap();
    }
    for (index, id) in rows.iter().enumerate() {
        let stored = journal.get(id).await.unwrap().unwrap();
        let expected = match index {
            _ if index % 4 == 0 => Status::Confirmed,
            _ if index % 2 == 0 => Status::Mined,
            _ => Status::Submitted,
        };
        assert_eq!((stored.status, stored.attempts.len()), (expected, if index == 3 { 1 } else { 2 }), "{index}");
        assert_eq!(stored.attempts[0], attempt(u8::try_from(index).unwrap(), 10));
    }
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_postgres_refuses_fails_alone_in_its_batch() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    // PostgreSQL's text holds no NUL: the idempotency key (or id) a client sent with one is refused.
    let inserts: Vec<_> = ["a", "b\0", "c", "d", "e"]
        .into_iter()
        .map(|key| {
            let journal = journal.clone();
            tokio::spawn(async move { (key, journal.insert(withdrawal(key, 1), allow()).await) })
        })
        .collect();
    let mut ids = Vec::new();
    for insert in inserts {
        match insert.await.unwrap() {
            ("b\0", refused) => assert!(matches!(refused, Err(JournalError::Postgres(_))), "{refused:?}"),
            (_, Ok(Inserted::New(row))) => ids.push(row.id),
            other => panic!("{other:?}"),
        }
    }
    let gets: Vec<_> = ids
        .iter()
        .map(String::as_str)
        .chain(["no\0such"])
        .map(|id| {
            let (journal, id) = (journal.clone(), id.to_owned());
            tokio::spawn(async move { (id.clone(), journal.get(&id).await) })
        })
        .collect();
    for get in gets {
        match get.await.unwrap() {
            (id, Ok(Some(row))) => assert_eq!(row.id, id),
            (id, refused) => assert!(id.contains('\0') && matches!(refused, Err(JournalError::Postgres(_)))),
        }
    }
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_two_pools_take_distinct_contiguous_nonces() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    let fence = lease(&a).await;
    let mut rows = Vec::new();
    for index in 0..60 {
        rows.push(new_row(&a, &format!("w-{index}")).await.id);
    }
    let claims: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let journal = if index % 2 == 0 { a.clone() } else { b.clone() };
            let (fence, id) = (fence.clone(), id.clone());
            tokio::spawn(async move { journal.claim(&fence, &id, 100, None).await })
        })
        .collect();
    let mut nonces = Vec::new();
    for claim in claims {
        let Claim::Claimed { nonce, .. } = claim.await.unwrap().unwrap() else { panic!() };
        nonces.push(nonce);
    }
    nonces.sort_unstable();
    assert_eq!(nonces, (100..160).collect::<Vec<_>>());
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_store_one_row_per_idempotency_key_and_cannot_both_pass_a_daily_limit() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    // One idempotency key, asked on both replicas at once (for two keys: two limit locks).
    let inserts: Vec<_> = (0..20)
        .map(|index| {
            let journal = if index % 2 == 0 { a.clone() } else { b.clone() };
            let key = if index % 4 < 2 { "hot" } else { "warm" };
            let new = NewWithdrawal { key: key.into(), ..withdrawal("same", 1) };
            tokio::spawn(async move { journal.insert(new, allow()).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut new = 0;
    for insert in inserts {
        match insert.await.unwrap().unwrap() {
            Inserted::New(row) => {
                new += 1;
                ids.push(row.id);
            }
            Inserted::Existing(row) => ids.push(row.id),
            Inserted::Refused(denial) => panic!("{denial}"),
        }
    }
    assert_eq!(new, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer is the one row");
    let client = database.connect().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!((count("SELECT count(*) FROM withdrawals").await, count("SELECT count(*) FROM spends").await), (1, 1));
    // A daily limit of 10 (5 already counted if the row stored is key `hot`'s), 30 requests of 1 on two
    // replicas: exactly what is left passes.
    let already = count("SELECT count(*) * 5 FROM withdrawals WHERE key = 'hot'").await;
    let limited = || LimitCheck {
        assets: vec![Asset::Ether],
        check: Box::new(|spent| {
            if spent.get(&Asset::Ether).copied().unwrap_or_default() + U256::from(1) > U256::from(10) {
                return Err(Denial { rule: Rule::DailyLimit, message: "over".into() });
            }
            Ok(vec![(Asset::Ether, U256::from(1))])
        }),
    };
    let requests: Vec<_> = (0..30)
        .map(|index| {
            let journal = if index % 2 == 0 { a.clone() } else { b.clone() };
            let check = limited();
            tokio::spawn(async move {
                if index % 3 == 0 {
                    journal.record_spends("hot", &format!("permit-{index}"), check).await.unwrap().is_ok()
                } else {
                    let inserted = journal.insert(withdrawal(&format!("w-{index}"), 1), check).await.unwrap();
                    matches!(inserted, Inserted::New(_))
                }
            })
        })
        .collect();
    let mut passed = 0;
    for request in requests {
        passed += usize::from(request.await.unwrap());
    }
    assert_eq!(i64::try_from(passed).unwrap(), 10 - already);
    let total: String =
        client.query_one("SELECT sum(amount)::text FROM spends WHERE key = 'hot'", &[]).await.unwrap().get(0);
    assert_eq!(total, "10");
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let Some(database) = TestDatabase::create().await else { return };
    let starts = (0..4).map(|_| PostgresJournal::connect(&database.url));
    let journals: Vec<PostgresJournal> =
        futures_util::future::join_all(starts).await.into_iter().collect::<Result<_, _>>().unwrap();
    let client = database.connect().await;
    let versions: Vec<i32> =
        client.query("SELECT version FROM ethkms_schema", &[]).await.unwrap().iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, [PostgresJournal::SCHEMA_VERSION]);
    for journal in &journals {
        journal.close();
    }
    // Reconnecting to a current schema changes nothing.
    journal(&database).await.close();
    let newer = PostgresJournal::SCHEMA_VERSION + 1;
    client.execute("UPDATE ethkms_schema SET version = $1", &[&newer]).await.unwrap();
    let error = PostgresJournal::connect(&database.url).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("version {newer}, newer than"))
            && error.contains(&format!("({})", PostgresJournal::SCHEMA_VERSION))
            && !error.contains('\n'),
        "{error}"
    );
    // Tables of the same name that are not the journal's.
    let other = TestDatabase::create().await.unwrap();
    other.connect().await.batch_execute("CREATE TABLE leases (key TEXT PRIMARY KEY)").await.unwrap();
    let error = PostgresJournal::connect(&other.url).await.unwrap_err().to_string();
    assert!(error.contains("leases"), "{error}");
}

mod replicas;
