//! The [`DepositStore`] contract, run against both journals (SQLite, and PostgreSQL when it is there):
//! an address per reference, however often or concurrently asked; each deposit recorded once; pending,
//! confirmed, removed, reversed and brought back, every change numbered in order.

use alloy_primitives::{Address, B256, U256};

use super::JournalError;
use super::deposits::{BlockRecord, DepositStatus, DepositStore, NewDeposit};
use crate::policy::Asset;

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

async fn deposits_are_recorded_once_then_confirmed_removed_or_reversed(journal: &impl DepositStore) {
    let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    let token = Asset::Token(Address::repeat_byte(0x70));
    let ten = vec![deposit(1, None, alice, Asset::Ether, 5), deposit(2, Some(3), bob, token, 7)];
    assert_eq!(journal.record_block(block(10, 0), ten.clone()).await.unwrap(), 2);
    assert_eq!(journal.record_block(block(10, 0), ten).await.unwrap(), 0, "each deposit is recorded once");
    let rows = journal.deposits(0, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].reference.as_deref(), rows[0].log_index, rows[0].asset), (Some("alice"), None, Asset::Ether));
    assert_eq!((rows[1].reference.as_deref(), rows[1].log_index, rows[1].amount), (None, Some(3), U256::from(7)));
    assert!(rows.iter().all(|row| row.status == DepositStatus::Pending && row.block_number == 10));
    assert!(rows[0].change < rows[1].change);

    assert!(journal.confirm_deposits(9).await.unwrap().is_empty(), "not deep enough");
    let confirmed = journal.confirm_deposits(10).await.unwrap();
    assert_eq!(confirmed.len(), 2);
    assert!(confirmed.iter().all(|row| row.status == DepositStatus::Confirmed && row.change > rows[1].change));
    assert_eq!(journal.deposits(rows[1].change, 10).await.unwrap(), confirmed, "what changed since");

    // Block 11 read, then dropped by a reorg: its deposit is removed, never confirmed; mined again in the
    // new block 11, it is pending again.
    assert_eq!(journal.record_block(block(11, 0), vec![deposit(3, None, alice, Asset::Ether, 9)]).await.unwrap(), 1);
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(11, 0), block(10, 0)]);
    let removed = journal.remove_block(block(11, 0)).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!((removed[0].status, removed[0].tx_hash), (DepositStatus::Removed, B256::repeat_byte(3)));
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(10, 0)]);
    assert!(journal.confirm_deposits(11).await.unwrap().is_empty(), "a removed deposit is never confirmed");
    assert_eq!(journal.record_block(block(11, 1), vec![deposit(3, None, alice, Asset::Ether, 9)]).await.unwrap(), 1);
    let back = journal.deposits(removed[0].change, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].status, back[0].block_hash), (DepositStatus::Pending, block(11, 1).hash));

    // Another block 11 cannot be recorded over the one recorded; removing a block by a hash not recorded
    // changes nothing.
    let other = journal.record_block(block(11, 2), vec![deposit(9, None, alice, Asset::Ether, 1)]).await.unwrap_err();
    assert!(matches!(other, JournalError::Refused(_)), "{other:?}");
    assert!(journal.remove_block(block(10, 5)).await.unwrap().is_empty());
    assert_eq!(journal.recent_blocks(5).await.unwrap(), [block(11, 1), block(10, 0)]);

    // A reorg deeper than the confirmations: what was confirmed in block 10 is reversed.
    let reversed = journal.remove_block(block(10, 0)).await.unwrap();
    assert_eq!(reversed.len(), 2);
    assert!(reversed.iter().all(|row| row.status == DepositStatus::Reversed));
    // Mined again in another block 10 — the log at index 3 now another transfer of the transaction — the
    // deposits are pending again, with what they are now.
    let again = vec![deposit(1, None, alice, Asset::Ether, 5), deposit(2, Some(3), alice, token, 8)];
    assert_eq!(journal.record_block(block(10, 3), again).await.unwrap(), 2);
    let back: Vec<_> = journal.deposits(reversed[1].change, 10).await.unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|row| row.status == DepositStatus::Pending && row.block_hash == block(10, 3).hash));
    assert_eq!((back[1].address, back[1].amount), (alice, U256::from(8)), "brought back as it is now");
    assert_eq!(journal.remove_block(block(11, 1)).await.unwrap().len(), 1);
    assert_eq!(journal.confirm_deposits(20).await.unwrap().len(), 2, "block 10's two; block 11's was removed");
    let all = journal.deposits(0, 100).await.unwrap();
    let changes: Vec<u64> = all.iter().map(|row| row.change).collect();
    assert!(changes.windows(2).all(|pair| pair[0] < pair[1]), "{changes:?}");
    assert_eq!(journal.deposits(0, 2).await.unwrap().len(), 2, "the limit holds");
}

super::conformance::conformance!(
    addresses_are_handed_out_once_per_reference,
    deposits_are_recorded_once_then_confirmed_removed_or_reversed
);
