//! Destinations added to a key's `destination_allowlist` after it was configured (time-locked additions,
//! approved by the key's approvers: `crate::approvals`): each with the time it takes effect. The policy
//! engine allows such a destination, besides the static list, only from that time on; an address whose
//! addition is removed or cancelled is simply left out of the next [`PolicyEngine::set_added`].

use std::collections::HashMap;
use std::time::SystemTime;

use alloy_primitives::Address;

use super::PolicyEngine;

/// The added destinations of one key, as checked at one time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Added<'a> {
    entries: &'a [(Address, SystemTime)],
    now: SystemTime,
}

impl Added<'_> {
    /// Whether `address` was added and its addition is in effect.
    pub(super) fn allows(&self, address: &Address) -> bool {
        self.entries.iter().any(|(added, from)| added == address && *from <= self.now)
    }
}

impl PolicyEngine {
    /// Sets the destinations added to `key`'s allowlist, each with the time it takes effect (replacing
    /// the ones set before). They count only for a key with a `destination_allowlist`.
    pub fn set_added(&mut self, key: &str, entries: Vec<(Address, SystemTime)>) {
        if entries.is_empty() {
            self.added.remove(key);
        } else {
            self.added.insert(key.to_owned(), entries);
        }
    }

    /// The destinations added to `key`'s allowlist, with when each takes effect.
    #[must_use]
    pub fn added(&self, key: &str) -> &[(Address, SystemTime)] {
        self.added.get(key).map_or(&[], Vec::as_slice)
    }
}

/// `key`'s destinations in `added` as checked at `now`.
pub(super) fn at<'a>(added: &'a HashMap<String, Vec<(Address, SystemTime)>>, key: &str, now: SystemTime) -> Added<'a> {
    Added { entries: added.get(key).map_or(&[], Vec::as_slice), now }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use alloy_primitives::{Address, Bytes, U256};

    use crate::policy::{GasRequest, KeyPolicy, PolicyEngine, Rule, SignRequest};

    #[test]
    fn an_added_destination_is_allowed_from_its_effective_time_until_it_is_taken_away() {
        let (listed, added) = (Address::with_last_byte(1), Address::with_last_byte(2));
        let policy = KeyPolicy { destination_allowlist: Some(vec![listed]), ..KeyPolicy::default() };
        let mut engine = PolicyEngine::new([("hot".to_owned(), policy)].into());
        let request = |to| SignRequest {
            key: "hot".into(),
            chain_id: 1,
            to,
            value: U256::from(1),
            data: Bytes::new(),
            gas: GasRequest::default(),
        };
        let now = std::time::SystemTime::now();
        let from = now + Duration::from_secs(60);
        let rule = |result: Result<_, crate::policy::Denial>| result.err().map(|denial| denial.rule);
        assert_eq!(rule(engine.check(&request(added), now)), Some(Rule::DestinationNotAllowed));
        engine.set_added("hot", vec![(added, from)]);
        assert_eq!(engine.added("hot"), [(added, from)]);
        assert_eq!(rule(engine.check(&request(added), now)), Some(Rule::DestinationNotAllowed), "before its time");
        assert_eq!(rule(engine.check(&request(added), from)), None);
        assert_eq!(rule(engine.check_spent(&request(added), &std::collections::BTreeMap::new(), from)), None);
        assert_eq!(rule(engine.check(&request(listed), now)), None, "the static list stays");
        assert_eq!(rule(engine.check(&request(Address::with_last_byte(3)), from)), Some(Rule::DestinationNotAllowed));
        engine.set_added("other", vec![(Address::with_last_byte(3), now)]);
        assert_eq!(rule(engine.check(&request(Address::with_last_byte(3)), from)), Some(Rule::DestinationNotAllowed));
        engine.set_added("hot", Vec::new());
        assert_eq!(rule(engine.check(&request(added), from)), Some(Rule::DestinationNotAllowed), "removed");
        assert!(engine.added("hot").is_empty());
    }
}
