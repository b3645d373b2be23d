//! What a journal row is: [`Withdrawal`] (its [`Kind`], [`Status`] and signed [`Attempt`]s), as the
//! engine, the REST API and both journals read it.

use std::fmt;

use alloy_primitives::{Address, B256, Bytes, U256};

use crate::policy::Asset;

/// Where a row is. The engine moves it only forwards, except that a reorg takes `mined` (or a mined
/// cancellation) back to `submitted`. A withdrawal that needs approvals starts `pending_approval`, out of
/// the engine's hands, and becomes `accepted` with its quorum — or `rejected` or `expired`, final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Status {
    /// Stored, waiting for its approvers' quorum; the engine does not see it.
    PendingApproval,
    /// Stored, not yet claimed for signing.
    Accepted,
    /// Claimed for signing with a nonce; no transaction stored yet.
    Signing,
    /// A signed transaction is stored; the node has not confirmed it has it.
    Signed,
    /// The node has (one of) its transactions.
    Submitted,
    /// One of its transactions is mined and succeeded; waiting for confirmations.
    Mined,
    /// Mined and confirmed: final.
    Confirmed,
    /// Will not happen, and provably did not move value: refused before broadcast, its nonce taken by
    /// another transaction, or mined and reverted. Final.
    Failed,
    /// Cancelled: before signing, or by a zero-value transaction that took its nonce (mined). Final once
    /// confirmed; a reorg before that can take it back to `submitted`.
    Cancelled,
    /// An approver rejected it. Final, nothing signed.
    Rejected,
    /// Its approvals did not come before its expiry. Final, nothing signed.
    Expired,
}

impl Status {
    /// The name used in the journal and the API.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Accepted => "accepted",
            Self::Signing => "signing",
            Self::Signed => "signed",
            Self::Submitted => "submitted",
            Self::Mined => "mined",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending_approval" => Self::PendingApproval,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            "accepted" => Self::Accepted,
            "signing" => Self::Signing,
            "signed" => Self::Signed,
            "submitted" => Self::Submitted,
            "mined" => Self::Mined,
            "confirmed" => Self::Confirmed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the status is final: confirmed, failed, rejected or expired. (A cancellation is final once
    /// confirmed, or at once when nothing was signed.)
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::Failed | Self::Rejected | Self::Expired)
    }
}

/// As its [name](Status::as_str), in the REST API.
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a row exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client's REST withdrawal.
    Withdrawal,
    /// A transaction a client asked for through `eth_sendTransaction` or `eth_signTransaction`.
    Rpc,
    /// A zero-value transfer to the key itself that uses up a nonce left free by a transaction that was
    /// refused before it was ever broadcast.
    GapFill,
    /// A call of the deposit factory that deploys deposit addresses and moves what they hold to the parent
    /// (stored by the deposit sweeper with the deposits it moves; its `request` holds the calldata).
    Sweep,
}

impl Kind {
    /// The name used in the journal and the audit log.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Withdrawal => "withdrawal",
            Self::Rpc => "rpc",
            Self::GapFill => "gap_fill",
            Self::Sweep => "sweep",
        }
    }

    /// The kind named `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "withdrawal" => Self::Withdrawal,
            "rpc" => Self::Rpc,
            "gap_fill" => Self::GapFill,
            "sweep" => Self::Sweep,
            _ => return None,
        })
    }
}

/// What a sweep row's `request` holds (JSON): the call of the deposit factory that the sweeping key signs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SweepRequest {
    /// The calldata of `DepositFactory.sweep`.
    pub calldata: Bytes,
}

/// One signed transaction of a row (several when it was re-signed with higher fees, or cancelled; at most
/// one of them can be mined, since they share the nonce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The transaction hash.
    pub tx_hash: B256,
    /// The signed transaction, EIP-2718 encoded.
    pub raw: Bytes,
    /// Max fee per gas (the gas price of a legacy transaction).
    pub max_fee_per_gas: u128,
    /// Priority fee per gas (the gas price of a legacy transaction).
    pub priority_fee_per_gas: u128,
    /// When it was signed, Unix milliseconds.
    pub signed_ms: u64,
    /// A cancellation: a zero-value transfer to the key itself with the row's nonce.
    pub cancel: bool,
}

/// A row as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdrawal {
    /// Its id.
    pub id: String,
    /// A client's withdrawal, an RPC transaction, or a gap fill.
    pub kind: Kind,
    /// The client that asked for it (`None` for gap fills and sweeps).
    pub client: Option<String>,
    /// The client's idempotency key (withdrawals only).
    pub idempotency_key: Option<String>,
    /// The key's name in the configuration.
    pub key: String,
    /// Who receives it (for an RPC transaction, its `to`).
    pub recipient: Address,
    /// What is sent.
    pub asset: Asset,
    /// How much: wei, or the token's smallest unit.
    pub amount: U256,
    /// For an RPC transaction: the client's transaction request (JSON), from which it is signed; for a
    /// sweep, its calldata (JSON).
    pub request: Option<String>,
    /// Where it is.
    pub status: Status,
    /// Its nonce, once claimed.
    pub nonce: Option<u64>,
    /// The transaction mined, or the latest signed.
    pub tx_hash: Option<B256>,
    /// The block it was mined in.
    pub block_number: Option<u64>,
    /// The hash of that block.
    pub block_hash: Option<B256>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was accepted, Unix milliseconds.
    pub created_ms: u64,
    /// A client asked to cancel it after it was signed.
    pub cancel_requested: bool,
    /// Its outcome is final: confirmed, or a mined cancellation confirmed.
    pub confirmed: bool,
    /// Its signed transactions, oldest first.
    pub attempts: Vec<Attempt>,
}
