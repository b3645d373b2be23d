//! The [`DepositStore`] contract, run against both journals (SQLite, and PostgreSQL when it is there):
//! an address per reference, however often or concurrently asked; each deposit recorded once; pending,
//! confirmed, removed, reversed and brought back, every change numbered in order; swept once, by one sweep
//! at a time; the watcher's writes fenced by its lease.

use alloy_primitives::{Address, B256, U256};

use std::time::Duration;

use super::deposits::{BlockRecord, DepositKey, DepositStatus, DepositStore, NewDeposit, NewSweep, SweepStatus};
use super::{Fence, JournalError, JournalStore, Kind, Status};
use crate::policy::Asset;

/// The watcher's lease, taken by `holder`.
async fn watcher(journal: &impl JournalStore, holder: &str) -> Fence {
    let epoch = journal.acquire_lease("@deposits", holder, Duration::from_secs(60)).await.unwrap().unwrap();
    Fence { key: "@deposits".into(), epoch }
}

fn deposit(tx: u8, log_index: Option<u64>, to: Address, asset: Asset, amount: u64) -> NewDeposit {
    NewDeposit {
        tx_hash: B256::repeat_byte(tx),
        log_index,
        address: to,
        asset,
        amount: U256::from(amount),
        sender: Address::repeat_byte(0x5e),
    }
}

fn block(number: u64, fork: u8) -> BlockRecord {
    BlockRecord { number, hash: B256::with_last_byte(fork) ^ B256::left_padding_from(&number.to_be_bytes()) }
}

async fn addresses_are_handed_out_once_per_reference(journal: &impl DepositStore) {
    let alice = Address::repeat_byte(0xa1);
    let first = journal.deposit_address("alice", alice, "wallet").await.unwrap();
    assert_eq!((first.reference.as_str(), first.address, first.client.as_str()), ("alice", alice, "wallet"));
    let asks = (0..8).map(|_| journal.deposit_address("bob", Address::repeat_byte(0xb0), "other"));
    let rows: Vec<_> = futures_util::future::join_all(asks).await.into_iter().map(Result::unwrap).collect();
    assert!(rows.iter().all(|row| *row == rows[0]), "one row for bob: {rows:?}");
    assert_eq!(journal.deposit_address("alice", alice, "another client").await.unwrap(), first, "the same row");
    let taken = journal.deposit_address("mallory", alice, "wallet").await.unwrap_err();
    assert!(matches!(taken, JournalError::Refused(_)), "{taken:?}");
    assert!(taken.to_string().contains("alice"), "{taken}");
    let all = journal.deposit_addresses(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|row| row.reference.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(all[0].seq < all[1].seq);
    assert_eq!(journal.deposit_addresses(all[0].seq, 10).await.unwrap(), all[1..]);
    assert_eq!(journal.deposit_addresses(0, 1).await.unwrap(), all[..1]);
}

async fn deposits_are_recorded_once_then_confirmed_removed_or_reversed(journal: &(impl DepositStore + JournalStore)) {
    let fence = &watcher(journal, "one").await;
    let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    let token = Asset::Token(Address::repeat_byte(0x70));
    let ten = vec![deposit(1, None, alice, Asset::Ether, 5), deposit(2, Some(3), bob, token, 7)];
    assert_eq!(journal.record_block(fence, block(10, 0), ten.clone()).await.unwrap(), 2);
    assert_eq!(journal.record_block(fence, block(10, 0), ten).await.unwrap(), 0, "each deposit is recorded once");
    let rows = journal.deposits(0, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].reference.as_deref(), rows[0].log_index, rows[0].asset), (Some("alice"), None, Asset::Ether));
    assert_eq!((rows[1].reference.as_deref(), rows[1].log_index, rows[1].amount), (None, Some(3), U256::from(7)));
    assert!(rows.iter().all(|row| row.status == DepositStatus::Pending && row.block_number == 10));
    assert!(rows[0].change < rows[1].change);

    assert!(journal.confirm_deposits(fence, 9).await.unwrap().is_empty(), "not deep enough");
    let confirmed = journal.confirm_deposits(fence, 10).await.unwrap();
    assert_eq!(confirmed.len(), 2);
    assert!(confirmed.iter().all(|row| row.status == DepositStatus::Confirmed && row.change > rows[1].change));
    assert_eq!(journal.deposits(rows[1].change, 10).await.unwrap(), confirmed, "what changed since");

    // Block 11 read, then dropped by a reorg: its deposit is removed, never confirmed; mined again in the
    // new block 11, it is pending again.
    assert_eq!(
        journal.record_block(fence, block(11, 0), vec![deposit(3, None, alice, Asset::Ether, 9)]).await.unwrap(),
        1
    );
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(11, 0), block(10, 0)]);
    let removed = journal.remove_block(fence, block(11, 0)).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!((removed[0].status, removed[0].tx_hash), (DepositStatus::Removed, B256::repeat_byte(3)));
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(10, 0)]);
    assert!(journal.confirm_deposits(fence, 11).await.unwrap().is_empty(), "a removed deposit is never confirmed");
    assert_eq!(
        journal.record_block(fence, block(11, 1), vec![deposit(3, None, alice, Asset::Ether, 9)]).await.unwrap(),
        1
    );
    let back = journal.deposits(removed[0].change, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].status, back[0].block_hash), (DepositStatus::Pending, block(11, 1).hash));

    // Another block 11 cannot be recorded over the one recorded; removing a block by a hash not recorded
    // changes nothing.
    let other =
        journal.record_block(fence, block(11, 2), vec![deposit(9, None, alice, Asset::Ether, 1)]).await.unwrap_err();
    assert!(matches!(other, JournalError::Refused(_)), "{other:?}");
    assert!(journal.remove_block(fence, block(10, 5)).await.unwrap().is_empty());
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(11, 1), block(10, 0)]);

    // A reorg deeper than the confirmations: what was confirmed in block 10 is reversed.
    let reversed = journal.remove_block(fence, block(10, 0)).await.unwrap();
    assert_eq!(reversed.len(), 2);
    assert!(reversed.iter().all(|row| row.status == DepositStatus::Reversed));
    // Mined again in another block 10 — the log at index 3 now another transfer of the transaction — the
    // deposits are pending again, with what they are now.
    let again = vec![deposit(1, None, alice, Asset::Ether, 5), deposit(2, Some(3), alice, token, 8)];
    assert_eq!(journal.record_block(fence, block(10, 3), again).await.unwrap(), 2);
    let back: Vec<_> = journal.deposits(reversed[1].change, 10).await.unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|row| row.status == DepositStatus::Pending && row.block_hash == block(10, 3).hash));
    assert_eq!((back[1].address, back[1].amount), (alice, U256::from(8)), "brought back as it is now");
    assert_eq!(journal.remove_block(fence, block(11, 1)).await.unwrap().len(), 1);
    assert_eq!(journal.confirm_deposits(fence, 20).await.unwrap().len(), 2, "block 10's two; block 11's was removed");
    let all = journal.deposits(0, 100).await.unwrap();
    let changes: Vec<u64> = all.iter().map(|row| row.change).collect();
    assert!(changes.windows(2).all(|pair| pair[0] < pair[1]), "{changes:?}");
    assert_eq!(journal.deposits(0, 2).await.unwrap().len(), 2, "the limit holds");
}

fn key(tx: u8, log_index: Option<u64>) -> DepositKey {
    DepositKey { tx_hash: B256::repeat_byte(tx), log_index }
}

fn sweep(id: &str, deposits: Vec<DepositKey>) -> NewSweep {
    NewSweep {
        id: id.into(),
        key: "hot".into(),
        factory: Address::repeat_byte(0xfa),
        request: r#"{"calldata":"0x01"}"#.into(),
        deposits,
    }
}

async fn sweeps_take_each_deposit_once_and_settle_it(journal: &(impl DepositStore + JournalStore)) {
    let fence = &watcher(journal, "one").await;
    let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    journal.deposit_address("bob", bob, "wallet").await.unwrap();
    let token = Asset::Token(Address::repeat_byte(0x70));
    let ten = vec![
        deposit(1, None, alice, Asset::Ether, 5),
        deposit(2, Some(0), alice, token, 7),
        deposit(3, None, bob, Asset::Ether, 3),
    ];
    journal.record_block(fence, block(10, 0), ten).await.unwrap();
    assert!(journal.unswept(0, 10).await.unwrap().is_empty(), "pending deposits are not swept");
    assert_eq!(journal.confirm_deposits(fence, 10).await.unwrap().len(), 3);
    let unswept = journal.unswept(0, 10).await.unwrap();
    assert_eq!(unswept.len(), 3);
    assert!(unswept.iter().all(|row| row.sweep_status == SweepStatus::Unswept && row.sweep.is_none()));
    assert_eq!(journal.unswept(0, 2).await.unwrap(), unswept[..2], "the limit holds");
    assert_eq!(journal.unswept(unswept[1].change, 10).await.unwrap(), unswept[2..], "after a change");

    let carol = Address::repeat_byte(0xc0);
    let mut expected = journal.unswept_ether(vec![alice, bob, carol], 10).await.unwrap();
    expected.sort();
    assert_eq!(expected, [(alice, U256::from(5)), (bob, U256::from(3))], "ether only; none for carol");
    assert!(journal.unswept_ether(vec![alice, bob], 9).await.unwrap().is_empty(), "nothing before block 10");

    // A sweep of alice's two: the engine's row and the deposits marked, together.
    let alices = vec![key(1, None), key(2, Some(0))];
    let row = journal.start_sweep(fence, sweep("sweep-1", alices.clone())).await.unwrap().expect("stored");
    assert_eq!(
        (row.kind, row.status, row.key.as_str(), row.amount),
        (Kind::Sweep, Status::Accepted, "hot", U256::ZERO)
    );
    assert_eq!((row.recipient, row.request.as_deref()), (Address::repeat_byte(0xfa), Some(r#"{"calldata":"0x01"}"#)));
    assert_eq!(journal.get("sweep-1").await.unwrap().as_ref(), Some(&row));
    assert!(journal.accepted("hot").await.unwrap().contains(&"sweep-1".to_owned()), "the engine finds it");
    // A deposit already in a sweep is in no other: nothing of the second is stored.
    assert!(journal.start_sweep(fence, sweep("sweep-2", vec![key(3, None), key(1, None)])).await.unwrap().is_none());
    assert!(journal.get("sweep-2").await.unwrap().is_none());
    assert_eq!(journal.unswept(0, 10).await.unwrap().iter().map(|row| row.address).collect::<Vec<_>>(), [bob]);
    assert_eq!(journal.open_sweeps().await.unwrap(), [("sweep-1".to_owned(), alice)]);
    let sweeping = journal.deposits(unswept[2].change, 10).await.unwrap();
    assert_eq!(sweeping.len(), 2);
    assert!(
        sweeping.iter().all(|row| row.sweep_status == SweepStatus::Sweeping && row.sweep.as_deref() == Some("sweep-1"))
    );

    // It failed (nothing moved): unswept again, in no sweep.
    let back = journal.finish_sweep(fence, "sweep-1", None).await.unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|row| row.sweep_status == SweepStatus::Unswept && row.sweep.is_none()));
    assert!(journal.open_sweeps().await.unwrap().is_empty());

    // Swept again, mined in block 12: what came to alice in block 11 (confirmed) went with it; what came in
    // block 12 and bob's deposit did not.
    journal.start_sweep(fence, sweep("sweep-3", alices)).await.unwrap().expect("stored");
    journal.record_block(fence, block(11, 0), vec![deposit(4, None, alice, Asset::Ether, 2)]).await.unwrap();
    journal.record_block(fence, block(12, 0), vec![deposit(5, None, alice, Asset::Ether, 1)]).await.unwrap();
    journal.confirm_deposits(fence, 11).await.unwrap();
    let swept = journal.finish_sweep(fence, "sweep-3", Some(12)).await.unwrap();
    let mut hashes: Vec<B256> = swept.iter().map(|row| row.tx_hash).collect();
    hashes.sort();
    assert_eq!(hashes, [B256::repeat_byte(1), B256::repeat_byte(2), B256::repeat_byte(4)]);
    assert!(swept.iter().all(|row| row.sweep_status == SweepStatus::Swept && row.sweep.as_deref() == Some("sweep-3")));
    assert!(journal.open_sweeps().await.unwrap().is_empty());
    let mut expected = journal.unswept_ether(vec![alice, bob], 12).await.unwrap();
    expected.sort();
    assert_eq!(expected, [(alice, U256::from(1)), (bob, U256::from(3))], "what alice had swept is not expected");
    assert_eq!(journal.unswept_ether(vec![alice, bob], 11).await.unwrap(), [(bob, U256::from(3))], "as of block 11");
    let all = journal.deposits(0, 100).await.unwrap();
    let status = |tx: u8| all.iter().find(|row| row.tx_hash == B256::repeat_byte(tx)).unwrap().sweep_status;
    assert_eq!((status(3), status(5)), (SweepStatus::Unswept, SweepStatus::Unswept));

    // Bob's address holds nothing any more (swept from outside): swept, by no sweep of ours; once.
    let marked = journal.mark_swept(fence, vec![key(3, None)]).await.unwrap();
    assert_eq!(marked.len(), 1);
    assert_eq!((marked[0].sweep_status, marked[0].sweep.as_deref()), (SweepStatus::Swept, None));
    assert!(journal.mark_swept(fence, vec![key(3, None)]).await.unwrap().is_empty());
    let changes: Vec<u64> = journal.deposits(0, 100).await.unwrap().iter().map(|row| row.change).collect();
    assert!(changes.windows(2).all(|pair| pair[0] < pair[1]), "{changes:?}");
}

async fn the_watchers_writes_are_fenced_by_its_lease(journal: &(impl DepositStore + JournalStore)) {
    let alice = Address::repeat_byte(0xa1);
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    let old = &watcher(journal, "one").await;
    journal.record_block(old, block(10, 0), vec![deposit(1, None, alice, Asset::Ether, 5)]).await.unwrap();
    journal.release_lease(old, "one").await.unwrap();
    let new = &watcher(journal, "two").await;
    assert!(new.epoch > old.epoch);
    let fenced = |error: JournalError| assert!(matches!(error, JournalError::Fenced { .. }), "{error:?}");
    fenced(journal.record_block(old, block(11, 0), vec![deposit(2, None, alice, Asset::Ether, 5)]).await.unwrap_err());
    fenced(journal.confirm_deposits(old, 10).await.unwrap_err());
    fenced(journal.remove_block(old, block(10, 0)).await.unwrap_err());
    fenced(journal.start_sweep(old, sweep("sweep-1", vec![key(1, None)])).await.unwrap_err());
    fenced(journal.finish_sweep(old, "sweep-1", None).await.unwrap_err());
    fenced(journal.mark_swept(old, vec![key(1, None)]).await.unwrap_err());
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(10, 0)], "nothing of the old holder's stored");
    assert_eq!(journal.confirm_deposits(new, 10).await.unwrap().len(), 1);
    assert!(journal.start_sweep(new, sweep("sweep-1", vec![key(1, None)])).await.unwrap().is_some());
}

async fn balance_checks_expect_what_the_deposits_had_brought_by_their_block(
    journal: &(impl DepositStore + JournalStore),
) {
    let fence = &watcher(journal, "one").await;
    let alice = Address::repeat_byte(0xa1);
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    journal.record_block(fence, block(20, 0), vec![deposit(1, None, alice, Asset::Ether, 5)]).await.unwrap();
    journal.record_block(fence, block(21, 0), vec![deposit(2, None, alice, Asset::Ether, 7)]).await.unwrap();
    journal.confirm_deposits(fence, 21).await.unwrap();
    let at = |block: u64| journal.unswept_ether(vec![alice], block);
    assert!(at(19).await.unwrap().is_empty());
    assert_eq!(at(20).await.unwrap(), [(alice, U256::from(5))], "block 21's deposit is not in block 20's state");
    assert_eq!(at(21).await.unwrap(), [(alice, U256::from(12))]);

    // A sweep of both, mined in block 23 as the engine writes it, then settled.
    journal.start_sweep(fence, sweep("sweep-1", vec![key(1, None), key(2, None)])).await.unwrap().expect("stored");
    assert_eq!(at(21).await.unwrap(), [(alice, U256::from(12))], "in a sweep, still there");
    let engine = super::conformance::lease(journal).await;
    journal.claim(&engine, "sweep-1", 0, None).await.unwrap();
    journal.add_attempt(&engine, "sweep-1", 0, super::conformance::attempt(9, 100)).await.unwrap();
    journal.mark_submitted(&engine, "sweep-1").await.unwrap();
    let mined_as = super::MinedAs::Paid;
    journal.mark_mined(&engine, "sweep-1", B256::repeat_byte(9), 23, block(23, 0).hash, mined_as, true).await.unwrap();
    assert_eq!(journal.finish_sweep(fence, "sweep-1", Some(23)).await.unwrap().len(), 2);
    // Swept in block 23: in the states of blocks 21 and 22 the ether was still there; from 23 on, gone.
    assert_eq!(at(21).await.unwrap(), [(alice, U256::from(12))]);
    assert_eq!(at(22).await.unwrap(), [(alice, U256::from(12))]);
    assert!(at(23).await.unwrap().is_empty(), "swept in block 23");
    // Swept by no sweep of ours (passed on, or swept from outside): gone, whatever the block.
    journal.record_block(fence, block(22, 0), vec![deposit(3, None, alice, Asset::Ether, 4)]).await.unwrap();
    journal.confirm_deposits(fence, 22).await.unwrap();
    assert_eq!(at(22).await.unwrap(), [(alice, U256::from(16))]);
    journal.mark_swept(fence, vec![key(3, None)]).await.unwrap();
    assert_eq!(at(22).await.unwrap(), [(alice, U256::from(12))]);
    // A removed deposit brought nothing.
    journal.record_block(fence, block(24, 0), vec![deposit(4, None, alice, Asset::Ether, 8)]).await.unwrap();
    assert_eq!(at(24).await.unwrap(), [(alice, U256::from(8))]);
    journal.remove_block(fence, block(24, 0)).await.unwrap();
    assert!(at(24).await.unwrap().is_empty());
}

super::conformance::conformance!(
    addresses_are_handed_out_once_per_reference,
    deposits_are_recorded_once_then_confirmed_removed_or_reversed,
    sweeps_take_each_deposit_once_and_settle_it,
    balance_checks_expect_what_the_deposits_had_brought_by_their_block,
    the_watchers_writes_are_fenced_by_its_lease,
);
