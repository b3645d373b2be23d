//! The [`WebhookStore`] contract, run against both journals (SQLite, and PostgreSQL when it is there):
//! every state change of a webhook client's withdrawal or deposit is in the outbox — written by the
//! journal's own transaction — numbered per subject, each with a unique id; none for clients without a
//! webhook; delivery in order per subject, attempts recorded, failing events retried after their back-off,
//! and the deliverer's writes fenced by its lease.

use std::collections::HashSet;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use serde_json::Value;

use super::conformance::{allow, attempt, lease, new_row};
use super::deposits::{BlockRecord, DepositKey, DepositStore, NewDeposit, NewSweep};
use super::webhooks::{DeliveryState, Outcome, WEBHOOK_LEASE, WebhookEvent, WebhookStore};
use super::{Cancelled, Claim, Fence, JournalError, JournalStore, MinedAs, NewRpc};
use crate::policy::Asset;

/// The deliverer's lease, taken by `holder`.
async fn deliverer(journal: &impl JournalStore, holder: &str) -> Fence {
    let epoch = journal.acquire_lease(WEBHOOK_LEASE, holder, Duration::from_secs(60)).await.unwrap().unwrap();
    Fence { key: WEBHOOK_LEASE.into(), epoch }
}

/// `client`'s events, oldest first.
async fn events_of(journal: &impl WebhookStore, client: &str) -> Vec<WebhookEvent> {
    let mut events = journal.webhook_events(client, None, 1000).await.unwrap();
    events.reverse();
    events
}

fn types(events: &[WebhookEvent]) -> Vec<&str> {
    events.iter().map(|event| event.event_type.as_str()).collect()
}

fn data(event: &WebhookEvent) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

fn failed(retry_in: Duration) -> Outcome {
    Outcome::Failed { error: "HTTP 503".into(), retry_in }
}

async fn every_change_of_a_webhook_clients_withdrawal_is_an_event_in_order(
    journal: &(impl JournalStore + WebhookStore),
) {
    journal.set_webhook_clients(vec!["exchange".into()]).await.unwrap();
    let fence = lease(journal).await;
    let row = new_row(journal, "w-1").await;
    // Another client's transaction (no webhook): no event.
    let rpc = NewRpc {
        id: "tx-other".into(),
        client: "wallet".into(),
        key: "hot".into(),
        recipient: Address::with_last_byte(9),
        amount: U256::from(3),
        request: "{}".into(),
    };
    journal.insert_rpc(rpc, allow()).await.unwrap().unwrap();
    assert!(matches!(journal.claim(&fence, &row.id, 0, None).await.unwrap(), Claim::Claimed { nonce: 0, .. }));
    journal.add_attempt(&fence, &row.id, 0, attempt(1, 100)).await.unwrap();
    journal.add_attempt(&fence, &row.id, 0, attempt(2, 200)).await.unwrap(); // a fee bump: no change of status
    journal.mark_submitted(&fence, &row.id).await.unwrap();
    journal.mark_submitted(&fence, &row.id).await.unwrap(); // again: nothing changes, no event
    let (hash, block) = (B256::repeat_byte(2), B256::repeat_byte(0xb1));
    journal.mark_mined(&fence, &row.id, hash, 7, block, MinedAs::Paid, false).await.unwrap();
    journal.mark_unmined(&fence, &row.id).await.unwrap(); // a reorg
    journal.mark_mined(&fence, &row.id, hash, 8, block, MinedAs::Paid, false).await.unwrap();
    journal.mark_confirmed(&fence, &row.id).await.unwrap();
    let cancelled = new_row(journal, "w-2").await;
    assert!(matches!(journal.cancel(&cancelled.id).await.unwrap(), Cancelled::Now(_)));

    let events = events_of(journal, "exchange").await;
    let first: Vec<_> = events.iter().filter(|event| event.subject == row.id).cloned().collect();
    assert_eq!(
        types(&first),
        [
            "withdrawal.accepted",
            "withdrawal.signing",
            "withdrawal.signed",
            "withdrawal.submitted",
            "withdrawal.mined",
            "withdrawal.submitted",
            "withdrawal.mined",
            "withdrawal.confirmed"
        ]
    );
    assert_eq!(first.iter().map(|event| event.sequence).collect::<Vec<_>>(), (1..=8).collect::<Vec<u64>>());
    assert!(first.windows(2).all(|pair| pair[0].seq < pair[1].seq), "stored in order");
    let ids: HashSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    assert!(events.iter().all(|event| uuid::Uuid::parse_str(&event.id).is_ok_and(|id| id.get_version_num() == 4)));
    for event in &events {
        assert_eq!((event.client.as_str(), event.subject_type.as_str()), ("exchange", "withdrawal"));
        assert_eq!((event.state, event.attempts, event.last_error.as_deref()), (DeliveryState::Pending, 0, None));
        let status = data(event)["status"].as_str().unwrap().to_owned();
        assert_eq!(event.event_type, format!("withdrawal.{status}"), "the snapshot is the row as it was");
    }
    let signed = data(&first[2]);
    assert_eq!((signed["nonce"].as_u64(), signed["transactions"].as_u64()), (Some(0), Some(1)), "{signed}");
    assert_eq!(signed["amount"], "9");
    let confirmed = data(&first[7]);
    assert_eq!(
        (confirmed["block_number"].as_u64(), confirmed["tx_hash"].as_str()),
        (Some(8), Some(&*hash.to_string()))
    );
    assert!(confirmed["confirmed"] == true || confirmed["confirmed"] == 1, "{confirmed}");
    assert_eq!(confirmed["transactions"].as_u64(), Some(2));
    let second: Vec<_> = events.iter().filter(|event| event.subject == cancelled.id).cloned().collect();
    assert_eq!(types(&second), ["withdrawal.accepted", "withdrawal.cancelled"]);
    assert!(events_of(journal, "wallet").await.is_empty(), "no webhook, no event");
    assert_eq!(journal.waiting_events().await.unwrap(), 10);

    // Only the first event of each subject is due.
    let due = journal.due_events("exchange", 100).await.unwrap();
    assert_eq!(
        due.iter().map(|event| (event.subject.as_str(), event.sequence)).collect::<Vec<_>>(),
        [(row.id.as_str(), 1), (cancelled.id.as_str(), 1)]
    );
    assert_eq!(journal.due_events("exchange", 1).await.unwrap(), due[..1], "the limit holds");
    assert!(journal.due_events("wallet", 100).await.unwrap().is_empty(), "only the client's own");

    // A client whose webhook is gone: its events wait, and its changes are no longer written.
    journal.set_webhook_clients(Vec::new()).await.unwrap();
    assert!(journal.due_events("exchange", 100).await.unwrap().is_empty());
    assert_eq!(journal.waiting_events().await.unwrap(), 0);
    new_row(journal, "w-3").await;
    assert_eq!(events_of(journal, "exchange").await.len(), 10);
}

async fn events_are_delivered_in_order_per_subject_retried_and_fenced(journal: &(impl JournalStore + WebhookStore)) {
    journal.set_webhook_clients(vec!["exchange".into(), "exchange".into()]).await.unwrap();
    let key_fence = lease(journal).await;
    let a = new_row(journal, "w-a").await;
    let b = new_row(journal, "w-b").await;
    journal.claim(&key_fence, &a.id, 0, None).await.unwrap();
    journal.claim(&key_fence, &b.id, 0, None).await.unwrap();
    let fence = deliverer(journal, "one").await;
    let due = journal.due_events("exchange", 10).await.unwrap();
    assert_eq!(
        due.iter().map(|event| (event.subject.as_str(), event.sequence)).collect::<Vec<_>>(),
        [(a.id.as_str(), 1), (b.id.as_str(), 1)]
    );
    let (a1, b1) = (due[0].clone(), due[1].clone());

    // a's first attempt fails, to be retried at once: still its first event due, never its second.
    assert!(journal.record_delivery(&fence, &a1.id, failed(Duration::ZERO)).await.unwrap());
    // b's is acknowledged: its second event is due now.
    assert!(journal.record_delivery(&fence, &b1.id, Outcome::Delivered).await.unwrap());
    let due = journal.due_events("exchange", 10).await.unwrap();
    assert_eq!(
        due.iter().map(|event| (event.subject.as_str(), event.sequence)).collect::<Vec<_>>(),
        [(a.id.as_str(), 1), (b.id.as_str(), 2)]
    );
    assert_eq!(
        (due[0].state, due[0].attempts, due[0].last_error.as_deref()),
        (DeliveryState::Failing, 1, Some("HTTP 503"))
    );
    // Failing again, with an hour's back-off: nothing of a is due before then.
    assert!(journal.record_delivery(&fence, &a1.id, failed(Duration::from_secs(3600))).await.unwrap());
    let due = journal.due_events("exchange", 10).await.unwrap();
    assert_eq!(due.iter().map(|event| event.subject.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);
    let failing = journal.webhook_events("exchange", Some(DeliveryState::Failing), 10).await.unwrap();
    assert_eq!(failing.len(), 1);
    assert_eq!((failing[0].id.as_str(), failing[0].attempts), (a1.id.as_str(), 2));
    assert!(failing[0].next_attempt_ms > failing[0].created_ms + 3_000_000, "{:?}", failing[0]);
    let delivered = journal.webhook_events("exchange", Some(DeliveryState::Delivered), 10).await.unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!((delivered[0].id.as_str(), delivered[0].attempts), (b1.id.as_str(), 1));
    assert!(delivered[0].delivered_ms.is_some());
    assert_eq!(journal.webhook_events("exchange", Some(DeliveryState::Pending), 10).await.unwrap().len(), 2);
    assert_eq!(journal.webhook_events("exchange", None, 2).await.unwrap().len(), 2, "the limit holds");
    assert!(journal.webhook_events("wallet", None, 10).await.unwrap().is_empty(), "only the client's own");
    assert_eq!(journal.waiting_events().await.unwrap(), 3);

    // A delivered event stays delivered (a late answer of another attempt changes nothing).
    assert!(!journal.record_delivery(&fence, &b1.id, failed(Duration::ZERO)).await.unwrap());
    assert!(!journal.record_delivery(&fence, &b1.id, Outcome::Delivered).await.unwrap());

    // Another holder's lease (here: a new epoch): the old one's attempts are refused, nothing stored.
    let taken = deliverer(journal, "one").await;
    assert_ne!(taken.epoch, fence.epoch);
    let refused = journal.record_delivery(&fence, &due[0].id, Outcome::Delivered).await.unwrap_err();
    assert!(matches!(refused, JournalError::Fenced { .. }), "{refused:?}");
    assert_eq!(journal.due_events("exchange", 10).await.unwrap(), due, "nothing changed");
    assert!(journal.record_delivery(&taken, &due[0].id, Outcome::Delivered).await.unwrap());
}

fn deposit(tx: u8, to: Address, amount: u64) -> NewDeposit {
    NewDeposit {
        tx_hash: B256::repeat_byte(tx),
        log_index: None,
        address: to,
        asset: Asset::Ether,
        amount: U256::from(amount),
        sender: Address::repeat_byte(0x5e),
    }
}

fn block(number: u64) -> BlockRecord {
    BlockRecord { number, hash: B256::left_padding_from(&number.to_be_bytes()) }
}

async fn every_change_of_a_webhook_clients_deposit_is_an_event(
    journal: &(impl JournalStore + DepositStore + WebhookStore),
) {
    journal.set_webhook_clients(vec!["wallet".into()]).await.unwrap();
    let epoch = journal.acquire_lease("@deposits", "one", Duration::from_secs(60)).await.unwrap().unwrap();
    let fence = &Fence { key: "@deposits".into(), epoch };
    let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
    journal.deposit_address("alice", alice, "wallet").await.unwrap();
    journal.deposit_address("bob", bob, "other").await.unwrap();
    journal.record_block(fence, block(10), vec![deposit(1, alice, 5), deposit(2, bob, 6)]).await.unwrap();
    journal.record_block(fence, block(11), vec![deposit(3, alice, 7)]).await.unwrap();
    journal.confirm_deposits(fence, 10).await.unwrap();
    journal.remove_block(fence, block(11)).await.unwrap();
    let sweep = NewSweep {
        id: "sweep-1".into(),
        key: "hot".into(),
        factory: Address::repeat_byte(0xfa),
        request: r#"{"calldata":"0x01"}"#.into(),
        deposits: vec![DepositKey { tx_hash: B256::repeat_byte(1), log_index: None }],
    };
    journal.start_sweep(fence, sweep).await.unwrap().expect("stored");
    journal.finish_sweep(fence, "sweep-1", Some(12)).await.unwrap();

    let events = events_of(journal, "wallet").await;
    let subject = format!("{}:-1", B256::repeat_byte(1));
    let first: Vec<_> = events.iter().filter(|event| event.subject == subject).cloned().collect();
    assert_eq!(types(&first), ["deposit.pending", "deposit.confirmed", "deposit.sweeping", "deposit.swept"]);
    assert_eq!(first.iter().map(|event| event.sequence).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let swept = data(&first[3]);
    assert_eq!((swept["reference"].as_str(), swept["sweep"].as_str()), (Some("alice"), Some("sweep-1")), "{swept}");
    assert_eq!((swept["status"].as_str(), swept["sweep_status"].as_str()), (Some("confirmed"), Some("swept")));
    assert_eq!((swept["amount"].as_str(), swept["log_index"].as_i64()), (Some("5"), Some(-1)));
    let third = format!("{}:-1", B256::repeat_byte(3));
    let removed: Vec<_> = events.iter().filter(|event| event.subject == third).cloned().collect();
    assert_eq!(types(&removed), ["deposit.pending", "deposit.removed"]);
    assert!(events.iter().all(|event| event.subject_type == "deposit" && event.client == "wallet"));
    assert_eq!(events.len(), 6, "none for bob's address (a client without a webhook): {events:?}");
    assert!(events_of(journal, "other").await.is_empty());
    // The sweep's own row (no client) has no events.
    assert!(events.iter().all(|event| !event.subject.starts_with("sweep")));
}

super::conformance::conformance!(
    every_change_of_a_webhook_clients_withdrawal_is_an_event_in_order,
    events_are_delivered_in_order_per_subject_retried_and_fenced,
    every_change_of_a_webhook_clients_deposit_is_an_event,
);
