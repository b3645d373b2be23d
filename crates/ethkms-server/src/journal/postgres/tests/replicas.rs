//! Tests of the PostgreSQL journal among replicas and failures: wake-ups between replicas (and after the
//! listener's connection is terminated), a pool whose connections PostgreSQL drops (as a restart does),
//! writes retried after a lost answer, closing, and passwords kept out of every message.

use std::time::Duration;

use tokio::sync::broadcast;

use super::{LONG, TestDatabase, journal};
use crate::journal::conformance::{allow, attempt, lease, new_row, withdrawal};
use crate::journal::{
    Cancelled, Claim, Inserted, JournalError, JournalStore, NewRpc, NewWithdrawal, PostgresJournal, Release,
};

/// The next key woken within a few seconds.
async fn woken(receiver: &mut broadcast::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await.expect("no wake-up within 10 s").unwrap()
}

/// Terminates the listener connections of `database`; returns how many.
async fn terminate_listeners(database: &TestDatabase) -> i64 {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE datname = current_database() AND application_name = $1";
    database.connect().await.query_one(sql, &[&super::listener::APPLICATION_NAME]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_reach_other_replicas_and_the_listener_survives_losing_its_connection() {
    let Some(database) = TestDatabase::create().await else { return };
    let (a, b) = (journal(&database).await, journal(&database).await);
    let mut wake_ups = a.wake_ups().unwrap();
    let row = new_row(&b, "w-1").await;
    assert_eq!(woken(&mut wake_ups).await, "hot");
    let call = NewRpc {
        id: "tx-1".into(),
        client: "wallet".into(),
        key: "cold".into(),
        recipient: alloy_primitives::Address::ZERO,
        amount: alloy_primitives::U256::ZERO,
        request: "{}".into(),
    };
    b.insert_rpc(call, allow()).await.unwrap().unwrap();
    assert_eq!(woken(&mut wake_ups).await, "cold");
    // A cancellation request is work for the key's owner too; a refused insert is not.
    let fence = lease(&b).await;
    assert!(matches!(b.claim(&fence, &row.id, 0, None).await.unwrap(), Claim::Claimed { .. }));
    assert_eq!(b.cancel(&row.id).await.unwrap(), Cancelled::Requested);
    assert_eq!(woken(&mut wake_ups).await, "hot");
    let denied = crate::policy::Denial { rule: crate::policy::Rule::MaxValue, message: "no".into() };
    let check = crate::journal::LimitCheck { assets: Vec::new(), check: Box::new(move |_| Err(denied)) };
    assert!(matches!(b.insert(withdrawal("w-2", 1), check).await.unwrap(), Inserted::Refused(_)));
    // The listeners' connections terminated (as by a restart): they come back, wake every key with work
    // waiting (what was notified meanwhile is lost), and receive new notifications.
    assert_eq!(terminate_listeners(&database).await, 2);
    let mut caught_up = Vec::new();
    while caught_up.len() < 2 {
        caught_up.push(woken(&mut wake_ups).await);
    }
    caught_up.sort();
    assert_eq!(caught_up, ["cold", "hot"], "the keys with work waiting are woken after a reconnect");
    let warm = NewWithdrawal { key: "warm".into(), ..withdrawal("w-3", 1) };
    b.insert(warm, allow()).await.unwrap();
    assert_eq!(woken(&mut wake_ups).await, "warm");
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_replaces_connections_postgres_dropped_and_errors_say_what_failed() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    let fence = lease(&journal).await;
    // Several pooled connections open.
    let rows = futures_util::future::join_all((0..8).map(|index| {
        let journal = journal.clone();
        async move { new_row(&journal, &format!("w-{index}")).await }
    }))
    .await;
    let terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let client = database.connect().await;
    let terminated: i64 = client.query_one(terminate, &[]).await.unwrap().get(0);
    assert!(terminated >= 2, "{terminated}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No restart of the replica: the next operations find live connections.
    journal.ping().await.unwrap();
    assert!(matches!(journal.claim(&fence, &rows[0].id, 0, None).await.unwrap(), Claim::Claimed { .. }));
    assert_eq!(journal.unfinished(Some("hot")).await.unwrap().len(), 8);
    // A statement that fails is an error naming PostgreSQL's reason, and nothing of it is stored.
    client.batch_execute("ALTER TABLE attempts ADD CONSTRAINT tiny CHECK (length(raw) < 2)").await.unwrap();
    let error = journal.add_attempt(&fence, &rows[0].id, 0, attempt(1, 1)).await.unwrap_err();
    assert!(matches!(error, JournalError::Postgres(ref message) if message.contains("tiny")), "{error}");
    let stored = journal.get(&rows[0].id).await.unwrap().unwrap();
    assert!(stored.attempts.is_empty() && stored.tx_hash.is_none());
    journal.close();
    assert!(matches!(journal.ping().await, Err(JournalError::Closed)));
    assert!(matches!(journal.get("x").await, Err(JournalError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_whose_first_answer_was_lost_changes_nothing_twice() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    let fence = lease(&journal).await;
    let (first, second) = (new_row(&journal, "w-1").await, new_row(&journal, "w-2").await);
    assert!(matches!(journal.claim(&fence, &first.id, 0, None).await.unwrap(), Claim::Claimed { nonce: 0, .. }));
    // The claim again: the row is claimed already (it is `signing` with its nonce, for recovery to resume).
    assert_eq!(journal.claim(&fence, &first.id, 0, None).await.unwrap(), Claim::NotAccepted);
    // The same signed transaction stored again: once.
    journal.add_attempt(&fence, &first.id, 0, attempt(1, 10)).await.unwrap();
    journal.add_attempt(&fence, &first.id, 0, attempt(1, 10)).await.unwrap();
    assert_eq!(journal.get(&first.id).await.unwrap().unwrap().attempts, [attempt(1, 10)]);
    // Failed and its nonce freed; the nonce reused by the next claim; the failure retried frees nothing.
    let (released, nonces) = journal.mark_failed(&fence, &first.id, "refused", Release::UNPAID).await.unwrap();
    assert_eq!((released.len(), nonces.next()), (1, 0));
    assert!(matches!(journal.claim(&fence, &second.id, 0, None).await.unwrap(), Claim::Claimed { nonce: 0, .. }));
    let (released, nonces) = journal.mark_failed(&fence, &first.id, "refused", Release::UNPAID).await.unwrap();
    assert_eq!((released.len(), nonces.next(), nonces.gaps()), (0, 1, vec![]), "nonce 0 is the second row's now");
    journal.mark_submitted(&fence, &second.id).await.unwrap();
    // An RPC transaction stored again under its id: the row stored first, its amount counted once.
    let call = NewRpc {
        id: "tx-retried".into(),
        client: "wallet".into(),
        key: "hot".into(),
        recipient: alloy_primitives::Address::ZERO,
        amount: alloy_primitives::U256::from(2),
        request: "{}".into(),
    };
    let stored = journal.insert_rpc(call.clone(), allow()).await.unwrap().unwrap();
    let again = journal.insert_rpc(call.clone(), allow()).await.unwrap().unwrap();
    assert_eq!(stored, again);
    assert_eq!(journal.release_spends("tx-retried").await.unwrap().len(), 1);
    let other = NewRpc { client: "someone-else".into(), ..call };
    assert!(matches!(journal.insert_rpc(other, allow()).await, Err(JournalError::Refused(_))));
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urls_password_never_shows() {
    let Some(database) = TestDatabase::create().await else { return };
    // Nothing listens on port 1: the error names the URL, without its password.
    let error = PostgresJournal::connect("postgres://ethkms:s3cret-pw@127.0.0.1:1/nope").await.unwrap_err().to_string();
    assert!(!error.contains("s3cret-pw") && error.contains("ethkms:***@127.0.0.1:1/nope"), "{error}");
    let error = PostgresJournal::connect("postgres://u:s3cret-pw@[::1/x").await.unwrap_err().to_string();
    assert!(!error.contains("s3cret-pw"), "{error}");
    // The test server trusts its clients (the password is not asked for): a journal connected with one.
    let (scheme, rest) = database.url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap_or(("postgres", rest));
    let url = format!("{scheme}://{user}:s3cret-pw@{host}");
    let journal = PostgresJournal::connect(&url).await.unwrap();
    let shown = format!("{journal:?}");
    assert!(!shown.contains("s3cret-pw") && shown.contains("PostgresJournal"), "{shown}");
    let missing = ethkms_test_support::postgres::database::database_url(&url, "ethkms_no_such_database");
    let error = PostgresJournal::connect(&missing).await.unwrap_err().to_string();
    assert!(!error.contains("s3cret-pw") && error.contains("ethkms_no_such_database"), "{error}");
    journal.close();
}

#[tokio::test]
async fn journals_stop_their_listener_when_dropped() {
    let Some(database) = TestDatabase::create().await else { return };
    let journal = journal(&database).await;
    let mut receiver = journal.wake_ups().unwrap();
    drop(journal);
    let closed = tokio::time::timeout(LONG, receiver.recv()).await.unwrap();
    assert!(matches!(closed, Err(broadcast::error::RecvError::Closed)), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_inside_a_fenced_write_holds_up_a_takeover_only_briefly() {
    let Some(database) = TestDatabase::create().await else { return };
    // The idle-in-transaction limit (2 s by default) shortened through the URL's options.
    let url = format!("{}?options=-c%20idle_in_transaction_session_timeout%3D1000", database.url);
    let (paused, other) = (PostgresJournal::connect(&url).await.unwrap(), journal(&database).await);
    let fence = lease(&paused).await;
    let mut client = paused.inner.pool.get().await.unwrap();
    let transaction = client.transaction().await.unwrap();
    super::engine::fenced(&transaction, &fence).await.unwrap();
    // Paused here (as by SIGSTOP): the lease is released or runs out, another replica takes the key.
    paused.release_lease(&fence, "test").await.unwrap();
    let started = std::time::Instant::now();
    let epoch = other.acquire_lease("hot", "other", LONG).await.unwrap().unwrap();
    assert_eq!(epoch, fence.epoch + 1);
    let waited = started.elapsed();
    assert!(waited > Duration::from_millis(800) && waited < Duration::from_secs(10), "{waited:?}");
    // Resumed: its transaction is gone, nothing of it stored; its pool goes on with new connections.
    assert!(transaction.commit().await.is_err());
    drop(client);
    paused.ping().await.unwrap();
    let late = paused.recover_nonces(&fence, 0).await;
    assert!(matches!(late, Err(JournalError::Fenced { .. })), "{late:?}");
    paused.close();
    other.close();
}
