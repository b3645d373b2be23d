//! Leases and nonces in the SQLite journal: who processes each key (one server per file, so a lease is
//! taken at once, with a new epoch), the fence every engine write checks, and the key's nonces allocated,
//! given back and recovered in the journal's transactions.

use std::ops::Range;
use std::time::Duration;

use alloy_primitives::Address;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{exec, load_existing, load_nonces, sql_u64, store_nonces};
use super::writer::Failure;
use super::{OPEN, SqliteJournal, millis, now_ms};
use crate::journal::{Claim, Fence, JournalError, LeaseRow, Nonces, Withdrawal};

impl SqliteJournal {
    pub(super) async fn take_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, JournalError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(move |connection| {
            // Only ever one server on a SQLite journal (the file is locked exclusively): a lease that has not
            // run out is a crashed predecessor's, and taken at once — with a new epoch all the same.
            let now = now_ms();
            let current: Option<i64> = connection
                .query_row("SELECT epoch FROM leases WHERE key = ?1", params![key], |row| row.get(0))
                .optional()?;
            let epoch = current.map_or(1, |epoch| epoch.saturating_add(1));
            exec(
                connection,
                "INSERT INTO leases (key, holder, epoch, expires_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET holder = ?2, epoch = ?3, expires_ms = ?4",
                params![key, holder, epoch, sql_u64(now.saturating_add(millis(ttl)))],
            )?;
            Ok(Some(u64::try_from(epoch).unwrap_or(0)))
        })
        .await
    }

    pub(super) async fn extend_lease(&self, fence: &Fence, holder: &str, ttl: Duration) -> Result<bool, JournalError> {
        let (fence, holder) = (fence.clone(), holder.to_owned());
        self.run(move |connection| {
            let changed = exec(
                connection,
                "UPDATE leases SET expires_ms = ?4 WHERE key = ?1 AND holder = ?2 AND epoch = ?3",
                params![fence.key, holder, sql_u64(fence.epoch), sql_u64(now_ms().saturating_add(millis(ttl)))],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    pub(super) async fn end_lease(&self, fence: &Fence, holder: &str) -> Result<(), JournalError> {
        let (fence, holder) = (fence.clone(), holder.to_owned());
        self.run(move |connection| {
            exec(
                connection,
                "UPDATE leases SET expires_ms = 0 WHERE key = ?1 AND holder = ?2 AND epoch = ?3",
                params![fence.key, holder, sql_u64(fence.epoch)],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn lease_rows(&self) -> Result<Vec<LeaseRow>, JournalError> {
        self.run(|connection| {
            let mut statement =
                connection.prepare_cached("SELECT key, holder, epoch, expires_ms FROM leases ORDER BY key")?;
            let rows = statement.query_map([], |row| {
                Ok(LeaseRow {
                    key: row.get(0)?,
                    holder: row.get(1)?,
                    epoch: row.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    expires_ms: row.get::<_, i64>(3)?.try_into().unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub(super) async fn recovered_nonces(&self, fence: &Fence, pending: u64) -> Result<Nonces, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let sql = format!("SELECT nonce FROM withdrawals WHERE key = ?1 AND nonce IS NOT NULL AND {OPEN}");
            let held = connection
                .prepare(&sql)?
                .query_map(params![fence.key], |row| row.get::<_, i64>(0))?
                .map(|nonce| nonce.map(|nonce| u64::try_from(nonce).unwrap_or(0)))
                .collect::<Result<_, _>>()?;
            let mut nonces = Nonces::default();
            nonces.recover(pending, &held);
            store_nonces(connection, &fence.key, &nonces)?;
            Ok(nonces)
        })
        .await
    }

    pub(super) async fn claim_with_nonce(
        &self,
        fence: &Fence,
        id: &str,
        pending: u64,
        wanted: Option<u64>,
    ) -> Result<Claim, JournalError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let open: bool = connection
                .query_row(
                    "SELECT COUNT(*) FROM withdrawals WHERE id = ?1 AND key = ?2 AND status = 'accepted' AND nonce IS NULL",
                    params![id, fence.key],
                    |row| row.get::<_, i64>(0),
                )
                .map(|count| count == 1)?;
            if !open {
                return Ok(Claim::NotAccepted);
            }
            let mut nonces = load_nonces(connection, &fence.key)?;
            nonces.observe_pending(pending);
            if let Some(wanted) = wanted
                && wanted != nonces.peek()
            {
                return Ok(Claim::NotNext { next: nonces.peek() });
            }
            let nonce = nonces.allocate();
            store_nonces(connection, &fence.key, &nonces)?;
            exec(connection,
                "UPDATE withdrawals SET status = 'signing', nonce = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, sql_u64(nonce), sql_u64(now_ms())],
            )?;
            Ok(Claim::Claimed { nonce, nonces })
        })
        .await
    }

    pub(super) async fn free_nonces(&self, fence: &Fence, released: Range<u64>) -> Result<Nonces, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let mut nonces = load_nonces(connection, &fence.key)?;
            for nonce in released {
                nonces.release(nonce);
            }
            store_nonces(connection, &fence.key, &nonces)?;
            Ok(nonces)
        })
        .await
    }

    pub(super) async fn store_gap_fill(
        &self,
        fence: &Fence,
        nonce: u64,
        recipient: Address,
    ) -> Result<Option<Withdrawal>, JournalError> {
        let fence = fence.clone();
        self.run(move |connection| {
            fenced(connection, &fence)?;
            let mut nonces = load_nonces(connection, &fence.key)?;
            if !nonces.take(nonce) {
                return Ok(None);
            }
            store_nonces(connection, &fence.key, &nonces)?;
            let id = format!("gap-{}", uuid::Uuid::new_v4());
            let now = now_ms();
            exec(
                connection,
                "INSERT INTO withdrawals (id, kind, key, recipient, asset, amount, status, nonce, created_ms, \
                 updated_ms) VALUES (?1, 'gap_fill', ?2, ?3, 'ETH', '0', 'signing', ?4, ?5, ?5)",
                params![id, fence.key, recipient.to_string(), sql_u64(nonce), sql_u64(now)],
            )?;
            Ok(Some(load_existing(connection, &id)?))
        })
        .await
    }
}

/// Refuses the operation unless `fence` is the key's current lease.
pub(super) fn fenced(connection: &Connection, fence: &Fence) -> Result<(), Failure> {
    let epoch: Option<i64> = connection
        .query_row("SELECT epoch FROM leases WHERE key = ?1", params![fence.key], |row| row.get(0))
        .optional()?;
    if epoch == Some(sql_u64(fence.epoch)) {
        Ok(())
    } else {
        Err(Failure::Fenced { key: fence.key.clone(), epoch: fence.epoch })
    }
}
