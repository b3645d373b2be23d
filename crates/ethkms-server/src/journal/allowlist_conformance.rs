//! The [`AllowlistStore`](super::AllowlistStore) contract, run against both journals (SQLite, and
//! PostgreSQL when it is there): one live entry per key and address; each approver decides once; the
//! approval that completes the quorum approves it once, however many race; a rejection before the entry
//! takes effect cancels it, and nothing revives a cancelled or removed entry; removal is at once.

use alloy_primitives::{Address, Bytes};

use super::allowlist::{AdditionDecided, AllowlistStatus, NewAddition, Proposed};
use super::{Addition, Decision, JournalStore, now_ms};

const HOUR_MS: u64 = 3_600_000;

fn addition(key: &str, address: u8, quorum: u32, proposed_ms: u64, effective_ms: u64) -> NewAddition {
    NewAddition {
        key: key.into(),
        address: Address::with_last_byte(address),
        client: "ops".into(),
        label: Some(format!("address {address}")),
        quorum,
        proposed_ms,
        effective_ms,
    }
}

fn decision(approver: u8, approve: bool, at_ms: u64) -> Decision {
    Decision { approver: Address::with_last_byte(approver), approve, signature: Bytes::from(vec![approver; 65]), at_ms }
}

async fn propose(journal: &impl JournalStore, new: NewAddition) -> Addition {
    match journal.propose_addition(new).await.unwrap() {
        Proposed::New(entry) => entry,
        other => panic!("{other:?}"),
    }
}

pub(super) async fn a_quorum_approves_an_addition_once_and_it_counts_from_its_effective_time(
    journal: &impl JournalStore,
) {
    let now = now_ms();
    let entry = propose(journal, addition("hot", 7, 2, now, now + HOUR_MS)).await;
    assert_eq!((entry.status, entry.quorum, entry.effective_ms), (AllowlistStatus::Proposed, 2, now + HOUR_MS));
    assert_eq!((entry.client.as_str(), entry.label.as_deref()), ("ops", Some("address 7")));
    assert!(!entry.active(now + HOUR_MS), "not approved yet");
    // One live entry per key and address; another key has its own.
    let again = journal.propose_addition(addition("hot", 7, 2, now + 5, now + HOUR_MS + 5)).await.unwrap();
    assert_eq!(again, Proposed::Exists(entry.clone()));
    let other_key = propose(journal, addition("cold", 7, 1, now, now + HOUR_MS)).await;
    assert_ne!(other_key.id, entry.id);

    let address = Address::with_last_byte(7);
    assert_eq!(
        journal.decide_addition("hot", address, decision(1, true, now)).await.unwrap(),
        AdditionDecided::Counted(1)
    );
    let duplicate = journal.decide_addition("hot", address, decision(1, false, now + 1)).await.unwrap();
    assert_eq!(duplicate, AdditionDecided::Duplicate, "an approver decides once");
    // The second and third approvers at once: one completes the quorum.
    let (second, third) = tokio::join!(
        journal.decide_addition("hot", address, decision(2, true, now + 2)),
        journal.decide_addition("hot", address, decision(3, true, now + 2))
    );
    let outcomes = [second.unwrap(), third.unwrap()];
    let approved: Vec<_> = outcomes.iter().filter(|outcome| matches!(outcome, AdditionDecided::Approved(_))).collect();
    assert_eq!(approved.len(), 1, "{outcomes:?}");
    assert!(outcomes.contains(&AdditionDecided::Counted(3)), "{outcomes:?}");
    let AdditionDecided::Approved(row) = approved[0] else { unreachable!() };
    assert_eq!((row.status, row.decisions.len()), (AllowlistStatus::Approved, 2));
    assert!(!row.active(now + HOUR_MS - 1) && row.active(now + HOUR_MS), "from its effective time on");
    let approved = journal.approved_additions().await.unwrap();
    assert_eq!(approved.iter().map(|entry| entry.id.clone()).collect::<Vec<_>>(), vec![entry.id.clone()]);
    assert_eq!(approved[0].decisions.len(), 3);
    // In effect, it takes no decision: removal is the way out.
    assert_eq!(
        journal.decide_addition("hot", address, decision(4, false, now + HOUR_MS)).await.unwrap(),
        AdditionDecided::NotPending(AllowlistStatus::Approved)
    );
    assert_eq!(
        journal.decide_addition("hot", Address::with_last_byte(8), decision(1, true, now)).await.unwrap(),
        AdditionDecided::NotFound
    );
    let live = journal.live_addition("hot", address).await.unwrap().unwrap();
    assert_eq!((live.id, live.status), (entry.id.clone(), AllowlistStatus::Approved));
    let listed = journal.additions("hot", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].decisions[0].signature, Bytes::from(vec![1; 65]));
}

pub(super) async fn a_rejection_during_the_delay_cancels_and_a_removal_is_at_once(journal: &impl JournalStore) {
    let now = now_ms();
    let (seven, eight) = (Address::with_last_byte(7), Address::with_last_byte(8));
    // Approved, but not in effect yet: one approver's rejection still cancels it.
    propose(journal, addition("hot", 7, 1, now, now + HOUR_MS)).await;
    assert!(matches!(
        journal.decide_addition("hot", seven, decision(1, true, now)).await.unwrap(),
        AdditionDecided::Approved(_)
    ));
    let AdditionDecided::Cancelled(cancelled) =
        journal.decide_addition("hot", seven, decision(2, false, now + 1)).await.unwrap()
    else {
        panic!("a rejection during the delay cancels")
    };
    assert_eq!(cancelled.status, AllowlistStatus::Cancelled);
    assert_eq!(journal.live_addition("hot", seven).await.unwrap(), None);
    assert!(journal.approved_additions().await.unwrap().is_empty());
    assert_eq!(
        journal.decide_addition("hot", seven, decision(3, true, now + 2)).await.unwrap(),
        AdditionDecided::NotFound,
        "nothing revives a cancelled entry"
    );
    // Proposed again: a new entry, with none of the old decisions.
    let fresh = propose(journal, addition("hot", 7, 1, now + 3, now + HOUR_MS)).await;
    assert!(fresh.id != cancelled.id && fresh.decisions.is_empty());

    // Removal, proposed or approved, is at once; a second removal finds nothing.
    propose(journal, addition("hot", 8, 1, now, now)).await;
    assert!(matches!(
        journal.decide_addition("hot", eight, decision(1, true, now)).await.unwrap(),
        AdditionDecided::Approved(ref entry) if entry.active(now)
    ));
    let removed = journal.remove_addition("hot", eight, now + 10).await.unwrap().unwrap();
    assert_eq!((removed.status, removed.updated_ms), (AllowlistStatus::Removed, now + 10));
    assert_eq!(journal.remove_addition("hot", eight, now + 11).await.unwrap(), None);
    assert_eq!(journal.remove_addition("hot", seven, now + 12).await.unwrap().unwrap().id, fresh.id);
    assert!(journal.approved_additions().await.unwrap().is_empty());
    let statuses: Vec<_> = journal.additions("hot", 10).await.unwrap().iter().map(|entry| entry.status).collect();
    assert_eq!(statuses, [AllowlistStatus::Cancelled, AllowlistStatus::Removed, AllowlistStatus::Removed]);
    assert_eq!(journal.additions("hot", 1).await.unwrap().len(), 1, "the newest, at most `limit`");
}

super::conformance::conformance!(
    a_quorum_approves_an_addition_once_and_it_counts_from_its_effective_time,
    a_rejection_during_the_delay_cancels_and_a_removal_is_at_once,
);
