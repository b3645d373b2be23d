//! The engine's state and vocabulary: per-key state, a followed row ([`InFlight`]), why a row could not go
//! further ([`Trouble`]), and what processing did ([`Processed`], [`RpcFailure`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ethkms::eth::chain::Fees;

use crate::journal::{Attempt, JournalError, Withdrawal};
use crate::nonces::Nonces;
use crate::shared::{WorkCounter, redact_urls};

/// This replica's lease on a key: the right to process its rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldLease {
    /// Its epoch, which every journal write of the key carries.
    pub(crate) epoch: u64,
    /// Until when it is surely still ours (measured from before the request that took or renewed it, with
    /// a margin): past it, nothing more is signed or broadcast for the key until it is renewed.
    pub(crate) valid_until: Instant,
    /// The key's rows have been recovered after taking it: new rows may be processed at once.
    pub(crate) recovered: bool,
}

/// Per-key state of the engine.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// The lease, while this replica holds it.
    pub(crate) lease: Mutex<Option<HeldLease>>,
    /// The key's nonces as the journal last answered them (the journal allocates; this copy shows the
    /// watcher which nonces are free).
    pub(crate) nonces: Mutex<Nonces>,
    /// Rows of this key between deciding to take a nonce and storing their first transaction (a free nonce
    /// is not filled while any is).
    pub(crate) waiting: WorkCounter,
    /// The node's pending count, with when the request for it was sent.
    pub(crate) pending: tokio::sync::Mutex<Option<(Instant, u64)>>,
    /// Gap fills: the earliest next try, and the current wait (doubled after each refused gap fill).
    pub(crate) gap_backoff: Mutex<(Option<Instant>, Duration)>,
    /// Rows of this key being processed (from the start of processing until followed or failed; the rows of
    /// `waiting` are among them).
    pub(crate) in_process: WorkCounter,
    /// A nonce below every followed row's that nothing of ours holds, and since when it has been seen so.
    pub(crate) hole: Mutex<Option<(u64, Instant)>>,
}

/// A transaction of someone else's that took a row's nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub(crate) tx_hash: alloy_primitives::B256,
    pub(crate) block: u64,
}

/// A row whose transaction is stored and not yet final, as the watcher follows it.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) row: Withdrawal,
    /// The node confirmed it has the latest transaction.
    pub(crate) submitted: bool,
    /// The fees of the newest transaction the node accepted (bumps start from these).
    pub(crate) accepted_fees: Option<Fees>,
    /// When the latest transaction may be broadcast again, and the wait after that.
    pub(crate) next_broadcast: Instant,
    pub(crate) broadcast_delay: Duration,
    /// Watcher rounds in which the nonce was mined but no receipt of ours was found.
    pub(crate) misses: u32,
    /// Someone else's transaction found at the nonce.
    pub(crate) foreign: Option<Foreign>,
    /// A fee cap has stopped its bumps (reported once).
    pub(crate) cap_reported: bool,
    /// When its transaction was last sent again because the node had lost it (ms since the epoch).
    pub(crate) lost_sent_ms: Option<u64>,
}

/// Why a row could not be taken further now.
#[derive(Debug)]
pub(crate) enum Trouble {
    /// Permanent, and nothing was broadcast: the row fails, unpaid.
    Fail(String),
    /// The client's own mistake (fees above the caps, a nonce of its choosing, a transaction the node will
    /// not execute): the row fails unpaid, and an RPC client is told it was its request.
    Invalid(String),
    /// Passing: try again later.
    Retry {
        /// What failed (`kms`, `audit`, `journal`, `node`), for `ethkms_transient_retries_total`.
        cause: &'static str,
        reason: String,
    },
    /// Nothing to do: another task owns the row, or it is no longer open.
    Skip(String),
}

impl Trouble {
    /// A node error: passing, and with any URL in it hidden.
    pub(crate) fn node(reason: impl std::fmt::Display) -> Self {
        Self::Retry { cause: "node", reason: redact_urls(&reason.to_string()) }
    }

    pub(crate) fn journal(error: &JournalError) -> Self {
        match error {
            JournalError::Refused(reason) => Self::Skip(reason.clone()),
            JournalError::Fenced { .. } => Self::Skip(error.to_string()),
            other => Self::Retry { cause: "journal", reason: other.to_string() },
        }
    }
}

/// Why [`Engine::process_now`] gave up, by whose fault: the JSON-RPC layer answers each differently.
#[derive(Debug)]
pub(crate) struct RpcFailure {
    /// Whose fault, and whether trying again may help.
    pub(crate) kind: FailureKind,
    /// What went wrong (URLs hidden).
    pub(crate) reason: String,
}

/// See [`RpcFailure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The request itself is wrong: retrying it as it is cannot help.
    Client,
    /// The key service throttled the signatures until the deadline: retry later, more slowly.
    Throttled,
    /// The key service, the node, the journal or the audit log failed until the deadline: retry later.
    Unavailable,
    /// Something on the service's side that a retry will not mend (a disabled key, say).
    Server,
}

/// What processing a row did.
#[derive(Debug)]
pub(crate) enum Processed {
    /// Signed, stored and broadcast (whatever the node answered, it is followed until its nonce is mined).
    Sent { attempt: Attempt },
    /// Failed before anything was broadcast.
    Failed(String),
}
