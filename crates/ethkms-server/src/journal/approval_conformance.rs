//! The [`ApprovalStore`] contract, run against both journals (SQLite, and PostgreSQL when it is there): a
//! withdrawal stored `pending_approval` with its terms is out of the engine's hands; each approver decides
//! once; the approval that completes the quorum makes it `accepted`, once, however many race; a rejection
//! and expiry end it, the amount given back to the daily limit; nothing revives a final withdrawal.

use alloy_primitives::{Address, Bytes, U256};

use super::approvals::{ApprovalTerms, Decided, Decision};
use super::conformance::{allow, withdrawal};
use super::{Inserted, JournalStore, LimitCheck, NewWithdrawal, Status, Withdrawal, now_ms};
use crate::policy::Asset;

const HOUR_MS: u64 = 3_600_000;

fn pending(idempotency_key: &str, quorum: u32, expires_ms: u64) -> NewWithdrawal {
    NewWithdrawal { approval: Some(ApprovalTerms { quorum, expires_ms }), ..withdrawal(idempotency_key, 5) }
}

async fn insert(journal: &impl JournalStore, new: NewWithdrawal) -> Withdrawal {
    match journal.insert(new, allow()).await.unwrap() {
        Inserted::New(row) => row,
        other => panic!("{other:?}"),
    }
}

fn decision(approver: u8, approve: bool, at_ms: u64) -> Decision {
    Decision { approver: Address::with_last_byte(approver), approve, signature: Bytes::from(vec![approver; 65]), at_ms }
}

/// What the key has counted against its daily limit now.
async fn spent(journal: &impl JournalStore) -> U256 {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(U256::ZERO));
    let reader = std::sync::Arc::clone(&seen);
    let check = LimitCheck {
        assets: vec![Asset::Ether],
        check: Box::new(move |spent| {
            *reader.lock().unwrap() = spent.get(&Asset::Ether).copied().unwrap_or_default();
            Err(crate::policy::Denial { rule: crate::policy::Rule::DailyLimit, message: "only reading".into() })
        }),
    };
    let _ = journal.insert(withdrawal("reading-the-limit", 1), check).await.unwrap();
    *seen.lock().unwrap()
}

pub(super) async fn a_quorum_of_distinct_approvers_hands_the_withdrawal_to_the_engine_once(
    journal: &impl JournalStore,
) {
    let now = now_ms();
    let row = insert(journal, pending("big", 2, now + HOUR_MS)).await;
    assert_eq!(row.status, Status::PendingApproval);
    assert!(journal.unfinished(None).await.unwrap().is_empty(), "not the engine's yet");
    assert!(journal.accepted("hot").await.unwrap().is_empty());
    assert_eq!(journal.pending_approvals(&["hot".into()], 10).await.unwrap().len(), 1);
    assert!(journal.pending_approvals(&["cold".into()], 10).await.unwrap().is_empty());

    assert_eq!(journal.decide(&row.id, decision(1, true, now)).await.unwrap(), Decided::Counted(1));
    assert_eq!(journal.decide(&row.id, decision(1, true, now + 1)).await.unwrap(), Decided::Duplicate);
    assert_eq!(journal.decide(&row.id, decision(1, false, now + 1)).await.unwrap(), Decided::Duplicate);
    let state = journal.approval_state(&row.id).await.unwrap().unwrap();
    assert_eq!((state.terms.quorum, state.decisions.len()), (2, 1));
    assert_eq!(state.decisions[0].approver, Address::with_last_byte(1));
    assert_eq!(state.decisions[0].signature, Bytes::from(vec![1; 65]));

    // The second and third approvers at once: one completes the quorum, the other finds it done.
    let (second, third) =
        tokio::join!(journal.decide(&row.id, decision(2, true, now)), journal.decide(&row.id, decision(3, true, now)));
    let outcomes = [second.unwrap(), third.unwrap()];
    let approved: Vec<_> = outcomes.iter().filter(|outcome| matches!(outcome, Decided::Approved(_))).collect();
    assert_eq!(approved.len(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|outcome| *outcome == Decided::NotPending(Status::Accepted)),
        "the other finds it approved: {outcomes:?}"
    );
    let Decided::Approved(accepted) = approved[0] else { unreachable!() };
    assert_eq!(accepted.status, Status::Accepted);
    assert_eq!(journal.accepted("hot").await.unwrap(), vec![row.id.clone()]);
    assert!(journal.pending_approvals(&["hot".into()], 10).await.unwrap().is_empty());
    // A rejection after the quorum changes nothing.
    assert_eq!(journal.decide(&row.id, decision(4, false, now)).await.unwrap(), Decided::NotPending(Status::Accepted));
    // A withdrawal that never needed approvals has none to take.
    let plain = insert(journal, withdrawal("small", 1)).await;
    assert_eq!(plain.status, Status::Accepted);
    assert_eq!(journal.approval_state(&plain.id).await.unwrap(), None);
    assert_eq!(journal.decide(&plain.id, decision(1, true, now)).await.unwrap(), Decided::NotFound);
    assert_eq!(journal.decide("no-such-withdrawal", decision(1, true, now)).await.unwrap(), Decided::NotFound);
}

pub(super) async fn rejection_and_expiry_end_it_and_give_the_amount_back(journal: &impl JournalStore) {
    let now = now_ms();
    let before = spent(journal).await;
    let rejected = insert(journal, pending("rejected", 2, now + HOUR_MS)).await;
    let expiring = insert(journal, pending("expiring", 2, now + 1_000)).await;
    let late = insert(journal, pending("late", 1, now + 2_000)).await;
    assert_eq!(spent(journal).await, before + U256::from(15), "pending withdrawals count against the limit");

    assert_eq!(journal.decide(&rejected.id, decision(1, true, now)).await.unwrap(), Decided::Counted(1));
    let Decided::Rejected(row) = journal.decide(&rejected.id, decision(2, false, now)).await.unwrap() else {
        panic!("a rejection ends it")
    };
    assert_eq!((row.status, row.confirmed), (Status::Rejected, true));
    assert_eq!(
        journal.decide(&rejected.id, decision(3, true, now)).await.unwrap(),
        Decided::NotPending(Status::Rejected)
    );

    // Expiry by the sweep: only what is due.
    let expired = journal.expire_approvals(now + 1_000).await.unwrap();
    assert_eq!(expired.iter().map(|row| row.id.clone()).collect::<Vec<_>>(), vec![expiring.id.clone()]);
    assert_eq!((expired[0].status, expired[0].confirmed), (Status::Expired, true));
    assert!(journal.expire_approvals(now + 1_000).await.unwrap().is_empty(), "once");
    assert_eq!(
        journal.decide(&expiring.id, decision(1, true, now)).await.unwrap(),
        Decided::NotPending(Status::Expired)
    );
    // Expiry by a decision that comes at or after it: not counted, and the withdrawal ends.
    assert_eq!(journal.decide(&late.id, decision(1, true, now + 2_000)).await.unwrap(), Decided::Expired);
    assert_eq!(journal.get(&late.id).await.unwrap().unwrap().status, Status::Expired);
    assert_eq!(spent(journal).await, before, "every amount given back");
    assert!(journal.unfinished(None).await.unwrap().is_empty());
    assert!(journal.pending_approvals(&["hot".into()], 10).await.unwrap().is_empty());

    // A client may cancel a withdrawal waiting for approvals; its approvers then find it cancelled.
    let cancelled = insert(journal, pending("cancelled", 1, now + HOUR_MS)).await;
    let answer = journal.cancel(&cancelled.id).await.unwrap();
    assert!(matches!(answer, super::Cancelled::Now(_)), "{answer:?}");
    assert_eq!(
        journal.decide(&cancelled.id, decision(1, true, now)).await.unwrap(),
        Decided::NotPending(Status::Cancelled)
    );
}

super::conformance::conformance!(
    a_quorum_of_distinct_approvers_hands_the_withdrawal_to_the_engine_once,
    rejection_and_expiry_end_it_and_give_the_amount_back,
);
