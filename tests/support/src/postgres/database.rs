//! A database of a test's own (`ethkms_<unique>`) on the PostgreSQL server `ETHKMS_TEST_POSTGRES_URL`
//! names, so that tests sharing that server never see each other's journals; and a client for the SQL a
//! test checks the journal with.
//!
//! The database is dropped when the [`TestDatabase`] is, unless the test is failing (panicking): then it
//! is kept, and its URL printed, for a look at what the journal holds.

use std::fmt;

use tokio_postgres::{Client, NoTls};

use crate::services::service_from_env;
use crate::unique;

/// A database created for one test; dropped with it, unless the test fails.
pub struct TestDatabase {
    /// Its name, `ethkms_<process id>_<count>_<nanoseconds>`.
    pub name: String,
    /// Its URL: the server's URL with the database's name as the path.
    pub url: String,
    /// The server's URL the database was created through (and is dropped through).
    server_url: String,
}

impl TestDatabase {
    /// A fresh database on the server of `ETHKMS_TEST_POSTGRES_URL`, or `None` to skip the test when the
    /// variable is not set (see [`service_from_env`]).
    ///
    /// # Panics
    /// If the variable is missing in CI (`ETHKMS_REQUIRE_SERVICES`), or the database cannot be created.
    pub async fn create() -> Option<Self> {
        let server_url = service_from_env("ETHKMS_TEST_POSTGRES_URL", "PostgreSQL")?;
        Some(Self::create_on(&server_url).await)
    }

    /// A fresh database on the server at `server_url` (a `postgres://` URL whose user may create
    /// databases).
    ///
    /// # Panics
    /// If the server does not answer or refuses `CREATE DATABASE`.
    pub async fn create_on(server_url: &str) -> Self {
        // `unique` adds digits and `-` only: with `_` instead, an identifier that needs no quoting.
        let name = unique("ethkms").replace('-', "_");
        let client = connect(server_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("CREATE DATABASE {name} on {server_url}: {error}"));
        let url = database_url(server_url, &name);
        Self { name, url, server_url: server_url.to_owned() }
    }

    /// A client of this database.
    ///
    /// # Panics
    /// As [`connect`].
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("TestDatabase").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the failing test's database is kept: psql {}", self.url);
            return;
        }
        // Drop runs outside any runtime, or inside one that must not be blocked: a thread of its own with
        // a runtime of its own. `WITH (FORCE)` ends what is still connected (a replica not yet reaped).
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&server_url, NoTls).await?;
                let connection = tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
                drop(client);
                let _ = connection.await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop the test database {}: {error}", self.name),
            Err(_) => eprintln!("could not drop the test database {}: the dropping thread panicked", self.name),
        }
    }
}

/// A client of the database at `url`, its connection driven by a task on the current runtime (it ends
/// when the client is dropped or the server goes away).
///
/// # Panics
/// If the server does not answer or refuses the connection; outside a Tokio runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|error| panic!("connecting to {url}: {error}"));
    tokio::spawn(async move {
        // A restart of the server ends the connection: expected in the tests that restart it.
        let _ = connection.await;
    });
    client
}

/// `server_url` with its database (the URL's path) replaced by `database`; user, host, port and
/// parameters kept: `postgres://u@h:1/postgres?sslmode=disable` → `postgres://u@h:1/NAME?sslmode=disable`.
///
/// # Panics
/// If `server_url` has no `scheme://`.
#[must_use]
pub fn database_url(server_url: &str, database: &str) -> String {
    let (scheme, rest) = server_url.split_once("://").expect("a postgres:// URL");
    let (location, query) = rest.split_once('?').map_or((rest, None), |(location, query)| (location, Some(query)));
    let authority = location.split_once('/').map_or(location, |(authority, _)| authority);
    let query = query.map(|query| format!("?{query}")).unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn the_database_replaces_the_path_only() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:55432/postgres", "x"),
            "postgres://postgres@127.0.0.1:55432/x"
        );
        assert_eq!(database_url("postgresql://h:1", "x"), "postgresql://h:1/x");
        assert_eq!(database_url("postgres://u:p@h:1/db?sslmode=disable", "x"), "postgres://u:p@h:1/x?sslmode=disable");
        assert_eq!(database_url("postgres://h/?application_name=a", "x"), "postgres://h/x?application_name=a");
    }
}
