//! PostgreSQL for tests: a server named by `ETHKMS_TEST_POSTGRES_URL`, or the machine's PostgreSQL 15
//! binaries (`initdb`, `postgres`, `pg_ctl`), from which a test starts a cluster of its own.
//!
//! Binaries are looked for in `ETHKMS_TEST_POSTGRES_BIN` (a directory) if set, then in Debian's
//! `/usr/lib/postgresql/15/bin`, then on `PATH`; a directory counts only if it holds all three and its
//! `postgres --version` says major version 15. The server refuses to run as root: run the binaries as
//! the `postgres` user (`runuser -u postgres -- …`) in a directory that user owns. Without either, install
//! them (`apt-get install postgresql-15`) or point the tests at a server with `ETHKMS_TEST_POSTGRES_URL`.
//!
//! On that server, `database` (feature `postgres`) gives each test a database of its own, and
//! `control` stops, starts and restarts it under a running test.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod control;
#[cfg(feature = "postgres")]
pub mod database;

pub use control::{ServerControl, Stopped};
#[cfg(feature = "postgres")]
pub use database::TestDatabase;

/// The major version the tests are written for.
pub const MAJOR: u32 = 15;

/// The binaries a cluster of the test's own needs.
const BINARIES: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// Where a test finds PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Postgres {
    /// A running server: `ETHKMS_TEST_POSTGRES_URL` (`postgres://` or `postgresql://`).
    Url(String),
    /// A directory holding PostgreSQL 15's `initdb`, `postgres` and `pg_ctl`.
    Binaries(Binaries),
}

/// The directory of PostgreSQL's binaries and the version they report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// The directory.
    pub directory: PathBuf,
    /// What `postgres --version` printed, for example `postgres (PostgreSQL) 15.18 (Debian …)`.
    pub version: String,
}

impl Binaries {
    /// The path of the binary `name` (`initdb`, `postgres`, `pg_ctl`) in [`Self::directory`].
    #[must_use]
    pub fn binary(&self, name: &str) -> PathBuf {
        self.directory.join(name)
    }
}

/// The major version in the output of `postgres --version` (`postgres (PostgreSQL) 15.18 …` gives 15).
#[must_use]
pub fn major_version(version_output: &str) -> Option<u32> {
    let rest = version_output.split_once("(PostgreSQL)")?.1.trim_start();
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Whether `url` names a PostgreSQL server (`postgres://` or `postgresql://`, with a host).
#[must_use]
pub fn is_postgres_url(url: &str) -> bool {
    ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/')))
}

/// The PostgreSQL 15 binaries in `directory`, if it holds all of them and `postgres --version` says 15.
#[must_use]
pub fn binaries_in(directory: &Path) -> Option<Binaries> {
    if !BINARIES.iter().all(|name| directory.join(name).is_file()) {
        return None;
    }
    let output = Command::new(directory.join("postgres")).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && major_version(&version) == Some(MAJOR))
        .then(|| Binaries { directory: directory.to_owned(), version })
}

/// The directories searched for binaries, in order: `ETHKMS_TEST_POSTGRES_BIN`, Debian's
/// `/usr/lib/postgresql/15/bin`, then every directory of `PATH`.
#[must_use]
pub fn search_path() -> Vec<PathBuf> {
    let mut directories: Vec<PathBuf> =
        std::env::var_os("ETHKMS_TEST_POSTGRES_BIN").map(PathBuf::from).into_iter().collect();
    directories.push(PathBuf::from(format!("/usr/lib/postgresql/{MAJOR}/bin")));
    if let Some(path) = std::env::var_os("PATH") {
        directories.extend(std::env::split_paths(&path));
    }
    directories
}

/// The first directory of [`search_path`] holding PostgreSQL 15's binaries.
#[must_use]
pub fn find_binaries() -> Option<Binaries> {
    search_path().iter().find_map(|directory| binaries_in(directory))
}

/// `ETHKMS_TEST_POSTGRES_URL` if set (and not empty), else the machine's PostgreSQL 15 binaries, else
/// `None`; see the [module documentation](self).
///
/// # Panics
/// If `ETHKMS_TEST_POSTGRES_URL` is set to something that is not a `postgres://` URL.
#[must_use]
pub fn discover() -> Option<Postgres> {
    match std::env::var("ETHKMS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            assert!(is_postgres_url(&url), "ETHKMS_TEST_POSTGRES_URL is not a postgres:// URL: {url}");
            Some(Postgres::Url(url))
        }
        _ => find_binaries().map(Postgres::Binaries),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAJOR, Postgres, binaries_in, discover, is_postgres_url, major_version};
    use crate::services::required;

    #[test]
    fn the_major_version_is_read_from_postgres_version() {
        assert_eq!(major_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(major_version("postgres (PostgreSQL) 16.4"), Some(16));
        assert_eq!(major_version("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_version("psql 15.18"), None);
        assert_eq!(major_version("postgres (PostgreSQL) beta"), None);
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        assert!(is_postgres_url("postgres://postgres@127.0.0.1:5432/ethkms"));
        assert!(is_postgres_url("postgresql://127.0.0.1/"));
        assert!(!is_postgres_url("http://127.0.0.1:5432"));
        assert!(!is_postgres_url("postgres://"));
        assert!(!is_postgres_url("127.0.0.1:5432"));
    }

    #[test]
    fn a_directory_without_the_binaries_is_not_taken() {
        assert_eq!(binaries_in(&std::env::temp_dir()), None);
    }

    /// On this machine (skipped only outside CI): PostgreSQL 15 is found, and what was found is real.
    #[test]
    fn postgres_15_is_found() {
        let Some(found) = discover() else {
            assert!(
                !required(),
                "no PostgreSQL {MAJOR}: install it (`apt-get install postgresql-{MAJOR}`) or set \
                 ETHKMS_TEST_POSTGRES_URL"
            );
            eprintln!("SKIPPED: no PostgreSQL {MAJOR} binaries and no ETHKMS_TEST_POSTGRES_URL");
            return;
        };
        match found {
            Postgres::Url(url) => {
                assert!(is_postgres_url(&url), "{url}");
                // The server answers, and is PostgreSQL 15 (`cargo xtask services up` starts one).
                let output = std::process::Command::new("psql")
                    .args([url.as_str(), "-tAc", "show server_version"])
                    .output()
                    .expect("psql (PostgreSQL's client) runs");
                let version = String::from_utf8_lossy(&output.stdout);
                assert!(output.status.success(), "{url}: {}", String::from_utf8_lossy(&output.stderr));
                assert!(version.trim().starts_with(&format!("{MAJOR}.")), "server version {version}");
            }
            Postgres::Binaries(binaries) => {
                for name in ["initdb", "postgres", "pg_ctl"] {
                    assert!(binaries.binary(name).is_file(), "{}", binaries.binary(name).display());
                }
                // Asked again, not taken from the discovery: the binary found really is PostgreSQL 15.
                let output = std::process::Command::new(binaries.binary("postgres")).arg("--version").output().unwrap();
                let version = String::from_utf8_lossy(&output.stdout);
                assert_eq!(major_version(&version), Some(MAJOR), "{version}");
                assert_eq!(version.trim(), binaries.version);
            }
        }
    }
}
