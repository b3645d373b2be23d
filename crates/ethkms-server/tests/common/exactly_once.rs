//! The check every exactly-once test ends with, made on the node directly (never through the service):
//! a key's nonces were used without gap or repeat, each expected payment arrived once and for exactly its
//! amount, and every other transaction of the key is a zero-value transfer to itself (a gap fill or a
//! cancellation) or a zero-value call of a contract the test names (a deposit factory's sweeps), so nothing
//! else left the key.

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};

use super::{balance, transactions_from};

/// A key's transactions on chain by nonce: (to, value, hash).
pub type Mined = BTreeMap<u64, (Address, U256, String)>;

/// Checks on the node at `rpc_url` that the key at `from` paid each `(recipient, amount)` of `payments`
/// exactly once (one transaction, of exactly that value, and the recipient's balance is that amount:
/// recipients must be fresh addresses), with nonces `0..n` without gap, and that its other transactions
/// are zero-value transfers to itself. `context` (a seed, a key) prefixes every failure. Returns what was
/// mined, for further checks.
///
/// # Panics
/// On any payment missing, repeated or wrong, any nonce gap, or any value sent elsewhere.
pub async fn assert_paid_exactly_once(
    rpc_url: &str,
    from: Address,
    payments: &[(Address, U256)],
    context: &str,
) -> Mined {
    assert_paid_exactly_once_besides(rpc_url, from, payments, &[], context).await
}

/// [`assert_paid_exactly_once`], where the key may also have called the contracts `calls` (with no value).
///
/// # Panics
/// As [`assert_paid_exactly_once`], and on a call of `calls` that sent value.
pub async fn assert_paid_exactly_once_besides(
    rpc_url: &str,
    from: Address,
    payments: &[(Address, U256)],
    calls: &[Address],
    context: &str,
) -> Mined {
    let mined = transactions_from(rpc_url, from, 0).await;
    let nonces: Vec<u64> = mined.keys().copied().collect();
    assert_eq!(nonces, (0..mined.len() as u64).collect::<Vec<_>>(), "{context}: the key's nonces have a gap");
    let mut paid: BTreeMap<Address, Vec<U256>> = BTreeMap::new();
    for (to, value, hash) in mined.values() {
        if *to == from {
            assert_eq!(*value, U256::ZERO, "{context}: {hash} moved value to the key itself");
        } else if calls.contains(to) {
            assert_eq!(*value, U256::ZERO, "{context}: {hash} sent value with a call of {to}");
        } else {
            paid.entry(*to).or_default().push(*value);
        }
    }
    for (to, amount) in payments {
        assert_eq!(paid.get(to), Some(&vec![*amount]), "{context}: {to} should have been paid {amount} once");
        assert_eq!(balance(rpc_url, *to).await, *amount, "{context}: {to}'s balance");
    }
    let strangers: Vec<&Address> =
        paid.keys().filter(|to| !payments.iter().any(|(paid_to, _)| paid_to == *to)).collect();
    assert!(strangers.is_empty(), "{context}: payments to addresses no withdrawal named: {strangers:?}");
    mined
}
