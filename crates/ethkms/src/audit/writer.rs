//! [`AuditWriter`]: one audit log shared by many async writers, with group commit — a thread takes what
//! is queued, appends it with one write and one `fsync`, then answers every writer of the batch.
//!
//! A record is durable when [`AuditWriter::append`] returns `Ok`, exactly as with
//! [`AuditLog::append`]; under load, one flush covers many records instead of one each, and no async
//! worker thread ever waits on the disk.
//!
//! ```
//! use ethkms::audit::{AuditLog, AuditWriter, verify};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let path = std::env::temp_dir().join(format!("ethkms-audit-writer-doc-{}.jsonl", std::process::id()));
//! # let _ = std::fs::remove_file(&path);
//! let writer = AuditWriter::spawn(AuditLog::open(&path)?)?;
//! let (a, b) = tokio::join!(
//!     writer.append(serde_json::json!({ "kind": "signature", "n": 1 })),
//!     writer.append(serde_json::json!({ "kind": "signature", "n": 2 })),
//! );
//! assert_ne!(a?, b?);
//! assert_eq!(verify(&path)?.records, 2);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{AuditError, AuditLog};

/// Records waiting for the writer thread at most; more writers wait their turn to queue.
const QUEUE: usize = 4096;

/// Records appended with one write and one flush at most.
const MAX_BATCH: usize = 512;

struct Job {
    event: Value,
    answer: oneshot::Sender<Result<String, AuditError>>,
}

/// An audit log owned by a thread of its own, appended to from async code with group commit. Cheap to
/// clone; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct AuditWriter {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWriter").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Hands `log` to a new thread that appends what is sent to it.
    ///
    /// # Errors
    /// [`AuditError::Io`] if the thread cannot be started.
    pub fn spawn(mut log: AuditLog) -> Result<Self, AuditError> {
        let path = log.path().to_path_buf();
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("ethkms-audit".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(job) = queue.try_recv()
                    {
                        batch.push(job);
                    }
                    let (events, answers): (Vec<Value>, Vec<_>) =
                        batch.into_iter().map(|job| (job.event, job.answer)).unzip();
                    match log.append_all(events) {
                        Ok(hashes) => {
                            for (answer, hash) in answers.into_iter().zip(hashes) {
                                let _ = answer.send(Ok(hash));
                            }
                        }
                        Err(error) => {
                            let (kind, text) = match &error {
                                AuditError::Io { source, .. } => (source.kind(), source.to_string()),
                                other => (std::io::ErrorKind::Other, other.to_string()),
                            };
                            for answer in answers {
                                let source = std::io::Error::new(kind, text.clone());
                                let _ = answer.send(Err(AuditError::Io { path: log.path().to_path_buf(), source }));
                            }
                        }
                    }
                }
            })
            .map_err(|source| AuditError::Io { path: path.clone(), source })?;
        Ok(Self { path, jobs })
    }

    /// Appends one record for `event`; returns its hash once it is flushed to disk.
    ///
    /// # Errors
    /// [`AuditError::Io`]; the record is then not in the log, and the caller must not act on it.
    pub async fn append(&self, event: Value) -> Result<String, AuditError> {
        let stopped = || AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the audit log's writer thread has stopped"),
        };
        let (answer, answered) = oneshot::channel();
        self.jobs.send(Job { event, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_chain_in_the_order_they_were_taken() {
        let path = std::env::temp_dir().join(format!("ethkms-audit-writer-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let writer = AuditWriter::spawn(AuditLog::open(&path).unwrap()).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|index| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.append(serde_json::json!({ "index": index })).await })
            })
            .collect();
        let mut hashes = std::collections::HashSet::new();
        for task in tasks {
            assert!(hashes.insert(task.await.unwrap().unwrap()));
        }
        let verified = verify(&path).unwrap();
        assert_eq!(verified.records, 200);
        // The writer goes on where the chain ends, and a reopened log too.
        let last = writer.append(serde_json::json!({ "index": 200 })).await.unwrap();
        drop(writer);
        assert_eq!(verify(&path).unwrap().head, last);
        let mut reopened = AuditLog::open(&path).unwrap();
        reopened.append(serde_json::json!({ "index": 201 })).unwrap();
        assert_eq!(verify(&path).unwrap().records, 202);
        std::fs::remove_file(&path).unwrap();
    }
}
