//! Nonce allocation for one key: contiguous nonces for concurrent transactions, and no gap after a
//! transaction that was never accepted by the node.
//!
//! A nonce handed out and then given back ([`Nonces::release`]) is either the newest one — then the
//! counter simply steps back — or lies below nonces already in use: then it is *free*, and the next
//! allocation takes it. A free nonce that nobody takes is a gap that holds back every later transaction;
//! the service fills it with a zero-value transfer to the key itself.
//!
//! ```
//! use ethkms_server::nonces::Nonces;
//!
//! let mut nonces = Nonces::default();
//! nonces.observe_pending(7); // the node's pending transaction count
//! let (a, b, c) = (nonces.allocate(), nonces.allocate(), nonces.allocate());
//! assert_eq!((a, b, c), (7, 8, 9));
//! nonces.release(8); // the node refused the transaction with nonce 8
//! assert_eq!(nonces.gaps(), vec![8]);
//! assert_eq!(nonces.allocate(), 8); // reused
//! nonces.release(9);
//! assert_eq!(nonces.allocate(), 9); // the newest: the counter stepped back
//! ```

use std::collections::BTreeSet;

/// The nonces of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nonces {
    next: u64,
    free: BTreeSet<u64>,
}

impl Nonces {
    /// The nonce the next transaction gets (unless a free one is taken first).
    #[must_use]
    pub const fn next(&self) -> u64 {
        self.next
    }

    /// The nonce [`allocate`](Self::allocate) would give now.
    #[must_use]
    pub fn peek(&self) -> u64 {
        self.free.first().copied().unwrap_or(self.next)
    }

    /// Takes the lowest free nonce, else the next one.
    pub fn allocate(&mut self) -> u64 {
        if let Some(nonce) = self.free.pop_first() {
            return nonce;
        }
        self.next += 1;
        self.next - 1
    }

    /// Takes `nonce` out of the free set (a gap fill is about to use it). Returns whether it was free.
    pub fn take(&mut self, nonce: u64) -> bool {
        self.free.remove(&nonce)
    }

    /// Gives back a nonce whose transaction the node never accepted.
    pub fn release(&mut self, nonce: u64) {
        if nonce >= self.next {
            return;
        }
        self.free.insert(nonce);
        while self.next > 0 && self.free.remove(&(self.next - 1)) {
            self.next -= 1;
        }
    }

    /// The node counts `pending` transactions of this key, mempool included: nonces below it are used,
    /// by this service or by someone else.
    pub fn observe_pending(&mut self, pending: u64) {
        self.next = self.next.max(pending);
        self.free.retain(|nonce| *nonce >= pending);
    }

    /// Marks `nonces` (known to be held by stored transactions) as in use and every other nonce from
    /// `pending` up to the highest of them as free: what a restart finds.
    pub fn recover(&mut self, pending: u64, nonces: &BTreeSet<u64>) {
        self.observe_pending(pending);
        if let Some(highest) = nonces.last() {
            self.next = self.next.max(highest + 1);
        }
        for nonce in pending..self.next {
            if !nonces.contains(&nonce) {
                self.free.insert(nonce);
            }
        }
    }

    /// The free nonces, lowest first: gaps until taken.
    #[must_use]
    pub fn gaps(&self) -> Vec<u64> {
        self.free.iter().copied().collect()
    }

    /// The free nonces as a journal stores them: decimal, comma-separated, lowest first (empty if none).
    #[must_use]
    pub fn free_text(&self) -> String {
        self.free.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }

    /// Nonces as a journal stored them: the next one and [`free_text`](Self::free_text); `None` if the text
    /// is not that, or names a free nonce at or above `next`.
    #[must_use]
    pub fn from_stored(next: u64, free_text: &str) -> Option<Self> {
        let free = free_text
            .split(',')
            .filter(|part| !part.is_empty())
            .map(|part| part.parse::<u64>().ok().filter(|nonce| *nonce < next))
            .collect::<Option<BTreeSet<u64>>>()?;
        Some(Self { next, free })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_step_back_or_leave_a_free_nonce_that_is_reused_first() {
        let mut nonces = Nonces::default();
        nonces.observe_pending(3);
        let taken: Vec<u64> = (0..4).map(|_| nonces.allocate()).collect();
        assert_eq!(taken, [3, 4, 5, 6]);
        nonces.release(4);
        nonces.release(5);
        assert_eq!(nonces.gaps(), [4, 5]);
        nonces.release(6);
        // 6 was the newest; 5 and 4 then were too: all stepped back.
        assert_eq!((nonces.next(), nonces.gaps()), (4, vec![]));
        assert_eq!(nonces.allocate(), 4);
        // Releasing something never handed out does nothing.
        nonces.release(40);
        assert_eq!(nonces.next(), 5);
    }

    #[test]
    fn the_node_count_moves_the_counter_and_drops_used_free_nonces() {
        let mut nonces = Nonces::default();
        nonces.observe_pending(10);
        for _ in 0..3 {
            nonces.allocate();
        }
        nonces.release(10);
        // Someone else sent transactions from this key: 10..15 are used.
        nonces.observe_pending(15);
        assert_eq!((nonces.gaps(), nonces.allocate()), (vec![], 15));
        // A lower count never moves the counter back.
        nonces.observe_pending(2);
        assert_eq!(nonces.allocate(), 16);
    }

    #[test]
    fn stored_text_round_trips_and_refuses_nonsense() {
        let mut nonces = Nonces::default();
        nonces.recover(5, &[5, 7, 9].into());
        let stored = Nonces::from_stored(nonces.next(), &nonces.free_text());
        assert_eq!(stored.as_ref(), Some(&nonces));
        assert_eq!(nonces.free_text(), "6,8");
        assert_eq!(Nonces::from_stored(4, ""), Some(Nonces { next: 4, free: BTreeSet::new() }));
        assert_eq!(Nonces::from_stored(4, "1,x"), None);
        assert_eq!(Nonces::from_stored(4, "4"), None, "a free nonce must lie below the next");
    }

    #[test]
    fn recovery_frees_what_no_stored_transaction_holds() {
        let mut nonces = Nonces::default();
        nonces.recover(5, &[5, 7, 9].into());
        assert_eq!((nonces.next(), nonces.gaps()), (10, vec![6, 8]));
        assert!(nonces.take(6));
        assert!(!nonces.take(6));
        assert_eq!(nonces.allocate(), 8);
        assert_eq!(nonces.allocate(), 10);
        let mut fresh = Nonces::default();
        fresh.recover(4, &BTreeSet::new());
        assert_eq!((fresh.next(), fresh.gaps()), (4, vec![]));
    }
}
