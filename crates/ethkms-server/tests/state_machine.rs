//! Model-based test of the withdrawal engine's allocator and settlement state machine, against the invariant
//! of `withdrawals/mod.rs`: a withdrawal's value leaves the key at most once, and a `failed` (or cancelled)
//! one provably did not.
//!
//! A [`Driver`] replays the engine's steps — `engine.rs` `process` and `try_recover`; `watcher.rs`
//! `watch_key`, `settle`, `confirm`, `reorged`, `replace` and `fill_gaps` — with the real [`Nonces`], a real
//! [`SqliteJournal`] in a temporary file and the pure rules of `withdrawals::settlement`, against a simulated
//! network ([`Chain`]): a pool (every transaction some node still has) and a chain of blocks. The key's mined
//! count is the number of transactions on chain, its pending count that plus the contiguous nonces in the pool.
//! Each broadcast has a hidden truth ([`Net`]): answered honestly (`NonceUsed` for a mined nonce, `Underpriced`
//! when the pool has a transaction at the nonce paying at least as much, else taken — perhaps pushing the
//! cheaper ones out of every pool), taken but answered with an error, lost and answered with an error (both
//! `Ambiguous`), or definitely refused (never in any pool). Transactions at a nonce someone else mined stay
//! somewhere (anyone may broadcast a signed transaction again) and come back if a reorg drops the mined one; a
//! reorg returns each dropped transaction to the pool or loses it, and never drops a block that was once
//! `confirmations` deep. Foreign transactions (someone else using the key) enter the pool or are mined at once.
//!
//! Events ([`Event`]): posts (idempotency keys reused), processing (with a second task that loses the claim,
//! and crashes after the claim, the store or the broadcast), broadcasts again, fee bumps (cancellations once
//! requested), cancellations, foreign transactions, blocks, reorgs, restarts (journal re-opened, nonces
//! recovered, the watcher's memory lost), watcher rounds and gap fills.
//!
//! Properties, after every event: (1) every transaction of a row has the row's one nonce, which never changes,
//! and at most one of them is on chain; (2) a nonce handed out (allocation or gap fill) is not that of another
//! row's transaction in a pool or on chain, unless that row failed to a foreign transaction mined there; (3) a
//! `failed` row has nothing on chain, a confirmed cancellation no payment, a `confirmed` row its transaction in
//! its block; (4) the journal refuses a second claim, a transaction with another nonce, one for a failed row.
//! At the end, after draining (a restart, honest broadcasts, gap fills, blocks, watcher rounds): every row is
//! final, and `confirmed` or cancelled by a transaction ⇔ exactly one of its transactions is on chain.
//!
//! `PROPTEST_CASES` sets the number of cases (48 by default). The test at the end is an engine bug this model
//! found (a row failed on a foreign transaction a reorg had taken away, then paid), kept as its minimal case.
//!
//! Longer than 600 lines because the simulated network, the driver and the properties are one model, read
//! together against the engine they mirror; split, each part would only make sense with the others open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::{Address, B256, Bytes, U256};
use ethkms_server::journal::{
    Attempt, Claim, Fence, Inserted, JournalError, JournalStore, Kind, LimitCheck, MinedAs, NewWithdrawal, Release,
    SqliteJournal, Status, Withdrawal,
};
use ethkms_server::nonces::Nonces;
use ethkms_server::policy::Asset;
use ethkms_server::withdrawals::rejections::{BroadcastOutcome, Refusal};
use ethkms_server::withdrawals::settlement::{
    AfterBroadcast, NonceSettled, after_broadcast, is_final, reorged, settle,
};
use proptest::prelude::*;

/// `MISSES_BEFORE_LOOKUP` of `watcher.rs`: rounds without a receipt before the transaction at the nonce is sought.
const MISSES_BEFORE_LOOKUP: u32 = 3;
/// The fee of a row's first transaction; each bump pays one more up to the cap, then broadcasts the last again.
const FIRST_FEE: u64 = 10;
const FEE_CAP: u64 = 14;
const HONEST: Net = Net::Honest { evict: false };

/// Returns the message as the error unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

type Outcome<T = ()> = Result<T, String>;

/// What the network does with a broadcast, and what the engine hears.
#[derive(Clone, Copy, Debug)]
enum Net {
    /// The true answer; `evict`: a transaction taken pushes the cheaper ones at its nonce out of every pool.
    Honest { evict: bool },
    /// Taken if valid, answered `Ambiguous` (forwarded, then an error).
    Forwarded,
    /// Not taken, answered `Ambiguous` (a 502).
    Lost,
    /// A definite refusal: not taken.
    Refused,
}

/// Where the process dies inside `process`.
#[derive(Clone, Copy, Debug)]
enum CrashAfter {
    Claim,
    Store,
    Send,
}

/// One step; `pick` chooses among the rows it applies to (none: nothing happens).
#[derive(Clone, Debug)]
enum Event {
    /// A client posts withdrawal `.0` (its idempotency key, modulo the case's number of withdrawals).
    Post(u8),
    /// A row without a transaction is processed; `race`: a second task allocates too and loses the claim
    /// (`Some(true)`: the loser allocated first).
    Process {
        pick: u8,
        race: Option<bool>,
        crash: Option<CrashAfter>,
        net: Net,
    },
    /// The watcher broadcasts an unmined row's latest transaction again.
    Rebroadcast {
        pick: u8,
        net: Net,
    },
    /// The watcher re-signs an unmined row with a higher fee (a cancellation once one is requested).
    Bump {
        pick: u8,
        net: Net,
    },
    /// A client cancels a row.
    Cancel(u8),
    /// Someone else sends from the key at the mined count plus `offset`, or has it mined at once.
    Foreign {
        offset: u8,
        mined: bool,
        fee: u8,
    },
    /// A block with at most `max` transactions from the pool.
    Mine {
        max: u8,
        pick: u8,
    },
    /// The last `depth` blocks are dropped (never a final one); bit `i % 8` of `keep`: the `i`-th dropped
    /// transaction goes back to the pool.
    Reorg {
        depth: u8,
        keep: u8,
    },
    Restart,
    /// A watcher round: reorgs, confirmations, mined nonces (`Net` for the broadcast after a reorg).
    Watch(Net),
    /// The watcher fills the free nonces at or above the mined count.
    GapFill(Net),
}

/// A transaction of the simulated network; `row` is `None` for a foreign one.
#[derive(Clone, Copy, Debug)]
struct Tx {
    nonce: u64,
    fee: u64,
    row: Option<usize>,
    cancel: bool,
}

fn count(n: usize) -> u64 {
    u64::try_from(n).expect("fits")
}

fn tx_hash(tx: usize) -> B256 {
    B256::left_padding_from(&count(tx).to_be_bytes())
}

fn tx_of(hash: &B256) -> usize {
    usize::try_from(u64::from_be_bytes(hash[24..].try_into().expect("8 bytes"))).expect("fits")
}

/// The simulated network: every transaction, the pool, and the chain (block 0 is genesis).
#[derive(Debug, Default)]
struct Chain {
    txs: Vec<Tx>,
    pool: BTreeSet<usize>,
    blocks: Vec<(B256, Vec<usize>)>,
    /// No reorg leaves fewer blocks: a block once `confirmations` deep stays.
    floor: usize,
    confirmations: u64,
    /// Blocks made so far: each gets its own hash, also at a height a reorg emptied.
    made: usize,
}

impl Chain {
    fn mined(&self) -> u64 {
        self.blocks.iter().map(|(_, txs)| count(txs.len())).sum()
    }

    fn head(&self) -> u64 {
        count(self.blocks.len() - 1)
    }

    /// The block (number, hash) holding `tx`: its receipt.
    fn receipt(&self, tx: usize) -> Option<(u64, B256)> {
        self.blocks.iter().enumerate().find(|(_, (_, txs))| txs.contains(&tx)).map(|(n, (hash, _))| (count(n), *hash))
    }

    /// The mined transaction with `nonce`, and its block.
    fn at_nonce(&self, nonce: u64) -> Option<(usize, u64)> {
        let mut blocks = self.blocks.iter().enumerate();
        blocks.find_map(|(n, (_, txs))| txs.iter().find(|tx| self.txs[**tx].nonce == nonce).map(|tx| (*tx, count(n))))
    }

    fn pooled(&self, nonce: u64) -> Vec<usize> {
        self.pool.iter().copied().filter(|tx| self.txs[*tx].nonce == nonce).collect()
    }

    fn pending(&self) -> u64 {
        (self.mined()..).find(|nonce| self.pooled(*nonce).is_empty()).expect("a nonce without transactions")
    }

    fn add(&mut self, nonce: u64, fee: u64, row: Option<usize>, cancel: bool) -> usize {
        self.txs.push(Tx { nonce, fee, row, cancel });
        self.txs.len() - 1
    }

    fn push_block(&mut self, txs: Vec<usize>) -> Outcome {
        self.made += 1;
        let mut hash = tx_hash(self.made);
        hash[0] = 0xb1;
        self.blocks.push((hash, txs));
        let final_blocks = (self.blocks.len() + 1).saturating_sub(usize::try_from(self.confirmations).expect("fits"));
        self.floor = self.floor.max(final_blocks);
        Ok(())
    }

    fn mine(&mut self, max: u8, pick: u8) -> Outcome {
        let (mut nonce, mut block) = (self.mined(), Vec::new());
        for i in 0..usize::from(max) {
            let candidates = self.pooled(nonce);
            let Some(tx) = candidates.get((usize::from(pick) + i) % candidates.len().max(1)).copied() else { break };
            self.pool.remove(&tx);
            block.push(tx);
            nonce += 1;
        }
        self.push_block(block)
    }

    fn reorg(&mut self, depth: u8, keep: u8) -> Outcome {
        let kept = self.blocks.len().saturating_sub(usize::from(depth)).max(self.floor);
        let dropped: Vec<usize> = self.blocks.drain(kept..).flat_map(|(_, txs)| txs).collect();
        self.pool.extend(dropped.into_iter().enumerate().filter(|(i, _)| keep >> (i % 8) & 1 == 1).map(|(_, tx)| tx));
        Ok(())
    }

    fn foreign(&mut self, offset: u8, mined: bool, fee: u8) -> Outcome {
        let tx = self.add(self.mined() + if mined { 0 } else { u64::from(offset) }, u64::from(fee), None, false);
        if mined {
            return self.push_block(vec![tx]);
        }
        self.pool.insert(tx);
        Ok(())
    }

    /// Broadcasts `tx`: applies the hidden truth and returns what the engine hears.
    fn broadcast(&mut self, tx: usize, net: Net) -> BroadcastOutcome {
        let Tx { nonce, fee, .. } = self.txs[tx];
        match net {
            Net::Lost => return BroadcastOutcome::Ambiguous,
            Net::Refused => return BroadcastOutcome::Refused(Refusal::InsufficientFunds),
            Net::Honest { .. } | Net::Forwarded => {}
        }
        let truth = if nonce < self.mined() {
            BroadcastOutcome::NonceUsed
        } else if self.pool.contains(&tx) {
            BroadcastOutcome::Accepted
        } else if self.pooled(nonce).iter().any(|other| self.txs[*other].fee >= fee) {
            BroadcastOutcome::Underpriced
        } else {
            if matches!(net, Net::Honest { evict: true }) {
                let txs = &self.txs;
                self.pool.retain(|other| txs[*other].nonce != nonce);
            }
            self.pool.insert(tx);
            BroadcastOutcome::Accepted
        };
        if matches!(net, Net::Forwarded) { BroadcastOutcome::Ambiguous } else { truth }
    }
}

/// The engine on one key, one step at a time.
#[derive(Debug)]
struct Driver {
    runtime: tokio::runtime::Runtime,
    journal: SqliteJournal,
    path: PathBuf,
    /// The key's nonces, as the journal last answered them.
    nonces: Nonces,
    /// The lease the driver's writes carry (a new one at each restart, as a new process takes the key).
    fence: Fence,
    chain: Chain,
    withdrawals: u8,
    /// Row ids, by row number.
    rows: Vec<String>,
    /// Idempotency key → row number.
    posted: BTreeMap<u8, usize>,
    /// The nonce each row was given (claim or gap fill).
    nonce_of: Vec<Option<u64>>,
    /// The watcher's memory of a followed row (`InFlight`): rounds without a receipt, the foreign transaction found.
    followed: BTreeMap<usize, (u32, Option<(usize, u64)>)>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.journal.close();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

fn journal<T>(result: Result<T, JournalError>) -> Outcome<T> {
    result.map_err(|error| format!("journal: {error}"))
}

/// Key `hot`'s lease, as a starting process takes it.
fn take_lease(runtime: &tokio::runtime::Runtime, journal: &SqliteJournal) -> Outcome<Fence> {
    let ttl = std::time::Duration::from_secs(3600);
    let epoch = runtime.block_on(journal.acquire_lease("hot", "model", ttl)).map_err(|error| error.to_string())?;
    Ok(Fence { key: "hot".into(), epoch: epoch.ok_or("the lease was not taken")? })
}

impl Driver {
    fn new(withdrawals: u8, confirmations: u64) -> Outcome<Self> {
        static CASE: AtomicU64 = AtomicU64::new(0);
        let name = format!("ethkms-state-machine-{}-{}.db", std::process::id(), CASE.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let chain = Chain { blocks: vec![(B256::ZERO, Vec::new())], floor: 1, confirmations, ..Chain::default() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let opened = journal(SqliteJournal::open(&path))?;
        let fence = take_lease(&runtime, &opened)?;
        Ok(Self {
            runtime,
            journal: opened,
            path,
            nonces: Nonces::default(),
            fence,
            chain,
            withdrawals,
            rows: Vec::new(),
            posted: BTreeMap::new(),
            nonce_of: Vec::new(),
            followed: BTreeMap::new(),
        })
    }

    fn run<T>(&self, future: impl Future<Output = Result<T, JournalError>>) -> Outcome<T> {
        journal(self.runtime.block_on(future))
    }

    fn get(&self, row: usize) -> Outcome<Withdrawal> {
        self.run(self.journal.get(&self.rows[row]))?.ok_or(format!("row {row} is gone"))
    }

    fn load(&self) -> Outcome<Vec<Withdrawal>> {
        (0..self.rows.len()).map(|row| self.get(row)).collect()
    }

    /// What the watcher follows: unfinished rows with a transaction. `unmined`: only those whose nonce is not
    /// mined (what it broadcasts again or replaces).
    fn followed_rows(&self, unmined: bool) -> Outcome<Vec<(usize, Withdrawal)>> {
        let mined = self.chain.mined();
        let rows = self.run(self.journal.unfinished(None))?.into_iter().filter(|row| {
            !row.attempts.is_empty()
                && (!unmined || (row.block_number.is_none() && row.nonce.is_some_and(|nonce| nonce >= mined)))
        });
        rows.map(|row| Ok((self.rows.iter().position(|id| *id == row.id).ok_or("unknown row")?, row))).collect()
    }

    fn apply(&mut self, event: &Event) -> Outcome {
        let pick = |n: u8, len: usize| (len > 0).then(|| usize::from(n) % len);
        match *event {
            Event::Post(key) => self.post(key % self.withdrawals),
            Event::Process { pick: n, race, crash, net } => {
                let rows = self.load()?;
                let open: Vec<usize> = (0..rows.len()).filter(|row| unsigned(&rows[*row])).collect();
                pick(n, open.len()).map_or(Ok(()), |i| self.process(open[i], race, crash, net))
            }
            Event::Rebroadcast { pick: n, net } => {
                let rows = self.followed_rows(true)?;
                pick(n, rows.len()).map_or(Ok(()), |i| self.rebroadcast(rows[i].0, &rows[i].1, net))
            }
            Event::Bump { pick: n, net } => {
                let rows = self.followed_rows(true)?;
                pick(n, rows.len()).map_or(Ok(()), |i| self.bump(rows[i].0, &rows[i].1, net))
            }
            Event::Cancel(n) => {
                pick(n, self.rows.len()).map_or(Ok(()), |i| self.run(self.journal.cancel(&self.rows[i])).map(drop))
            }
            Event::Foreign { offset, mined, fee } => self.chain.foreign(offset, mined, fee),
            Event::Mine { max, pick } => self.chain.mine(max, pick),
            Event::Reorg { depth, keep } => self.chain.reorg(depth, keep),
            Event::Restart => self.restart(),
            Event::Watch(net) => self.watch(net),
            Event::GapFill(net) => self.fill_gaps(net),
        }
    }

    fn post(&mut self, key: u8) -> Outcome {
        let amount = U256::from(1000 + u64::from(key));
        let (client, idempotency_key) = ("client".to_owned(), format!("withdrawal-{key}"));
        let recipient = Address::with_last_byte(key);
        let new = NewWithdrawal {
            client,
            idempotency_key,
            key: "hot".into(),
            recipient,
            asset: Asset::Ether,
            amount,
            approval: None,
        };
        let check = LimitCheck::count(vec![(Asset::Ether, amount)]);
        match self.run(self.journal.insert(new, check))? {
            Inserted::New(row) => {
                ensure!(self.posted.insert(key, self.rows.len()).is_none(), "idempotency key {key}: a second row");
                self.rows.push(row.id);
                self.nonce_of.push(None);
            }
            Inserted::Existing(row) => {
                ensure!(self.posted.get(&key).map(|r| &self.rows[*r]) == Some(&row.id), "key {key}: another row");
            }
            Inserted::Refused(denial) => return Err(format!("insert refused: {denial:?}")),
        }
        Ok(())
    }

    /// `engine.rs` `process`: allocate and claim (unless the row holds a nonce), sign and store, broadcast.
    fn process(&mut self, row: usize, race: Option<bool>, crash: Option<CrashAfter>, net: Net) -> Outcome {
        let id = self.rows[row].clone();
        let nonce = if let Some(nonce) = self.nonce_of[row] {
            nonce
        } else {
            let pending = self.chain.pending();
            let claimed = self.run(self.journal.claim(&self.fence, &id, pending, None))?;
            let Claim::Claimed { nonce: won, nonces } = claimed else {
                return Err(format!("row {row}: claim refused: {claimed:?}"));
            };
            ensure!(nonces.next() > won, "row {row}: nonce {won} handed out but the next is {}", nonces.next());
            self.nonces = nonces;
            self.nonce_of[row] = Some(won);
            self.check_handed_out(row, won)?;
            // Property 4: a racing task's claim (or the same one again) is refused, and takes no nonce.
            let again = self.run(self.journal.claim(&self.fence, &id, pending, None))?;
            ensure!(again == Claim::NotAccepted, "row {row}: a second claim answered {again:?}");
            if race == Some(true) {
                // A replica that lost the key (a stale lease) cannot store anything for it.
                let stale = Fence { epoch: self.fence.epoch - 1, ..self.fence.clone() };
                let refused = self.runtime.block_on(self.journal.mark_submitted(&stale, &id));
                ensure!(matches!(refused, Err(JournalError::Fenced { .. })), "a stale lease wrote: {refused:?}");
            }
            if let Some(CrashAfter::Claim) = crash {
                return self.restart();
            }
            won
        };
        let tx = self.chain.add(nonce, FIRST_FEE, Some(row), false);
        self.run(self.journal.add_attempt(&self.fence, &id, nonce, attempt(tx, FIRST_FEE, false)))?;
        self.refused(row, nonce + 1, "a transaction with another nonce")?;
        if let Some(CrashAfter::Store) = crash {
            return self.restart();
        }
        let first_broadcast = self.get(row)?.attempts.len() == 1;
        let outcome = self.chain.broadcast(tx, net);
        if let Some(CrashAfter::Send) = crash {
            return self.restart();
        }
        match after_broadcast(outcome, first_broadcast) {
            AfterBroadcast::Submitted => self.run(self.journal.mark_submitted(&self.fence, &id)),
            AfterBroadcast::Keep => Ok(()),
            AfterBroadcast::FailUnpaid => {
                let failed =
                    self.journal.mark_failed(&self.fence, &id, "the node refused the transaction", Release::UNPAID);
                self.nonces = self.run(failed)?.1;
                self.refused(row, nonce, "a transaction for a failed row")
            }
        }
    }

    /// Property 4: the journal refuses a transaction with `nonce` for `row`.
    fn refused(&self, row: usize, nonce: u64, what: &str) -> Outcome {
        let result = self.runtime.block_on(self.journal.add_attempt(
            &self.fence,
            &self.rows[row],
            nonce,
            attempt(1 << 40, 1, false),
        ));
        ensure!(matches!(result, Err(JournalError::Refused(_))), "row {row}: {what} was not refused: {result:?}");
        Ok(())
    }

    /// Property 2: `nonce`, just given to `row`, is not that of another row's transaction in a pool or on chain,
    /// unless that row failed to a foreign transaction mined at the nonce.
    fn check_handed_out(&self, row: usize, nonce: u64) -> Outcome {
        for (tx, other) in self.chain.txs.iter().enumerate() {
            let Some(owner) = other.row.filter(|owner| *owner != row && other.nonce == nonce) else { continue };
            if self.chain.pool.contains(&tx) || self.chain.receipt(tx).is_some() {
                let failed = self.get(owner)?.status == Status::Failed;
                let foreign = self.chain.at_nonce(nonce).is_some_and(|(mined, _)| self.chain.txs[mined].row.is_none());
                ensure!(failed && foreign, "nonce {nonce} given to row {row}; row {owner}'s transaction {tx} is out");
            }
        }
        Ok(())
    }

    /// `watcher.rs` `rebroadcast` (or `reorged`): broadcasts `tx` again; `submitted` if the node has it.
    fn send(&mut self, row: usize, tx: usize, net: Net) -> Outcome {
        let accepted = self.chain.broadcast(tx, net) == BroadcastOutcome::Accepted;
        if accepted { self.run(self.journal.mark_submitted(&self.fence, &self.rows[row])) } else { Ok(()) }
    }

    fn rebroadcast(&mut self, row: usize, stored: &Withdrawal, net: Net) -> Outcome {
        self.send(row, tx_of(&stored.attempts.last().ok_or("no transaction")?.tx_hash), net)
    }

    /// `watcher.rs` `replace`: a new transaction with the row's nonce and a higher fee, or the last again at the cap.
    fn bump(&mut self, row: usize, stored: &Withdrawal, net: Net) -> Outcome {
        let (last, nonce) = (stored.attempts.last().ok_or("no transaction")?, stored.nonce.ok_or("no nonce")?);
        let (cancel, fee) = (stored.cancel_requested || last.cancel, u64::try_from(last.max_fee_per_gas).unwrap() + 1);
        if fee > FEE_CAP {
            return self.send(row, tx_of(&last.tx_hash), net);
        }
        let tx = self.chain.add(nonce, fee, Some(row), cancel);
        self.run(self.journal.add_attempt(&self.fence, &stored.id, nonce, attempt(tx, fee, cancel)))?;
        self.send(row, tx, net)
    }

    /// `engine.rs` `try_recover`: a new process, its nonces from the node's pending count and the stored rows.
    fn restart(&mut self) -> Outcome {
        self.journal.close();
        self.journal = journal(SqliteJournal::open(&self.path))?;
        self.followed.clear();
        let held: BTreeSet<u64> = self.run(self.journal.unfinished(None))?.iter().filter_map(|row| row.nonce).collect();
        let previous = std::mem::replace(&mut self.fence, take_lease(&self.runtime, &self.journal)?);
        ensure!(self.fence.epoch > previous.epoch, "a new process's lease has epoch {}", self.fence.epoch);
        self.nonces = self.run(self.journal.recover_nonces(&self.fence, self.chain.pending()))?;
        let mut expected = Nonces::default();
        expected.recover(self.chain.pending(), &held);
        ensure!(self.nonces == expected, "recovered {:?}, expected {expected:?}", self.nonces);
        Ok(())
    }

    /// `watcher.rs` `watch_key`, its settling part: reorgs, confirmations, mined nonces.
    fn watch(&mut self, net: Net) -> Outcome {
        let (mined, head) = (self.chain.mined(), self.chain.head());
        for (row, stored) in self.followed_rows(false)? {
            let nonce = stored.nonce.ok_or("a followed row without a nonce")?;
            if let Some(block) = stored.block_number {
                if reorged(nonce, mined) {
                    self.unmine(row, &stored, net)?;
                } else if is_final(block, head, self.chain.confirmations) {
                    self.confirm(row, &stored, net)?;
                }
            } else if nonce < mined {
                self.settle(row, &stored, head, net)?;
            } else if let Some(entry) = self.followed.get_mut(&row) {
                // As the watcher: a nonce free again after a reorg clears what was found there.
                entry.1 = None;
            }
        }
        Ok(())
    }

    /// `watcher.rs` `settle`: one of the row's transactions is mined, or someone else's is, and final.
    fn settle(&mut self, row: usize, stored: &Withdrawal, head: u64, net: Net) -> Outcome {
        let confirmations = self.chain.confirmations;
        for attempt in stored.attempts.iter().rev() {
            let Some((block, hash)) = self.chain.receipt(tx_of(&attempt.tx_hash)) else { continue };
            ensure!(settle(true, None, head, confirmations) == NonceSettled::Ours, "a receipt of ours is not ours");
            let outcome = if attempt.cancel { MinedAs::Cancelled } else { MinedAs::Paid };
            // A payment deep enough is recorded final at once; anything else is confirmed by `confirm`.
            let final_now = is_final(block, head, confirmations) && outcome == MinedAs::Paid;
            self.run(self.journal.mark_mined(
                &self.fence,
                &stored.id,
                attempt.tx_hash,
                block,
                hash,
                outcome,
                final_now,
            ))?;
            if final_now {
                self.followed.remove(&row);
                return Ok(());
            }
            return if is_final(block, head, confirmations) { self.confirm(row, &self.get(row)?, net) } else { Ok(()) };
        }
        let entry = self.followed.entry(row).or_default();
        entry.0 += 1;
        let foreign = match entry.1 {
            Some(found) => Some(found), // remembered from an earlier round, as `InFlight::foreign`
            None if entry.0 >= MISSES_BEFORE_LOOKUP => self.chain.at_nonce(stored.nonce.ok_or("no nonce")?),
            None => None,
        };
        let Some((tx, _)) = foreign else { return Ok(()) };
        if stored.attempts.iter().any(|attempt| tx_of(&attempt.tx_hash) == tx) {
            return Ok(());
        }
        // As the watcher: never trusted from memory; its receipt is read again (a reorg may have taken it).
        let Some((block, _)) = self.chain.receipt(tx) else {
            self.followed.entry(row).or_default().1 = None;
            return Ok(());
        };
        self.followed.entry(row).or_default().1 = Some((tx, block));
        if settle(false, Some(block), head, confirmations) == NonceSettled::TakenFinal {
            // Failed, unpaid; the nonce is used up, so it is not given back to the allocator.
            let release = Release { spends: true, nonce: false };
            let failed =
                self.journal.mark_failed(&self.fence, &stored.id, "nonce taken by another transaction", release);
            self.nonces = self.run(failed)?.1;
            self.followed.remove(&row);
        }
        Ok(())
    }

    /// `watcher.rs` `confirm`: final if the receipt is in the same block, moved if in another, else reorged.
    fn confirm(&mut self, row: usize, stored: &Withdrawal, net: Net) -> Outcome {
        let hash = stored.tx_hash.ok_or("mined without a hash")?;
        match self.chain.receipt(tx_of(&hash)) {
            Some((_, block_hash)) if Some(block_hash) == stored.block_hash => {
                self.followed.remove(&row);
                self.run(self.journal.mark_confirmed(&self.fence, &stored.id))
            }
            Some((block, block_hash)) => {
                let outcome = if stored.status == Status::Cancelled { MinedAs::Cancelled } else { MinedAs::Paid };
                self.run(self.journal.mark_mined(&self.fence, &stored.id, hash, block, block_hash, outcome, false))
            }
            None => self.unmine(row, stored, net),
        }
    }

    /// `watcher.rs` `reorged`: back to `submitted`, the mined transaction broadcast again as it is.
    fn unmine(&mut self, row: usize, stored: &Withdrawal, net: Net) -> Outcome {
        self.run(self.journal.mark_unmined(&self.fence, &stored.id))?;
        self.followed.remove(&row);
        match stored.tx_hash.filter(|hash| stored.attempts.iter().any(|attempt| attempt.tx_hash == *hash)) {
            Some(hash) => self.send(row, tx_of(&hash), net),
            None => Ok(()),
        }
    }

    /// `watcher.rs` `fill_gaps`: each free nonce at or above the mined count gets a zero-value row of its own.
    fn fill_gaps(&mut self, net: Net) -> Outcome {
        let mined = self.chain.mined();
        for nonce in self.nonces.gaps().into_iter().filter(|nonce| *nonce >= mined) {
            let Some(fill) = self.run(self.journal.insert_gap_fill(&self.fence, nonce, Address::ZERO))? else {
                return Err(format!("free nonce {nonce} could not be filled"));
            };
            self.nonces.take(nonce);
            self.rows.push(fill.id);
            self.nonce_of.push(Some(nonce));
            self.check_handed_out(self.rows.len() - 1, nonce)?;
            self.process(self.rows.len() - 1, None, None, net)?;
        }
        Ok(())
    }

    /// Properties 1 and 3 in the forms that hold at any time, and the model's own consistency.
    fn check(&self) -> Outcome {
        let nonces = self.chain.blocks.iter().flat_map(|(_, txs)| txs.iter().map(|tx| self.chain.txs[*tx].nonce));
        ensure!(nonces.eq(0..self.chain.mined()), "model error: the chain's nonces are not 0, 1, …");
        for (row, stored) in self.load()?.iter().enumerate() {
            let (held, given) = (stored.nonce, self.nonce_of[row]);
            ensure!(held == given, "row {row} holds nonce {held:?}, but was given {given:?}");
            let mut mined = Vec::new();
            for attempt in &stored.attempts {
                let tx = tx_of(&attempt.tx_hash);
                let Tx { nonce, row: owner, .. } = self.chain.txs[tx];
                ensure!(Some(nonce) == held && owner == Some(row), "row {row}: transaction {tx} has nonce {nonce}");
                mined.extend(self.chain.receipt(tx).map(|(block, hash)| (tx, block, hash)));
            }
            ensure!(mined.len() <= 1, "row {row}: several transactions mined: {mined:?}");
            let paid = mined.iter().any(|(tx, ..)| !self.chain.txs[*tx].cancel);
            match stored.status {
                Status::Failed => ensure!(mined.is_empty(), "row {row} is failed, yet {mined:?} is mined"),
                Status::Cancelled if stored.confirmed => ensure!(!paid, "row {row} is cancelled, yet paid: {mined:?}"),
                Status::Confirmed => {
                    let on_chain =
                        mined.first().map(|(tx, block, hash)| (Some(tx_hash(*tx)), Some(*block), Some(*hash)));
                    let journal = (stored.tx_hash, stored.block_number, stored.block_hash);
                    ensure!(on_chain == Some(journal), "row {row} is confirmed as {journal:?}; on chain {on_chain:?}");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Lets the engine finish, then checks that every row is final and the journal agrees with the chain.
    fn drain(&mut self) -> Outcome {
        // The restart frees nonces a foreign transaction held before it vanished: until one, nothing fills such
        // a hole and every later row waits (see the report of this test).
        self.restart()?;
        for _ in 0..8 {
            let rows = self.load()?;
            if rows.iter().all(finished) {
                break;
            }
            for (row, stored) in rows.iter().enumerate() {
                if unsigned(stored) {
                    self.process(row, None, None, HONEST)?;
                }
            }
            self.fill_gaps(HONEST)?;
            for (row, stored) in self.followed_rows(true)? {
                self.rebroadcast(row, &stored, HONEST)?;
            }
            self.chain.mine(u8::MAX, 0)?;
            for _ in 0..self.chain.confirmations {
                self.chain.mine(0, 0)?;
            }
            for _ in 0..=MISSES_BEFORE_LOOKUP {
                self.watch(HONEST)?;
            }
        }
        self.check()?;
        for (row, stored) in self.load()?.iter().enumerate() {
            ensure!(finished(stored), "row {row} is still {} after draining: {stored:?}", stored.status);
            let on_chain = stored.attempts.iter().filter(|a| self.chain.receipt(tx_of(&a.tx_hash)).is_some()).count();
            let paid_or_cancelled =
                matches!(stored.status, Status::Confirmed | Status::Cancelled) && stored.nonce.is_some();
            ensure!(on_chain == usize::from(paid_or_cancelled), "row {row} is {}; {on_chain} on chain", stored.status);
        }
        Ok(())
    }
}

/// A row `process` takes: accepted, or recovered with its nonce and no transaction.
fn unsigned(row: &Withdrawal) -> bool {
    (row.status == Status::Accepted && row.kind == Kind::Withdrawal)
        || (row.status == Status::Signing && row.attempts.is_empty())
}

fn finished(row: &Withdrawal) -> bool {
    row.status.is_final() || (row.status == Status::Cancelled && row.confirmed)
}

fn attempt(tx: usize, fee: u64, cancel: bool) -> Attempt {
    let raw = Bytes::from(count(tx).to_be_bytes().to_vec());
    Attempt { tx_hash: tx_hash(tx), raw, max_fee_per_gas: fee.into(), priority_fee_per_gas: 1, signed_ms: 0, cancel }
}

/// Runs one case; the error names the event after which a property failed, and lists them all.
fn run_case(withdrawals: u8, confirmations: u64, events: &[Event]) -> Outcome {
    let mut driver = Driver::new(withdrawals, confirmations)?;
    let listed: Vec<String> = events.iter().enumerate().map(|(i, event)| format!("\n  {i:2}: {event:?}")).collect();
    let context = |step: String, error: String| {
        format!("{error}\n{step}; confirmations {confirmations}; events:{}", listed.concat())
    };
    for (i, event) in events.iter().enumerate() {
        driver.apply(event).and_then(|()| driver.check()).map_err(|e| context(format!("after event {i}"), e))?;
    }
    driver.drain().map_err(|e| context("after draining".into(), e))
}

fn net() -> impl Strategy<Value = Net> {
    prop_oneof![
        4 => any::<bool>().prop_map(|evict| Net::Honest { evict }),
        2 => Just(Net::Forwarded),
        1 => Just(Net::Lost),
        2 => Just(Net::Refused),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let crash = prop_oneof![Just(CrashAfter::Claim), Just(CrashAfter::Store), Just(CrashAfter::Send)];
    let race = prop::option::weighted(0.2, any::<bool>());
    prop_oneof![
        3 => any::<u8>().prop_map(Event::Post),
        4 => (any::<u8>(), race, prop::option::weighted(0.15, crash), net())
            .prop_map(|(pick, race, crash, net)| Event::Process { pick, race, crash, net }),
        2 => (any::<u8>(), net()).prop_map(|(pick, net)| Event::Rebroadcast { pick, net }),
        2 => (any::<u8>(), net()).prop_map(|(pick, net)| Event::Bump { pick, net }),
        1 => any::<u8>().prop_map(Event::Cancel),
        2 => (0..3u8, any::<bool>(), 1..=20u8).prop_map(|(offset, mined, fee)| Event::Foreign { offset, mined, fee }),
        4 => (0..=3u8, any::<u8>()).prop_map(|(max, pick)| Event::Mine { max, pick }),
        2 => (1..=3u8, any::<u8>()).prop_map(|(depth, keep)| Event::Reorg { depth, keep }),
        1 => Just(Event::Restart),
        4 => net().prop_map(Event::Watch),
        1 => net().prop_map(Event::GapFill),
    ]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(48);
    // No regression file next to this one: a failure prints its shrunk events instead.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn each_withdrawal_is_paid_at_most_once_and_a_failed_one_never(
        withdrawals in 2..=5u8,
        confirmations in 1..=3u64,
        events in prop::collection::vec(event(), 10..=60),
    ) {
        run_case(withdrawals, confirmations, &events).map_err(TestCaseError::fail)?;
    }
}

/// A bug this model found, kept as its minimal case (fixed: the watcher now reads the foreign transaction's
/// receipt again every round, and forgets it when the nonce is free again). It remembered the foreign
/// transaction it found at a row's nonce (`InFlight::foreign`) and later failed the row on it without checking
/// it again. Here it was found in
/// block 1 before it was final, a reorg removed it, another foreign transaction took the nonce in block 2, and
/// at head 2 the remembered block 1 counts as final: the row fails "unpaid" on a transaction no longer on
/// chain, while the one at its nonce is one block deep. A second one-block reorg drops that one and the row's
/// own transaction, still in a pool, is mined: failed (its amount given back to the daily limit), yet paid.
#[test]
fn a_foreign_transaction_dropped_by_a_reorg_is_no_proof() {
    use Event::{Foreign, Mine, Post, Process, Reorg, Watch};
    let events = [
        Post(0),
        Process { pick: 0, race: None, crash: None, net: HONEST }, // nonce 0, in the pool
        Foreign { offset: 0, mined: true, fee: 1 },                // block 1 takes nonce 0; not final yet
        Watch(HONEST),
        Watch(HONEST),
        Watch(HONEST), // third miss: the foreign transaction is found, in block 1, and remembered
        Reorg { depth: 1, keep: 0 }, // block 1 and the foreign transaction are gone
        Mine { max: 0, pick: 0 }, // an empty block 1
        Foreign { offset: 0, mined: true, fee: 1 }, // another foreign transaction at nonce 0, in block 2
        Watch(HONEST), // "block 1 is final at head 2": the row fails
        Reorg { depth: 1, keep: 0 }, // block 2 was one block deep
        Mine { max: 1, pick: 0 }, // the row's transaction is mined: failed, yet paid
    ];
    run_case(2, 2, &events).unwrap();
}
