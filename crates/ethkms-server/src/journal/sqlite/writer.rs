//! The SQLite journal's thread: it owns the connection, takes what is queued, runs each operation in a
//! savepoint of one transaction, commits, and answers every operation of the commit once it is durable.

use std::sync::mpsc;

use rusqlite::Connection;

pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Writes that may wait for the journal's thread at once; one more is refused ([`JournalError::Busy`]),
/// so that a flood of requests cannot grow the queue without bound.
pub(crate) const QUEUE: usize = 8192;

pub(super) type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Reply + Send>;

pub(super) enum Message {
    Job(Job),
    Close,
}

/// The most operations one commit holds.
pub(super) const MAX_BATCH: usize = 512;

/// Why an operation did not happen.
pub(super) enum Failure {
    Sqlite(rusqlite::Error),
    Commit(String),
    /// A conditional write whose condition did not hold.
    Refused(String),
    /// An engine write whose lease is no longer the key's.
    Fenced {
        key: String,
        epoch: u64,
    },
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// The journal thread: takes what is queued, runs it in one transaction, commits, answers.
pub(super) fn writer(connection: &Connection, queue: &mpsc::Receiver<Message>) {
    let mut open = true;
    while open && let Ok(first) = queue.recv() {
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => jobs.push(job),
                Message::Close => {
                    open = false;
                    break;
                }
            }
            if jobs.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            let reason = format!("cannot begin a transaction, nothing was stored: {error}");
            for job in jobs {
                job(Err(&reason))(Err(reason.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Ok(connection))).collect();
        let committed = connection.execute_batch("COMMIT").map_err(|error| {
            let _ = connection.execute_batch("ROLLBACK");
            format!("commit failed, nothing of it was stored: {error}")
        });
        for reply in replies {
            reply(committed.clone());
        }
    }
}

/// Runs `operation` inside a savepoint, undone if it fails.
pub(super) fn savepoint<R>(
    connection: &Connection,
    operation: impl FnOnce(&Connection) -> Result<R, Failure>,
) -> Result<R, Failure> {
    connection.prepare_cached("SAVEPOINT operation")?.execute([])?;
    match operation(connection) {
        Ok(value) => {
            connection.prepare_cached("RELEASE operation")?.execute([])?;
            Ok(value)
        }
        Err(error) => {
            connection.execute_batch("ROLLBACK TO operation; RELEASE operation")?;
            Err(error)
        }
    }
}
