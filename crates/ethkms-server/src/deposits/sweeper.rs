//! The sweeper: moves confirmed deposits to the parent through the withdrawal engine. Every
//! `sweep_interval` the watching replica (it holds the watcher's lease) first settles the sweeps that are
//! final — confirmed: their deposits `swept`; failed, provably unpaid or reverted: `unswept` again, and
//! each of its addresses waits longer before it is swept again, alone (one address a token refuses to move
//! fails only its own sweep) — then pages through the unswept deposits, reads what the addresses of unswept deposits hold and stores sweeps
//! of those worth sweeping, `sweep_batch` addresses each ([`DepositStore::start_sweep`]: the engine's row
//! and the deposits marked `sweeping`, in one transaction). The engine signs each as it signs a withdrawal —
//! a nonce from the key's allocator, fees within the key's caps, re-broadcast and bumped within them,
//! followed to confirmation — so a sweep is sent at most once, and a deposit is in at most one sweep.
//!
//! What is never swept: tokens not in `[deposits] tokens` (spam or hostile code); ether worth less than
//! `sweep_margin_percent` of its share of the gas (it waits for more); an address in a sweep not yet final.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use alloy_eips::BlockId;
use alloy_primitives::Address;
use ethkms::eth::chain;
use ethkms_deposits::{Holding, Reference, SweepBatch, SweepCosts, read_holding};

use super::Deposits;
use crate::journal::{DepositKey, DepositRow, Fence, NewSweep, Status, SweepRequest, Withdrawal};
use crate::policy::Asset;

/// Unswept deposits read per pass.
const CANDIDATES_PER_PASS: usize = 5_000;

/// Sweep transactions stored per pass at most.
const SWEEPS_PER_PASS: usize = 8;

/// How long an address found not worth sweeping is left before it is read again.
const DUST_RECHECK: Duration = Duration::from_secs(600);

/// How long a sweep may stay open before the sweeper warns (and again this often while it does).
const OPEN_SWEEP_WARNING: Duration = Duration::from_secs(3_600);

/// The longest wait after failed sweeps.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(3_600);

/// What the sweeper keeps between passes.
#[derive(Default)]
pub(super) struct Sweeper {
    /// When the next pass may start sweeps.
    next: Option<Instant>,
    /// The change after which the next pass reads unswept deposits (back to 0 once all were read).
    cursor: u64,
    /// Addresses whose sweeps failed: how many times in a row, and when they may be swept again (alone).
    failed: HashMap<Address, (u32, Instant)>,
    /// Addresses read and found not worth sweeping: when, and how many unswept deposits they had then (one
    /// more is a reason to read it again at once).
    dust: HashMap<Address, (Instant, usize)>,
    /// When the sweeper last warned of a sweep open too long.
    warned: Option<Instant>,
}

impl Deposits {
    /// One pass of the sweeper, under the watcher's lease `fence`: settles final sweeps, then starts new
    /// ones if it is time.
    pub(super) async fn sweep_pass(&self, fence: &Fence, sweeper: &mut Sweeper) -> Result<(), String> {
        let Some(interval) = self.settings.sweep_interval else { return Ok(()) };
        let Some(submit) = &self.submit else { return Ok(()) };
        let busy = self.settle_sweeps(fence, sweeper).await?;
        let now = Instant::now();
        if sweeper.next.is_some_and(|next| now < next) {
            return Ok(());
        }
        sweeper.next = Some(now + interval);
        sweeper.dust.retain(|_, (seen, _)| now.duration_since(*seen) < DUST_RECHECK);
        let candidates = self
            .store
            .unswept(sweeper.cursor, CANDIDATES_PER_PASS)
            .await
            .map_err(|error| format!("the unswept deposits: {error}"))?;
        sweeper.cursor = match candidates.last() {
            Some(last) if candidates.len() == CANDIDATES_PER_PASS => last.change,
            _ => 0,
        };
        let mut by_address: BTreeMap<Address, Vec<DepositRow>> = BTreeMap::new();
        for deposit in candidates {
            let waiting = sweeper.failed.get(&deposit.address).is_some_and(|(_, until)| now < *until);
            if !busy.contains(&deposit.address) && !waiting {
                by_address.entry(deposit.address).or_default().push(deposit);
            }
        }
        by_address
            .retain(|address, deposits| sweeper.dust.get(address).is_none_or(|(_, count)| *count != deposits.len()));
        if by_address.is_empty() {
            return Ok(());
        }
        // What the addresses hold is read at the last block the watcher read (by hash): every confirmed
        // deposit is in it, and a node behind it (or a reorg since) fails the reads instead of answering
        // balances from before a deposit, which would make it look swept.
        let Some(read) = self.store.recent_blocks(1).await.map_err(|error| format!("the blocks read: {error}"))?.pop()
        else {
            return Ok(());
        };
        let block = BlockId::hash(read.hash);
        let provider = self.shared.manager.provider();
        let fees = chain::fees(provider)
            .await
            .map_err(|error| crate::shared::redact_urls(&format!("fees from the node: {error}")))?;
        let gas_price = fees.max_and_priority().0;
        let mut started = 0;
        let mut batch = Batch::new(self.settings.parent);
        for (address, deposits) in by_address {
            if started >= SWEEPS_PER_PASS {
                break;
            }
            let Some(reference) = deposits.iter().find_map(|deposit| deposit.reference.clone()) else {
                tracing::warn!(%address, "deposits to an address this journal did not hand out: not swept");
                continue;
            };
            let salt = match Reference::new(&reference) {
                Ok(reference) => reference.salt(),
                Err(error) => {
                    tracing::error!(%address, %error, "a deposit address's reference is not valid: not swept");
                    continue;
                }
            };
            let holding = match read_holding(provider, address, salt, &self.settings.tokens, block).await {
                Ok(holding) => holding,
                Err(error) => {
                    tracing::warn!(%address, %error, "reading what a deposit address holds; the next pass tries again");
                    continue;
                }
            };
            let (held, gone): (Vec<&DepositRow>, Vec<&DepositRow>) =
                deposits.iter().partition(|deposit| holds(&holding, deposit.asset));
            // Gone only where the address can have passed it on: ether from a deployed forwarder (one not yet
            // deployed cannot send ether; a node behind the chain may answer a zero balance), a listed token.
            let gone: Vec<&DepositRow> = gone
                .into_iter()
                .filter(|deposit| match deposit.asset {
                    Asset::Ether => holding.deployed,
                    Asset::Token(token) => self.settings.tokens.contains(&token),
                })
                .collect();
            if !gone.is_empty() {
                // Passed on as they came (ether to a deployed forwarder), or swept from outside the service.
                let keys = gone.iter().map(|deposit| key_of(deposit)).collect();
                let swept = self.store.mark_swept(fence, keys).await.map_err(|error| error.to_string())?;
                self.count("swept", swept.len());
            }
            if held.is_empty() {
                continue;
            }
            if !SweepCosts::default().worth_sweeping(&holding, gas_price, self.settings.sweep_margin_percent) {
                sweeper.dust.insert(address, (now, deposits.len()));
                continue;
            }
            if sweeper.failed.contains_key(&address) {
                // Its last sweep failed: alone this time, so that it cannot fail the others again.
                let mut alone = Batch::new(self.settings.parent);
                alone.add(&holding, &held).map_err(|error| error.to_string())?;
                started += self.start_sweep(fence, submit, alone).await?;
                continue;
            }
            if batch.add(&holding, &held).is_err() {
                // Too many tokens for one transaction: this address goes in the next batch.
                started += self
                    .start_sweep(fence, submit, std::mem::replace(&mut batch, Batch::new(self.settings.parent)))
                    .await?;
                batch.add(&holding, &held).map_err(|error| error.to_string())?;
            }
            if batch.sweep.len() >= self.settings.sweep_batch {
                started += self
                    .start_sweep(fence, submit, std::mem::replace(&mut batch, Batch::new(self.settings.parent)))
                    .await?;
            }
        }
        if !batch.sweep.is_empty() && started < SWEEPS_PER_PASS {
            self.start_sweep(fence, submit, batch).await?;
        }
        Ok(())
    }

    /// Settles the sweeps that are final; answers the addresses still in a sweep under way.
    async fn settle_sweeps(&self, fence: &Fence, sweeper: &mut Sweeper) -> Result<HashSet<Address>, String> {
        let open = self.store.open_sweeps().await.map_err(|error| format!("the open sweeps: {error}"))?;
        if open.is_empty() {
            self.shared.metrics.sweeps_open.set(0);
            self.shared.metrics.oldest_open_sweep_seconds.set(0);
            return Ok(HashSet::new());
        }
        let mut addresses: HashMap<String, Vec<Address>> = HashMap::new();
        for (id, address) in open {
            addresses.entry(id).or_default().push(address);
        }
        let ids: Vec<String> = addresses.keys().cloned().collect();
        let rows = self.journal.get_many(&ids).await.map_err(|error| format!("the sweeps' rows: {error}"))?;
        let rows: HashMap<String, _> = rows.into_iter().map(|row| (row.id.clone(), row)).collect();
        self.report_open(sweeper, &rows);
        let mut busy = HashSet::new();
        for (id, in_sweep) in addresses {
            let outcome = match rows.get(&id) {
                Some(row) if row.status == Status::Confirmed => Some(Some(row.block_number.unwrap_or_default())),
                // Failed, or cancelled: nothing moved.
                Some(row) if row.status == Status::Failed || (row.status == Status::Cancelled && row.confirmed) => {
                    Some(None)
                }
                Some(_) => None,
                None => {
                    tracing::error!(sweep = %id, "deposits are in a sweep the journal does not have; unswept again");
                    Some(None)
                }
            };
            let Some(block) = outcome else {
                busy.extend(in_sweep);
                continue;
            };
            let changed = self.store.finish_sweep(fence, &id, block).await.map_err(|error| error.to_string())?;
            let row = rows.get(&id);
            if block.is_some() {
                for address in &in_sweep {
                    sweeper.failed.remove(address);
                }
                self.shared.metrics.sweeps.inc("confirmed");
                self.count("swept", changed.len());
                tracing::info!(sweep = %id, tx_hash = ?row.and_then(|row| row.tx_hash), deposits = changed.len(), "sweep confirmed");
            } else {
                let now = Instant::now();
                let interval = self.settings.sweep_interval.unwrap_or(MAX_FAILURE_BACKOFF);
                for address in &in_sweep {
                    let failures = sweeper.failed.get(address).map_or(1, |(failures, _)| failures + 1);
                    let wait = interval.saturating_mul(2u32.saturating_pow(failures.min(16))).min(MAX_FAILURE_BACKOFF);
                    sweeper.failed.insert(*address, (failures, now + wait));
                }
                self.shared.metrics.sweeps.inc("failed");
                self.count("unswept", changed.len());
                tracing::error!(sweep = %id, error = ?row.and_then(|row| row.error.clone()), deposits = changed.len(),
                    "a sweep failed (nothing moved); its deposits are unswept again, its addresses wait and go alone");
            }
        }
        Ok(busy)
    }

    /// Counts the open sweeps (`rows`) in the metrics and warns, once an hour, of one open longer than
    /// [`OPEN_SWEEP_WARNING`]: its deposits wait, and nothing else sweeps their addresses.
    fn report_open(&self, sweeper: &mut Sweeper, rows: &HashMap<String, Withdrawal>) {
        let now_ms = crate::journal::now_ms();
        let open: Vec<&Withdrawal> = rows.values().filter(|row| !row.status.is_final()).collect();
        let oldest = open.iter().min_by_key(|row| row.created_ms);
        self.shared.metrics.sweeps_open.set(i64::try_from(open.len()).unwrap_or(i64::MAX));
        let age = Duration::from_millis(oldest.map_or(0, |row| now_ms.saturating_sub(row.created_ms)));
        self.shared.metrics.oldest_open_sweep_seconds.set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        if let Some(row) = oldest
            && age > OPEN_SWEEP_WARNING
            && sweeper.warned.is_none_or(|warned| warned.elapsed() > OPEN_SWEEP_WARNING)
        {
            sweeper.warned = Some(Instant::now());
            tracing::warn!(sweep = %row.id, status = row.status.as_str(), minutes = age.as_secs() / 60,
                "a sweep has waited over an hour to be final (is the engine halted, or the key held by no replica?); \
                 its deposits wait with it");
        }
    }

    /// Stores `batch` as a sweep and hands it to the engine; answers 1 if it was stored.
    async fn start_sweep(&self, fence: &Fence, submit: &super::Submit, batch: Batch) -> Result<usize, String> {
        if batch.sweep.is_empty() {
            return Ok(0);
        }
        let request = serde_json::to_string(&SweepRequest { calldata: batch.sweep.calldata() })
            .map_err(|error| error.to_string())?;
        let sweep = NewSweep {
            id: format!("sweep-{}", uuid::Uuid::new_v4()),
            key: self.settings.key.clone(),
            factory: self.settings.factory,
            request,
            deposits: batch.deposits,
        };
        let (id, count) = (sweep.id.clone(), sweep.deposits.len());
        match self.store.start_sweep(fence, sweep).await.map_err(|error| error.to_string())? {
            Some(row) => {
                self.shared.metrics.sweeps.inc("started");
                self.count("sweeping", count);
                tracing::info!(sweep = %id, addresses = batch.sweep.len(), deposits = count, "sweep stored");
                submit(row);
                Ok(1)
            }
            None => {
                tracing::warn!(sweep = %id, "a deposit of the sweep changed meanwhile; nothing stored");
                Ok(0)
            }
        }
    }

    fn count(&self, event: &str, n: usize) {
        for _ in 0..n {
            self.shared.metrics.deposits.inc(event);
        }
    }
}

/// A sweep being put together: the factory call and the deposits it moves.
struct Batch {
    sweep: SweepBatch,
    deposits: Vec<DepositKey>,
}

impl Batch {
    fn new(parent: Address) -> Self {
        Self { sweep: SweepBatch::new(parent), deposits: Vec::new() }
    }

    fn add(&mut self, holding: &Holding, deposits: &[&DepositRow]) -> Result<(), ethkms_deposits::SweepError> {
        self.sweep.add_holding(holding)?;
        self.deposits.extend(deposits.iter().map(|deposit| key_of(deposit)));
        Ok(())
    }
}

fn key_of(deposit: &DepositRow) -> DepositKey {
    DepositKey { tx_hash: deposit.tx_hash, log_index: deposit.log_index }
}

/// Whether `holding` has any of `asset`.
fn holds(holding: &Holding, asset: Asset) -> bool {
    match asset {
        Asset::Ether => !holding.ether.is_zero(),
        Asset::Token(token) => holding.tokens.iter().any(|(held, balance)| *held == token && !balance.is_zero()),
    }
}
