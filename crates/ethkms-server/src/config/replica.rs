//! Where the journal is — a SQLite file for one server, or a PostgreSQL database shared by replicas — and
//! this replica's name and lease time.
//!
//! ```toml
//! journal = "postgres://ethkms@db.internal:5432/ethkms"   # or a path: a SQLite file, one server
//! [replica]
//! name = "withdrawals-a"   # the default: the host name and the process id
//! lease_seconds = 10       # the default: a key whose owner stops renewing moves after this
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The journal: every transaction the service signs, with its nonce, and every amount counted against a
/// daily limit.
#[derive(Clone, PartialEq, Eq)]
pub enum JournalLocation {
    /// A SQLite file (WAL mode), locked by the one server using it: the embedded default.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL) that several replicas share.
    Postgres(String),
}

impl JournalLocation {
    fn parse(text: String) -> Result<Self, ConfigError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text));
        }
        if text.contains("://") {
            return Err(ConfigError(format!(
                "journal: `{}` is neither a file path nor a postgres:// URL",
                redact_password(&text)
            )));
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }
}

/// The URL's password (and nothing else) hidden: `postgres://user:***@host/db`.
#[must_use]
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(authority, tail)| (authority, Some(tail)));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password can also be a query parameter.
    let tail = tail.map(|tail| match tail.split_once('?') {
        Some((path, query)) if query.to_ascii_lowercase().contains("password") => format!("{path}?***"),
        _ => tail.to_owned(),
    });
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// A PostgreSQL URL's password never shows.
impl fmt::Debug for JournalLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_password(url)).finish(),
        }
    }
}

/// This replica among those sharing a journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// Its name: who holds a lease, which replica stored a transaction, and on its audit records.
    pub name: String,
    /// How long a key's lease lasts unless renewed (renewed every third of it): how soon a key moves
    /// when its owner stops.
    pub lease: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "ethkms".into());
        Self { name: format!("{host}-{}", std::process::id()), lease: Duration::from_secs(10) }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplica {
    name: Option<String>,
    lease_seconds: Option<u64>,
}

pub(super) fn journal(raw: Option<String>) -> Result<Option<JournalLocation>, ConfigError> {
    raw.map(JournalLocation::parse).transpose()
}

pub(super) fn replica(raw: RawReplica) -> Result<ReplicaSettings, ConfigError> {
    let defaults = ReplicaSettings::default();
    let name = raw.name.unwrap_or(defaults.name);
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ConfigError("replica.name: 1 to 100 printable characters".into()));
    }
    let lease = match raw.lease_seconds {
        Some(0) => return Err(ConfigError("replica.lease_seconds: must be at least 1".into())),
        Some(seconds) => Duration::from_secs(seconds),
        None => defaults.lease,
    };
    Ok(ReplicaSettings { name, lease })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_selects_postgres_and_its_password_never_shows() {
        let url = "postgres://ethkms:s3cret@db:5432/ethkms".to_owned();
        let location = journal(Some(url.clone())).unwrap().unwrap();
        assert_eq!(location, JournalLocation::Postgres(url));
        let shown = format!("{location:?}");
        assert!(!shown.contains("s3cret") && shown.contains("ethkms:***@db:5432/ethkms"), "{shown}");
        assert_eq!(redact_password("postgresql://db/ethkms?password=x"), "postgresql://db/ethkms?***");
        assert_eq!(redact_password("postgres://user@db/ethkms"), "postgres://user@db/ethkms");
        assert_eq!(
            journal(Some("/var/lib/ethkms/journal.sqlite".into())).unwrap(),
            Some(JournalLocation::Sqlite("/var/lib/ethkms/journal.sqlite".into()))
        );
        let error = journal(Some("mysql://u:pw@db/x".into())).unwrap_err().to_string();
        assert!(error.contains("neither a file path") && !error.contains("pw"), "{error}");
    }

    #[test]
    fn replica_names_and_leases_are_checked() {
        let settings = replica(RawReplica { name: Some("a".into()), lease_seconds: Some(3) }).unwrap();
        assert_eq!(settings, ReplicaSettings { name: "a".into(), lease: Duration::from_secs(3) });
        assert!(replica(RawReplica { name: None, lease_seconds: Some(0) }).is_err());
        assert!(replica(RawReplica { name: Some(String::new()), lease_seconds: None }).is_err());
        let default = replica(RawReplica::default()).unwrap();
        assert!(default.name.ends_with(&std::process::id().to_string()), "{default:?}");
    }
}
