//! The withdrawal engine: every transaction the service signs with a nonce — REST withdrawals,
//! `eth_sendTransaction` and `eth_signTransaction`, gap fills, cancellations — from claim to confirmation.
//!
//! # The invariant
//!
//! **A withdrawal's value leaves the key at most once, and every accepted withdrawal ends `confirmed`, or
//! `failed` or `cancelled` and provably unpaid.** It holds by construction:
//!
//! 1. *One owner.* A withdrawal is signed only by the task that moved it `accepted → signing` in one
//!    conditional journal write ([`claim`](crate::journal::JournalStore::claim)); every other task that
//!    tries gets `false` and stops. POSTs during recovery are stored, not processed: the engine sweeps them
//!    up once recovery is done.
//! 2. *One nonce.* The nonce is taken in that claim and kept: the journal refuses a transaction with any
//!    other nonce for the row ([`add_attempt`](crate::journal::JournalStore::add_attempt)). All its
//!    transactions — fee bumps, a cancellation — share it, so at most one of them can ever be mined.
//! 3. *Stored before sent.* A signed transaction is in the journal (and the audit log) before it is
//!    broadcast; after a crash it is broadcast again as it is, never signed anew with another nonce.
//! 4. *Settled by nonce, not by error text.* Once a transaction has been handed to the network, its row
//!    keeps the nonce until some transaction with that nonce is mined: one of its own (→ `mined`, then
//!    `confirmed` after the key's confirmations; a reorg that drops it → back to `submitted` and
//!    re-broadcast as it is) or someone else's (→ `failed` with the proof: that transaction's hash and
//!    block, once confirmed, and an alert). A node's answer fails a withdrawal only when it is a definite,
//!    classified refusal ([`rejections`]) of the very first broadcast of its first transaction: then the
//!    transaction was never in any pool, the nonce is given back and the amount returned to the daily
//!    limit. Every other answer (unfamiliar text, rate limits, "nonce too high", a dropped connection)
//!    keeps the nonce and the transaction is broadcast again.
//! 5. *Transient trouble is retried.* KMS throttling and timeouts, audit-log and journal errors, an
//!    unreachable node: retried with back-off and jitter, counted (`ethkms_transient_retries_total`),
//!    never turned into `failed`.
//! 6. *Fees within bounds* ([`fees`]): per-key caps at the first signature and at every bump.
//!
//! # Layout
//!
//! - `engine`: the engine — claim, sign, store, broadcast; recovery after a start;
//! - `watcher`: per key, every poll interval — settle mined nonces, confirmations and reorgs, re-broadcast,
//!   fee bumps, cancellations, gap fills;
//! - `broadcast`: sending, and re-signing a stored transaction with other fees or as a cancellation;
//! - [`rejections`]: what a node's error answer means (a table of real error strings per client);
//! - [`settlement`]: the settlement rules as pure functions, which the engine and the watcher decide by;
//! - [`fees`]: fee caps and the bump rule;
//! - `api`: the REST routes, which call the engine, and [`openapi`], their OpenAPI document;
//! - [`body`]: the body of `POST /v1/withdrawals`, parsed (the only part built without the `service`
//!   feature, for the fuzz target).

#[cfg(feature = "service")]
pub(crate) mod api;
pub mod body;
#[cfg(feature = "service")]
pub(crate) mod broadcast;
#[cfg(feature = "service")]
pub(crate) mod engine;
#[cfg(feature = "service")]
pub mod fees;
#[cfg(feature = "service")]
pub mod openapi;
#[cfg(feature = "service")]
pub mod rejections;
#[cfg(feature = "service")]
pub mod settlement;
#[cfg(feature = "service")]
pub(crate) mod watcher;

#[cfg(feature = "service")]
pub(crate) use engine::Engine;
