//! Finding deposits on chain: [`scan_block`] reads one block — its transactions and its logs — for value
//! sent to watched deposit addresses, and [`Follower`] follows the chain block by block, noticing reorgs.
//!
//! A deposit is found three ways:
//! - a transaction whose `to` is an address not yet deployed, with value, that succeeded (the transfer
//!   of a plain account cannot fail once mined, but its receipt is checked all the same);
//! - a `Deposited(from, value)` log of a deployed address (it passes ether on at once, in the depositor's
//!   transaction, whether sent by a transaction or from inside a contract);
//! - an ERC-20 `Transfer` log of a token on the list, to a watched address.
//!
//! Each has an id: the transaction hash and the log's index in its block (none for a transaction's own
//! value), which a journal keeps unique. Ether sent from inside a contract to an address not yet deployed
//! leaves neither a transaction nor a log to find: it shows in the address's balance, which the sweeper
//! reads before sweeping.

use std::collections::{BTreeMap, HashSet};

use alloy_consensus::Transaction as _;
use alloy_primitives::{Address, B256, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::{BlockNumberOrTag, Filter};
use alloy_sol_types::SolEvent as _;

use ethkms_eth::redact_urls;

use crate::contracts::{DepositForwarder, Erc20};

/// What was deposited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// Ether, in wei.
    Ether,
    /// An ERC-20 token (its contract), in its smallest unit.
    Token(Address),
}

/// A deposit's identity: its transaction and, for one found in a log, the log's index in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DepositId {
    /// The transaction.
    pub tx_hash: B256,
    /// The log's index in its block; `None` for the value of the transaction itself.
    pub log_index: Option<u64>,
}

/// Value that arrived at a deposit address, in a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deposit {
    /// Its identity.
    pub id: DepositId,
    /// The deposit address.
    pub to: Address,
    /// Who sent it (the transaction's sender, the forwarder's caller, or the token transfer's `from`).
    pub from: Address,
    /// What.
    pub asset: Asset,
    /// How much.
    pub amount: U256,
    /// The block's number.
    pub block_number: u64,
    /// The block's hash.
    pub block_hash: B256,
}

/// A block read for deposits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedBlock {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
    /// Its parent's hash.
    pub parent_hash: B256,
    /// The deposits in it, in order.
    pub deposits: Vec<Deposit>,
}

/// Why a block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The node failed or answered something unusable.
    #[error("reading block {block} for deposits: {message}")]
    Node {
        /// The block.
        block: u64,
        /// What went wrong.
        message: String,
    },
    /// The node does not have the block (yet).
    #[error("the node has no block {0}")]
    NoBlock(u64),
}

/// The deposits of block `number` to `watched` addresses; token transfers only of `tokens`.
///
/// # Errors
/// [`ScanError`] if the node fails or has no such block.
pub async fn scan_block<P: Provider>(
    provider: &P,
    number: u64,
    watched: &HashSet<Address>,
    tokens: &[Address],
) -> Result<ScannedBlock, ScanError> {
    let node =
        |error: &dyn std::fmt::Display| ScanError::Node { block: number, message: redact_urls(&error.to_string()) };
    let block = provider
        .get_block_by_number(BlockNumberOrTag::Number(number))
        .full()
        .await
        .map_err(|error| node(&error))?
        .ok_or(ScanError::NoBlock(number))?;
    let (hash, parent_hash) = (block.header.hash, block.header.parent_hash);
    // The logs of this very block (by hash: a reorg meanwhile cannot mix two blocks' logs).
    let filter = Filter::new()
        .at_block_hash(hash)
        .event_signature(vec![DepositForwarder::Deposited::SIGNATURE_HASH, Erc20::Transfer::SIGNATURE_HASH]);
    let logs = provider.get_logs(&filter).await.map_err(|error| node(&error))?;
    let mut deposits = Vec::new();
    let mut logged: HashSet<(B256, Address)> = HashSet::new();
    for log in &logs {
        let (Some(tx_hash), Some(log_index)) = (log.transaction_hash, log.log_index) else { continue };
        let id = DepositId { tx_hash, log_index: Some(log_index) };
        let emitter = log.address();
        if watched.contains(&emitter) {
            if let Ok(event) = DepositForwarder::Deposited::decode_log_data(log.data()) {
                logged.insert((tx_hash, emitter));
                deposits.push(Deposit {
                    id,
                    to: emitter,
                    from: event.from,
                    asset: Asset::Ether,
                    amount: event.value,
                    block_number: number,
                    block_hash: hash,
                });
            }
        } else if tokens.contains(&emitter)
            && let Ok(event) = Erc20::Transfer::decode_log_data(log.data())
            && watched.contains(&event.to)
            && !event.value.is_zero()
        {
            deposits.push(Deposit {
                id,
                to: event.to,
                from: event.from,
                asset: Asset::Token(emitter),
                amount: event.value,
                block_number: number,
                block_hash: hash,
            });
        }
    }
    for transaction in block.transactions.txns() {
        let Some(to) = transaction.to() else { continue };
        let tx_hash = *transaction.inner.tx_hash();
        if transaction.value().is_zero() || !watched.contains(&to) || logged.contains(&(tx_hash, to)) {
            continue;
        }
        // To a deployed address, a transfer that reverted (too little gas to pass it on) moved nothing; it
        // logged nothing either.
        let receipt = provider.get_transaction_receipt(tx_hash).await.map_err(|error| node(&error))?;
        if !receipt.is_some_and(|receipt| receipt.status()) {
            continue;
        }
        deposits.push(Deposit {
            id: DepositId { tx_hash, log_index: None },
            to,
            from: transaction.inner.signer(),
            asset: Asset::Ether,
            amount: transaction.value(),
            block_number: number,
            block_hash: hash,
        });
    }
    deposits.sort_by_key(|deposit| (deposit.id.log_index.unwrap_or(u64::MAX), deposit.id.tx_hash));
    Ok(ScannedBlock { number, hash, parent_hash, deposits })
}

/// What [`Follower::poll`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A deposit in a newly read block.
    Found(Deposit),
    /// A block read before is no longer on the chain: its deposits are gone (to be found again if their
    /// transactions are mined in the new blocks).
    Removed(Deposit),
}

/// Follows the chain from a block on: reads each new block once, and when the node's chain no longer
/// holds a block it read (a reorg), reports that block's deposits removed and reads the new branch.
/// Keeps the blocks of the last `depth` numbers (a deeper reorg is reported as an error, not guessed at).
#[derive(Clone, Debug)]
pub struct Follower {
    next: u64,
    depth: u64,
    recent: BTreeMap<u64, ScannedBlock>,
}

impl Follower {
    /// Starts at block `from`, remembering the last `depth` blocks read (at least 1).
    pub fn new(from: u64, depth: u64) -> Self {
        Self { next: from, depth: depth.max(1), recent: BTreeMap::new() }
    }

    /// The next block to read.
    pub fn next_block(&self) -> u64 {
        self.next
    }

    /// Reads the blocks up to the node's head (at most `limit` of them), returning what it saw in order.
    ///
    /// # Errors
    /// [`ScanError`] if the node fails, or a reorg is deeper than the blocks remembered — only when nothing
    /// was seen before it in this poll (otherwise that is answered, and the next poll meets the error).
    pub async fn poll<P: Provider>(
        &mut self,
        provider: &P,
        watched: &HashSet<Address>,
        tokens: &[Address],
        limit: u64,
    ) -> Result<Vec<Seen>, ScanError> {
        let head = provider
            .get_block_number()
            .await
            .map_err(|error| ScanError::Node { block: self.next, message: redact_urls(&error.to_string()) })?;
        let mut seen = Vec::new();
        let mut read = 0;
        while self.next <= head && read < limit {
            // What was seen is never lost: an error after it is reported by the next poll, which meets it again.
            let block = match scan_block(provider, self.next, watched, tokens).await {
                Ok(block) => block,
                Err(_) if !seen.is_empty() => return Ok(seen),
                Err(error) => return Err(error),
            };
            let parent = self.next.checked_sub(1).and_then(|number| self.recent.get(&number));
            if let Some(parent) = parent
                && parent.hash != block.parent_hash
            {
                // The block we read at `next - 1` is not this block's parent: step back and re-read.
                if let Some(dropped) = self.recent.remove(&(self.next - 1)) {
                    seen.extend(dropped.deposits.into_iter().map(Seen::Removed));
                }
                self.next -= 1;
                if self.recent.is_empty() {
                    if !seen.is_empty() {
                        return Ok(seen);
                    }
                    return Err(ScanError::Node {
                        block: self.next,
                        message: format!("a reorg deeper than the {} blocks remembered", self.depth),
                    });
                }
                continue;
            }
            seen.extend(block.deposits.iter().cloned().map(Seen::Found));
            self.recent.insert(block.number, block);
            while self.recent.len() as u64 > self.depth {
                self.recent.pop_first();
            }
            self.next += 1;
            read += 1;
        }
        Ok(seen)
    }
}
