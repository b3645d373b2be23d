//! Customer deposits in the service (`[deposits]`): addresses handed out through `POST
//! /v1/deposit-addresses` (derived, then kept in the journal, once per reference), and the watcher that
//! reads the chain block by block for deposits to them — each recorded once in the journal, pending until
//! `confirmations` deep, then confirmed; a block that leaves the chain first takes its deposits back
//! (`removed`, never credited). Clients read what changed with `GET /v1/deposits?since=`.
//!
//! The [sweeper](sweeper) runs in the same passes: it moves confirmed deposits to the parent in sweeps that
//! the withdrawal engine signs and follows.
//!
//! One replica watches at a time: it holds the journal lease named [`WATCHER_LEASE`] (with SQLite, the one
//! server always does), and every write of the watcher and the sweeper carries its epoch (a replica that
//! lost it stores nothing more). Reorgs are noticed by each new block's parent hash against the block recorded
//! before it, on the journal's record, so a restart resumes where the last reader stopped.

pub(crate) mod api;
mod sweeper;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_provider::Provider as _;
use ethkms_deposits::{Asset as DepositAsset, DepositAddresses, scan_block};

use crate::config::{DepositSettings, ReplicaSettings};
use crate::journal::{BlockRecord, DepositStatus, DepositStore, Fence, JournalStore, NewDeposit, Withdrawal};
use crate::policy::Asset;
use crate::shared::Shared;

/// The journal lease the watching replica holds (not a key's: keys' names cannot start with `@`).
pub(crate) const WATCHER_LEASE: &str = "@deposits";

/// Most blocks read in one pass (then the deposits found so far are confirmed, and the next pass goes on).
const BLOCKS_PER_PASS: u64 = 200;

/// Deposit addresses whose balance is checked per pass, in turn, once the watcher has caught up.
const BALANCE_CHECKS_PER_PASS: usize = 50;

/// Deposit addresses read from the journal at a time.
const ADDRESSES_PER_READ: usize = 10_000;

/// Addresses handed out concurrently on several replicas may commit out of their order: each pass reads
/// again from this many before the last seen.
const ADDRESSES_REREAD: u64 = 1_000;

/// Hands a row to the withdrawal engine (a sweep just stored).
pub(crate) type Submit = Arc<dyn Fn(Withdrawal) + Send + Sync>;

/// The deposits of the service.
pub(crate) struct Deposits {
    pub(crate) settings: DepositSettings,
    pub(crate) addresses: DepositAddresses,
    pub(crate) store: Arc<dyn DepositStore>,
    /// The same journal, as the engine sees it: leases, and the sweeps' rows.
    journal: Arc<dyn JournalStore>,
    /// The engine's door for sweeps (`None`: the service does not sweep).
    submit: Option<Submit>,
    shared: Arc<Shared>,
    replica: ReplicaSettings,
    stopping: AtomicBool,
    /// The watcher's state, held by each pass and by `stop` while it releases the lease.
    watch: tokio::sync::Mutex<Watch>,
}

impl std::fmt::Debug for Deposits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deposits").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// What the watcher keeps between passes.
#[derive(Default)]
struct Watch {
    watched: HashSet<Address>,
    /// The watched addresses in the order they were handed out, and where the balance checks are.
    order: Vec<Address>,
    balance_cursor: usize,
    last_seq: u64,
    lease: Option<(Fence, Instant)>,
    sweeper: sweeper::Sweeper,
}

impl Deposits {
    pub(crate) fn new(
        settings: DepositSettings,
        store: Arc<dyn DepositStore>,
        journal: Arc<dyn JournalStore>,
        submit: Option<Submit>,
        shared: Arc<Shared>,
        replica: ReplicaSettings,
    ) -> Self {
        let addresses = DepositAddresses::new(settings.factory, settings.parent);
        Self {
            settings,
            addresses,
            store,
            journal,
            submit,
            shared,
            replica,
            stopping: AtomicBool::new(false),
            watch: tokio::sync::Mutex::new(Watch::default()),
        }
    }

    /// Starts the watcher in the background.
    pub(crate) fn start(self: &Arc<Self>) {
        tokio::spawn(Arc::clone(self).watch());
    }

    /// Stops the watcher — a pass under way ends first — and gives up its lease, so that another replica
    /// watches at once.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let mut watch = self.watch.lock().await;
        if let Some((fence, _)) = watch.lease.take()
            && let Err(error) = self.journal.release_lease(&fence, &self.replica.name).await
        {
            tracing::warn!(%error, "releasing the deposit watcher's lease (it runs out by itself)");
        }
    }

    async fn watch(self: Arc<Self>) {
        loop {
            {
                let mut watch = self.watch.lock().await;
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(reason) = self.pass(&mut watch).await {
                    // Node errors quote the URL they were sent to, which can carry an API key.
                    let reason = crate::shared::redact_urls(&reason);
                    tracing::warn!(%reason, "deposit watcher: the pass stopped; the next retries");
                }
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Whether this replica watches now: takes or renews [`WATCHER_LEASE`].
    async fn hold_lease(&self, watch: &mut Watch) -> Result<bool, String> {
        let ttl = self.replica.lease;
        let asked = Instant::now();
        let valid_until = asked + ttl - ttl / 5;
        match watch.lease.take() {
            Some((fence, until)) => match self.journal.renew_lease(&fence, &self.replica.name, ttl).await {
                Ok(true) => watch.lease = Some((fence, valid_until)),
                Ok(false) => tracing::info!("deposit watcher: another replica took the lease"),
                Err(error) if Instant::now() < until => {
                    tracing::warn!(%error, "renewing the deposit watcher's lease");
                    watch.lease = Some((fence, until));
                }
                Err(error) => return Err(format!("renewing the lease: {error}")),
            },
            None => {
                if let Some(epoch) = self
                    .journal
                    .acquire_lease(WATCHER_LEASE, &self.replica.name, ttl)
                    .await
                    .map_err(|error| format!("taking the lease: {error}"))?
                {
                    tracing::info!(epoch, replica = %self.replica.name, "deposit watcher: lease taken");
                    watch.lease = Some((Fence { key: WATCHER_LEASE.to_owned(), epoch }, valid_until));
                }
            }
        }
        Ok(watch.lease.as_ref().is_some_and(|(_, until)| Instant::now() < *until))
    }

    /// Reads the addresses handed out since the last pass into the watched set.
    async fn refresh_addresses(&self, watch: &mut Watch) -> Result<(), String> {
        let mut after = watch.last_seq.saturating_sub(ADDRESSES_REREAD);
        loop {
            let rows = self
                .store
                .deposit_addresses(after, ADDRESSES_PER_READ)
                .await
                .map_err(|error| format!("reading the deposit addresses: {error}"))?;
            for row in &rows {
                if watch.watched.insert(row.address) {
                    watch.order.push(row.address);
                }
                watch.last_seq = watch.last_seq.max(row.seq);
            }
            match rows.last() {
                Some(last) if rows.len() == ADDRESSES_PER_READ => after = last.seq,
                _ => return Ok(()),
            }
        }
    }

    /// One pass: the lease, new addresses, the blocks since the last read (a reorg taken back), and the
    /// deposits now deep enough confirmed.
    async fn pass(&self, watch: &mut Watch) -> Result<(), String> {
        if !self.hold_lease(watch).await? {
            return Ok(());
        }
        let Some(fence) = watch.lease.as_ref().map(|(fence, _)| fence.clone()) else { return Ok(()) };
        self.refresh_addresses(watch).await?;
        let provider = self.shared.manager.provider();
        let head = provider
            .get_block_number()
            .await
            .map_err(|error| crate::shared::redact_urls(&format!("the node's head: {error}")))?;
        let recent = self.store.recent_blocks(1).await.map_err(|error| format!("the blocks read: {error}"))?;
        let mut last = recent.first().copied();
        let mut next = last.map_or_else(|| self.settings.start_block.unwrap_or(head), |block| block.number + 1);
        let started = next;
        while next <= head && next < started + BLOCKS_PER_PASS && !self.stopping.load(Ordering::Relaxed) {
            // A pass that outlasts a third of the lease stops: the next renews it before reading on.
            if watch.lease.as_ref().is_none_or(|(_, until)| Instant::now() + self.replica.lease / 3 >= *until) {
                break;
            }
            let block = scan_block(provider, next, &watch.watched, &self.settings.tokens)
                .await
                .map_err(|error| error.to_string())?;
            if let Some(previous) = last
                && previous.number + 1 == next
                && previous.hash != block.parent_hash
            {
                // The block read before is not this one's parent: it left the chain.
                let taken = self.store.remove_block(&fence, previous).await.map_err(|error| error.to_string())?;
                for deposit in &taken {
                    let event = if deposit.status == DepositStatus::Reversed { "reversed" } else { "removed" };
                    self.shared.metrics.deposits.inc(event);
                    if deposit.status == DepositStatus::Reversed {
                        tracing::error!(tx_hash = %deposit.tx_hash, address = %deposit.address, amount = %deposit.amount,
                            block = deposit.block_number, "a CONFIRMED deposit's block left the chain: reversed");
                    } else {
                        tracing::warn!(tx_hash = %deposit.tx_hash, address = %deposit.address, block = deposit.block_number,
                            "a pending deposit's block left the chain: removed");
                    }
                }
                let before = self.store.recent_blocks(1).await.map_err(|error| error.to_string())?;
                last = before.first().copied();
                next = previous.number;
                continue;
            }
            let mut deposits: Vec<NewDeposit> = block
                .deposits
                .iter()
                .map(|deposit| NewDeposit {
                    tx_hash: deposit.id.tx_hash,
                    log_index: deposit.id.log_index,
                    address: deposit.to,
                    asset: match deposit.asset {
                        DepositAsset::Ether => Asset::Ether,
                        DepositAsset::Token(token) => Asset::Token(token),
                    },
                    amount: deposit.amount,
                    sender: deposit.from,
                })
                .collect();
            // Caught up: the balance checks. They read the block before the newest (its parent, checked
            // above), never the node's newest block, whose state a node may still be changing (anvil answers
            // it from the state it is mining the next block into: a deposit of the next block would be
            // counted twice), and what they find is attributed to the newest.
            if block.number == head
                && let Some(parent) = last.filter(|parent| parent.number + 1 == block.number)
            {
                deposits.extend(self.balance_deposits(watch, parent, block.number).await?);
            }
            let record = BlockRecord { number: block.number, hash: block.hash };
            let found = self.store.record_block(&fence, record, deposits).await.map_err(|error| error.to_string())?;
            for _ in 0..found {
                self.shared.metrics.deposits.inc("found");
            }
            self.shared.metrics.deposit_block.set(i64::try_from(block.number).unwrap_or(i64::MAX));
            last = Some(record);
            next += 1;
        }
        let read = next.saturating_sub(1).min(head);
        if let Some(deep) = (read + 1).checked_sub(self.settings.confirmations) {
            let confirmed = self.store.confirm_deposits(&fence, deep).await.map_err(|error| error.to_string())?;
            for deposit in &confirmed {
                self.shared.metrics.deposits.inc("confirmed");
                tracing::info!(tx_hash = %deposit.tx_hash, address = %deposit.address, amount = %deposit.amount,
                    reference = ?deposit.reference, "deposit confirmed");
            }
        }
        if watch.lease.as_ref().is_some_and(|(_, until)| Instant::now() + self.replica.lease / 3 < *until) {
            self.sweep_pass(&fence, &mut watch.sweeper).await?;
        }
        Ok(())
    }

    /// Ether that no deposit accounts for at the next [`BALANCE_CHECKS_PER_PASS`] watched addresses, read at
    /// block `at` (by its hash: a reorg meanwhile fails the read) against what the journal's deposits had
    /// brought them as of `at`: a deposit each, attributed to block `attributed` (a later one: a reorg of
    /// either takes it back, and a later check finds it again).
    async fn balance_deposits(
        &self,
        watch: &mut Watch,
        at: BlockRecord,
        attributed: u64,
    ) -> Result<Vec<NewDeposit>, String> {
        let provider = self.shared.manager.provider();
        let mut held = Vec::new();
        for _ in 0..BALANCE_CHECKS_PER_PASS.min(watch.order.len()) {
            watch.balance_cursor %= watch.order.len();
            let address = watch.order[watch.balance_cursor];
            watch.balance_cursor += 1;
            let balance = provider
                .get_balance(address)
                .block_id(alloy_eips::BlockId::hash(at.hash))
                .await
                .map_err(|error| crate::shared::redact_urls(&format!("the balance of {address}: {error}")))?;
            if !balance.is_zero() {
                held.push((address, balance));
            }
        }
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let addresses = held.iter().map(|(address, _)| *address).collect();
        let expected: std::collections::HashMap<Address, U256> = self
            .store
            .unswept_ether(addresses, at.number)
            .await
            .map_err(|error| error.to_string())?
            .into_iter()
            .collect();
        let mut deposits = Vec::new();
        for (address, balance) in held {
            let accounted = expected.get(&address).copied().unwrap_or_default();
            if balance > accounted {
                tracing::info!(%address, block = at.number, amount = %(balance - accounted),
                    "ether no deposit accounts for (sent from inside a contract): a deposit found by its balance");
                deposits.push(NewDeposit {
                    tx_hash: balance_id(address, attributed),
                    log_index: None,
                    address,
                    asset: Asset::Ether,
                    amount: balance - accounted,
                    sender: Address::ZERO,
                });
            }
        }
        Ok(deposits)
    }
}

/// The id of a deposit found by a balance check of `address`, attributed to block `number` (there is no
/// transaction to name): Keccak-256 of `ethkms:balance`, the address and the block number (8 bytes, big-endian). Its
/// sender is the zero address.
pub(crate) fn balance_id(address: Address, number: u64) -> B256 {
    keccak256([b"ethkms:balance".as_slice(), address.as_slice(), &number.to_be_bytes()].concat())
}
