//! Sharing the keys out among the replicas. Each replica announces itself in the journal with its leases;
//! at every pass it reads who runs and how many keys each holds ([`JournalStore::replicas`]) and decides
//! ([`Share::decide`]):
//!
//! - a free key (nobody's lease, or one that ran out) is taken at once by the replicas holding the fewest
//!   keys; the others wait [`PASSES_BEFORE_TAKING`] passes, so that it goes where it evens the count out
//!   and yet never stays free for long if those do not take it;
//! - a replica holding at least two keys more than another, and no fewer than any (ties: the first
//!   name), hands one over: it releases the lease, and a replica with the fewest takes it at its next pass.
//!
//! So three replicas of four keys end with 2, 1 and 1 whatever order they started in, a replica that
//! joins gets its share within a few passes, and the keys of one that stops are taken by the others
//! within its lease time. A journal that one server uses (SQLite) lists no replicas: that server takes
//! every key and hands none over.
//!
//! [`JournalStore::replicas`]: crate::journal::JournalStore::replicas

use crate::journal::ReplicaRow;

/// Passes a replica that does not hold the fewest keys waits before it takes a free key.
pub(crate) const PASSES_BEFORE_TAKING: u32 = 3;

/// What this replica does at one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// It holds the fewest keys of the replicas (or sees none but itself): it takes free keys at once.
    pub(crate) fewest: bool,
    /// It holds two or more keys more than some replica and is the one to give one up.
    pub(crate) hand_over: bool,
}

impl Share {
    /// Alone, or when the journal did not answer: take every free key, hand nothing over.
    pub(crate) const ALONE: Self = Self { fewest: true, hand_over: false };

    /// The decision of replica `me`, which holds `held` keys, given the replicas the journal lists (whose
    /// count for `me` may lag: `held` is used instead; `me` is counted even when not listed yet).
    pub(crate) fn decide(me: &str, held: usize, replicas: &[ReplicaRow]) -> Self {
        let others: Vec<&ReplicaRow> = replicas.iter().filter(|replica| replica.name != me).collect();
        if others.is_empty() {
            return Self::ALONE;
        }
        let fewest = others.iter().all(|other| other.leases >= held);
        let someone_short = others.iter().any(|other| other.leases + 2 <= held);
        let first_of_most =
            others.iter().all(|other| other.leases < held || (other.leases == held && me < other.name.as_str()));
        Self { fewest, hand_over: someone_short && first_of_most }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(counts: &[(&str, usize)]) -> Vec<ReplicaRow> {
        counts.iter().map(|(name, leases)| ReplicaRow { name: (*name).to_owned(), leases: *leases }).collect()
    }

    #[test]
    fn alone_a_replica_takes_every_key_and_hands_none_over() {
        assert_eq!(Share::decide("a", 4, &[]), Share::ALONE);
        assert_eq!(Share::decide("a", 4, &replicas(&[("a", 4)])), Share::ALONE);
    }

    #[test]
    fn the_replica_with_the_most_hands_over_when_another_has_two_fewer() {
        let view = replicas(&[("a", 2), ("b", 2), ("c", 0)]);
        assert_eq!(Share::decide("a", 2, &view), Share { fewest: false, hand_over: true });
        // b holds as many as a; a's name comes first, so b keeps its keys.
        assert_eq!(Share::decide("b", 2, &view), Share { fewest: false, hand_over: false });
        assert_eq!(Share::decide("c", 0, &view), Share { fewest: true, hand_over: false });
    }

    #[test]
    fn counts_one_apart_are_shared_out() {
        let view = replicas(&[("a", 2), ("b", 1), ("c", 1)]);
        for (me, held) in [("a", 2), ("b", 1), ("c", 1)] {
            assert!(!Share::decide(me, held, &view).hand_over, "{me}");
        }
        assert!(!Share::decide("a", 2, &view).fewest);
        assert!(Share::decide("b", 1, &view).fewest);
    }

    #[test]
    fn a_replica_not_listed_yet_and_its_own_lagging_count_are_taken_as_known_here() {
        // The journal still counts `a`'s four leases; `a` has handed one over since.
        let view = replicas(&[("a", 4), ("b", 0)]);
        assert_eq!(Share::decide("a", 3, &view), Share { fewest: false, hand_over: true });
        // `c` has not announced itself yet: it still sees `a` and `b`.
        assert_eq!(Share::decide("c", 0, &view), Share { fewest: true, hand_over: false });
    }

    #[test]
    fn handing_over_one_at_a_time_ends_balanced_from_any_start() {
        for start in [[4, 0, 0], [0, 4, 0], [3, 1, 0], [2, 2, 0], [0, 0, 4], [1, 3, 0]] {
            let names = ["a", "b", "c"];
            let mut counts = start;
            for _ in 0..10 {
                let view: Vec<ReplicaRow> = names
                    .iter()
                    .zip(counts)
                    .map(|(name, leases)| ReplicaRow { name: (*name).to_owned(), leases })
                    .collect();
                let giver = (0..3).find(|&i| Share::decide(names[i], counts[i], &view).hand_over);
                let Some(giver) = giver else { break };
                counts[giver] -= 1;
                let taker = (0..3).find(|&i| i != giver && counts.iter().all(|&c| c >= counts[i])).unwrap();
                counts[taker] += 1;
            }
            let mut sorted = counts;
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 1, 2], "from {start:?}");
        }
    }
}
