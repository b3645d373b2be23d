//! An append-only, hash-chained audit log: JSON lines, each record carrying the SHA-256 hash of the one
//! before it, written and flushed to disk (`fsync`) before [`AuditLog::append`] returns — so a signature
//! can be released only after its record is durable. [`verify`] walks a log and names the first record
//! that was edited, deleted, reordered or cut short.
//!
//! A record is a JSON object with `seq` (0, 1, 2, …), `time` (Unix milliseconds), `prev` (the previous
//! record's `hash`; 64 zeros for the first), `event` (whatever the caller logs) and `hash`: the SHA-256 of
//! the record without `hash`, serialised with its keys sorted.
//!
//! A power cut while a record is written leaves a torn last line: bytes after the last newline. No caller
//! acted on that record (its `append` never returned), so [`AuditLog::open`] cuts the file back to the
//! last complete record and logs what it dropped; [`verify`] still reports the torn line. A broken record
//! anywhere else is never repaired: the log is refused.
//!
//! Many writers (a signing service's requests) share one log through an [`AuditWriter`]: a thread that
//! writes what is queued in one go and flushes it with one `fsync` (group commit), answering each writer
//! only once its record is on disk.
//!
//! ```
//! use ethkms::audit::{AuditLog, verify};
//!
//! let path = std::env::temp_dir().join(format!("ethkms-audit-doc-{}.jsonl", std::process::id()));
//! # let _ = std::fs::remove_file(&path);
//! let mut log = AuditLog::open(&path)?;
//! log.append(serde_json::json!({ "kind": "signature", "key": "alias/hot", "digest": "0x12…" }))?;
//! log.append(serde_json::json!({ "kind": "denial", "key": "alias/hot", "rule": "max_value" }))?;
//! assert_eq!(verify(&path)?.records, 2);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

mod writer;

pub use writer::AuditWriter;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What went wrong with an audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing the file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chain is broken at `line` (1-based): the record there, or one before it, was changed.
    #[error("audit log {path} is broken at line {line} (record {seq}): {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first line that does not fit the chain.
        line: usize,
        /// The record number expected there.
        seq: u64,
        /// What does not fit.
        reason: String,
    },
}

/// The result of a successful [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// How many records the log holds.
    pub records: u64,
    /// The hash of the last record ([`GENESIS`] for an empty log): keep it elsewhere to detect the
    /// removal of records from the end.
    pub head: String,
}

/// An audit log open for appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    head: String,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying the existing chain first: records are never
    /// appended to a broken log. A torn last line (no newline at the end of the file: a write cut short by
    /// a crash) is cut off first, with a warning naming how many bytes were dropped.
    ///
    /// # Errors
    /// [`AuditError::Broken`] for a log that does not verify, [`AuditError::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| AuditError::Io { path: path.clone(), source };
        if let Some(dropped) = cut_torn_tail(&path).map_err(io)? {
            tracing::warn!(
                path = %path.display(), dropped_bytes = dropped,
                "the audit log ended in a torn record (a write cut short by a crash); it was cut back to the last complete record"
            );
        }
        let verified = if path.exists() { verify(&path)? } else { Verified { records: 0, head: GENESIS.into() } };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        Ok(Self { path, file, next_seq: verified.records, head: verified.head })
    }

    /// Appends one record for `event` and flushes it to disk before returning its hash.
    ///
    /// # Errors
    /// [`AuditError::Io`]; the record is then not in the log, and the caller must not act on it.
    pub fn append(&mut self, event: Value) -> Result<String, AuditError> {
        let mut hashes = self.append_all(vec![event])?;
        Ok(hashes.pop().unwrap_or_default())
    }

    /// Appends one record for each of `events`, in order, with one write and one flush to disk; returns
    /// their hashes. All or none are in the log.
    ///
    /// # Errors
    /// [`AuditError::Io`]; none of the records is then in the log, and the caller must not act on them.
    pub fn append_all(&mut self, events: Vec<Value>) -> Result<Vec<String>, AuditError> {
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis());
        let time = u64::try_from(time).unwrap_or(u64::MAX);
        let (mut seq, mut head) = (self.next_seq, self.head.clone());
        let mut lines = String::new();
        let mut hashes = Vec::with_capacity(events.len());
        for event in events {
            let mut record = Map::new();
            record.insert("seq".into(), json!(seq));
            record.insert("time".into(), json!(time));
            record.insert("prev".into(), json!(head));
            record.insert("event".into(), event);
            let hash = record_hash(&record);
            record.insert("hash".into(), json!(hash));
            lines.push_str(&Value::Object(record).to_string());
            lines.push('\n');
            seq += 1;
            head.clone_from(&hash);
            hashes.push(hash);
        }
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        let length = self.file.metadata().map_err(io)?.len();
        if let Err(error) = self.file.write_all(lines.as_bytes()).and_then(|()| self.file.sync_data()) {
            // A part of the lines may be in the file (a full disk, say): take it back, so that the next
            // record, once the trouble passes, follows a complete one.
            let _ = self.file.set_len(length);
            return Err(io(error));
        }
        self.next_seq = seq;
        self.head = head;
        Ok(hashes)
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of the last record.
    #[must_use]
    pub fn head(&self) -> &str {
        &self.head
    }
}

/// Cuts the file at `path` back to its last newline if anything follows it, returning how many bytes
/// were dropped. A missing file is left alone.
fn cut_torn_tail(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    // Walk back from the end in blocks to the last newline.
    let mut end = length;
    let mut block = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let size = usize::try_from(end - start).unwrap_or(block.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..size])?;
        if let Some(at) = block[..size].iter().rposition(|byte| *byte == b'\n') {
            let keep = start + at as u64 + 1;
            return cut(&file, keep, length);
        }
        end = start;
    }
    cut(&file, 0, length)
}

fn cut(file: &File, keep: u64, length: u64) -> std::io::Result<Option<u64>> {
    if keep == length {
        return Ok(None);
    }
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(Some(length - keep))
}

/// The SHA-256 of a record without its `hash`, serialised with sorted keys, in hexadecimal.
fn record_hash(record: &Map<String, Value>) -> String {
    let mut without_hash = record.clone();
    without_hash.remove("hash");
    // serde_json's Map is ordered by key (no `preserve_order`): the serialisation is canonical.
    let bytes = Value::Object(without_hash).to_string();
    Sha256::digest(bytes.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Checks the whole chain of the log at `path`.
///
/// # Errors
/// [`AuditError::Broken`] naming the first line that does not fit — an edited record (its hash no longer
/// matches), a deleted or reordered one (the sequence number or `prev` does not follow), a line that is not
/// a record — or [`AuditError::Io`].
pub fn verify(path: impl AsRef<Path>) -> Result<Verified, AuditError> {
    let path = path.as_ref();
    let io = |source| AuditError::Io { path: path.to_path_buf(), source };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    let mut head = GENESIS.to_owned();
    let mut seq = 0u64;
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        let broken = |reason: String| AuditError::Broken { path: path.to_path_buf(), line: index + 1, seq, reason };
        let record: Map<String, Value> = match serde_json::from_str(&line) {
            Ok(Value::Object(record)) => record,
            Ok(_) => return Err(broken("not a JSON object".into())),
            Err(error) => return Err(broken(format!("not JSON ({error}); the line was cut short or altered"))),
        };
        if record.get("seq").and_then(Value::as_u64) != Some(seq) {
            return Err(broken(format!(
                "sequence number {} where {seq} was expected: a record before it was deleted or they were reordered",
                record.get("seq").map_or_else(|| "missing".into(), Value::to_string)
            )));
        }
        if record.get("prev").and_then(Value::as_str) != Some(head.as_str()) {
            return Err(broken("`prev` is not the previous record's hash: a record before it was replaced".into()));
        }
        let stored = record.get("hash").and_then(Value::as_str).unwrap_or_default().to_owned();
        if record_hash(&record) != stored {
            return Err(broken("its content does not match its hash: this record was edited".into()));
        }
        head = stored;
        seq += 1;
    }
    Ok(Verified { records: seq, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempLog(PathBuf);

    impl TempLog {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("ethkms-audit-{name}-{}.jsonl", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write_records(path: &Path, count: u64) {
        let mut log = AuditLog::open(path).unwrap();
        for index in 0..count {
            log.append(json!({ "kind": "signature", "index": index, "value": "1000" })).unwrap();
        }
    }

    fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
        change(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn broken_line(path: &Path) -> (usize, String) {
        match verify(path).unwrap_err() {
            AuditError::Broken { line, reason, .. } => (line, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_log_verifies_and_reopening_continues_the_chain() {
        let log = TempLog::new("reopen");
        write_records(&log.0, 3);
        let first = verify(&log.0).unwrap();
        assert_eq!(first.records, 3);
        write_records(&log.0, 2);
        let second = verify(&log.0).unwrap();
        assert_eq!(second.records, 5);
        assert_ne!(second.head, first.head);
    }

    #[test]
    fn an_edited_record_is_named() {
        let log = TempLog::new("edit");
        write_records(&log.0, 5);
        rewrite(&log.0, |lines| lines[2] = lines[2].replace("\"1000\"", "\"9000\""));
        let (line, reason) = broken_line(&log.0);
        assert_eq!(line, 3);
        assert!(reason.contains("edited"), "{reason}");
    }

    #[test]
    fn a_deleted_record_is_found_where_the_gap_is() {
        let log = TempLog::new("delete");
        write_records(&log.0, 5);
        rewrite(&log.0, |lines| {
            lines.remove(1);
        });
        let (line, reason) = broken_line(&log.0);
        assert_eq!(line, 2);
        assert!(reason.contains("deleted"), "{reason}");
    }

    #[test]
    fn a_replaced_record_and_a_cut_line_are_found() {
        let log = TempLog::new("replace");
        write_records(&log.0, 4);
        // A record rewritten with a correct hash of its own still breaks the next link.
        rewrite(&log.0, |lines| {
            let mut record: Map<String, Value> = serde_json::from_str(&lines[1]).unwrap();
            record.insert("event".into(), json!({ "kind": "signature", "value": "forged" }));
            let hash = record_hash(&record);
            record.insert("hash".into(), json!(hash));
            lines[1] = Value::Object(record).to_string();
        });
        assert_eq!(broken_line(&log.0).0, 3);
        let cut = TempLog::new("cut");
        write_records(&cut.0, 2);
        rewrite(&cut.0, |lines| lines[1].truncate(20));
        let (line, reason) = broken_line(&cut.0);
        assert_eq!(line, 2);
        assert!(reason.contains("not JSON"), "{reason}");
        assert!(matches!(AuditLog::open(&cut.0), Err(AuditError::Broken { .. })), "no appending to a broken log");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_at_open_and_the_chain_goes_on() {
        let log = TempLog::new("torn");
        write_records(&log.0, 3);
        let complete = std::fs::read(&log.0).unwrap();
        let before = verify(&log.0).unwrap();
        // A crash in the middle of the fourth record's write: part of a line, no newline.
        let mut torn = complete.clone();
        torn.extend_from_slice(br#"{"event":{"kind":"signature","index":3},"hash":"ab"#);
        std::fs::write(&log.0, &torn).unwrap();
        assert!(matches!(verify(&log.0), Err(AuditError::Broken { line: 4, .. })), "verify still names it");
        let mut reopened = AuditLog::open(&log.0).unwrap();
        assert_eq!(std::fs::read(&log.0).unwrap(), complete, "cut back to the last complete record");
        assert_eq!(reopened.head(), before.head);
        reopened.append(json!({ "kind": "signature", "index": 3 })).unwrap();
        assert_eq!(verify(&log.0).unwrap().records, 4);

        // Zeros left by a crash on some file systems are a torn tail too; a file of nothing but is emptied.
        let zeros = TempLog::new("zeros");
        std::fs::write(&zeros.0, [0u8; 5000]).unwrap();
        AuditLog::open(&zeros.0).unwrap().append(json!({ "kind": "first" })).unwrap();
        assert_eq!(verify(&zeros.0).unwrap().records, 1);
    }
}
