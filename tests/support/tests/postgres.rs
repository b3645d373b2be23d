//! The PostgreSQL helpers against the server of `cargo xtask services up`: a database of a test's own
//! (created, isolated, dropped), and the server stopped, started and restarted under a connected client.
//!
//! They restart the shared server, so they run one at a time here ([`SERIAL`]) and alone in nextest
//! (the `shared-postgres` group of `.config/nextest.toml`). Skipped without the services, failing in CI.

use std::time::Duration;

use ethkms_test_support::postgres::database::connect;
use ethkms_test_support::postgres::{ServerControl, TestDatabase};
use ethkms_test_support::services::service_from_env;

/// One test at a time: a restart would break a sibling's connection.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the server lists a database named `name`.
async fn database_exists(server_url: &str, name: &str) -> bool {
    let client = connect(server_url).await;
    let row = client.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name]).await.unwrap();
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn a_test_database_is_its_own_and_is_dropped_after_the_test() {
    let _serial = SERIAL.lock().await;
    let Some(server_url) = service_from_env("ETHKMS_TEST_POSTGRES_URL", "PostgreSQL") else { return };
    let first = TestDatabase::create_on(&server_url).await;
    let second = TestDatabase::create_on(&server_url).await;
    assert_ne!(first.name, second.name);
    assert!(first.url.ends_with(&format!("/{}", first.name)), "{}", first.url);

    let client = first.connect().await;
    client
        .batch_execute("CREATE TABLE leases (key TEXT PRIMARY KEY); INSERT INTO leases VALUES ('hot')")
        .await
        .unwrap();
    let row = client.query_one("SELECT current_database(), count(*) FROM leases", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), first.name);
    assert_eq!(row.get::<_, i64>(1), 1);
    // The other database has no such table: tests sharing the server do not see each other's journals.
    let other = second.connect().await;
    assert!(other.query("SELECT * FROM leases", &[]).await.is_err());

    // Dropped even with a client still connected (WITH (FORCE)), as a test's replicas may still be.
    let name = first.name.clone();
    drop(first);
    assert!(!database_exists(&server_url, &name).await, "{name} was not dropped");
    assert!(database_exists(&server_url, &second.name).await);
    drop(client);
}

#[tokio::test]
async fn the_server_restarts_under_a_connected_client() {
    let _serial = SERIAL.lock().await;
    let Some(database) = TestDatabase::create().await else { return };
    let Some(control) = ServerControl::from_env() else { return };
    let before = control.server_pid().expect("the server runs: postmaster.pid names it");
    let client = database.connect().await;
    client.batch_execute("CREATE TABLE kept (n INTEGER); INSERT INTO kept VALUES (7)").await.unwrap();

    let restarting = control.clone();
    tokio::task::spawn_blocking(move || restarting.restart()).await.unwrap();

    let after = control.server_pid().expect("the server runs again");
    assert_ne!(before, after, "a new server process");
    // The old connection was ended by the restart; a new one sees what was committed before it.
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the old connection survived a restart");
    let again = database.connect().await;
    let row = again.query_one("SELECT n FROM kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_until_it_is_started_again() {
    let _serial = SERIAL.lock().await;
    let Some(database) = TestDatabase::create().await else { return };
    let Some(control) = ServerControl::from_env() else { return };

    let (started_by_the_guard, refused) = {
        let control = control.clone();
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || {
            let stopped = control.stop();
            assert_eq!(control.server_pid(), None, "postmaster.pid is gone once the server stopped");
            // A connection attempt, on a runtime of this blocking thread's own.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let refused = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .await
                    .map_or(true, |connected| connected.is_err())
            });
            // The guard starts the server again when dropped: here, by the end of this thread's work.
            drop(stopped);
            (control.server_pid().is_some(), refused)
        })
        .await
        .unwrap()
    };
    assert!(refused, "a connection succeeded while the server was stopped");
    assert!(started_by_the_guard, "the guard's drop started the server again");
    let client = database.connect().await;
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);

    // And explicitly: stop, then start through the guard.
    let control_for_start = control.clone();
    tokio::task::spawn_blocking(move || control_for_start.stop().start()).await.unwrap();
    assert!(control.server_pid().is_some());
    assert_eq!(database.connect().await.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
}
