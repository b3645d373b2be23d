//! Why a PostgreSQL operation did not happen ([`Failure`]), and its message without the URL's password
//! ([`Redact`]): a driver error could quote it.

use deadpool_postgres::PoolError;

/// Takes the URL's password out of messages (a driver error could quote it).
#[derive(Clone, Default)]
pub(super) struct Redact(pub(super) Option<String>);

impl Redact {
    pub(super) fn text(&self, text: &str) -> String {
        let text = text.replace('\n', "; ");
        match &self.0 {
            Some(password) if !password.is_empty() => text.replace(password.as_str(), "***"),
            _ => text,
        }
    }
}

/// Why an operation did not happen.
#[derive(Debug)]
pub(super) enum Failure {
    Postgres(tokio_postgres::Error),
    /// The database holds something this version cannot use.
    Invalid(String),
    /// A conditional write whose condition did not hold.
    Refused(String),
    /// An engine write whose lease is no longer the key's.
    Fenced {
        key: String,
        epoch: u64,
    },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error)
    }
}

/// `error` and its causes on one line (the driver's own message leaves the server's out).
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The one-line message of `failure`, without the password.
pub(super) fn message(redact: &Redact, failure: Failure) -> String {
    match failure {
        Failure::Postgres(error) => redact.text(&describe(&error)),
        Failure::Invalid(what) | Failure::Refused(what) => redact.text(&what),
        Failure::Fenced { key, epoch } => format!("key `{key}`: epoch {epoch} is no longer current"),
    }
}

/// The one-line message of a pool that gave no connection, without the password.
pub(super) fn pool_message(redact: &Redact, error: &PoolError) -> String {
    redact.text(&format!("no connection to PostgreSQL: {}", describe(error)))
}
