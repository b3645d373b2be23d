//! What PKCS#11 has no attribute for — a key's description, its tags, and whether it was disabled or
//! scheduled for deletion — kept on the token beside the key, in a private data object (`CKO_DATA`,
//! `CKA_APPLICATION` [`APPLICATION`], `CKA_LABEL` the key id, `CKA_VALUE` this record as JSON).
//!
//! The token enforces the state on its own: a disabled or doomed key's `CKA_SIGN` is false, so it cannot
//! sign whatever reads this record; the record says *why* it cannot, and whether it was this crate that
//! switched `CKA_SIGN` off (only then does enabling switch it back on).
//!
//! A record is replaced by writing a new one and destroying the old (tokens do not let a data object's
//! `CKA_VALUE` change); each carries a revision one above the one it replaces, so that a write cut short
//! between the two steps leaves two records of which the newer is known ([`newest`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ethkms_backend::{KeyState, Tag};
use serde::{Deserialize, Serialize};

/// `CKA_APPLICATION` of the data objects this crate writes.
pub(crate) const APPLICATION: &[u8] = b"ethkms";

/// The state this backend gives a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StoredState {
    /// Signs.
    #[default]
    Enabled,
    /// Disabled by `disable_key`.
    Disabled,
    /// Scheduled for deletion.
    PendingDeletion,
}

impl StoredState {
    /// The model's state.
    pub(crate) fn key_state(self) -> KeyState {
        match self {
            Self::Enabled => KeyState::Enabled,
            Self::Disabled => KeyState::Disabled,
            Self::PendingDeletion => KeyState::PendingDeletion,
        }
    }
}

/// The record kept beside a key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metadata {
    /// The key's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    /// Its tags, `[key, value]` pairs in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<(String, String)>,
    /// Its state.
    #[serde(default)]
    pub(crate) state: StoredState,
    /// When a key pending deletion is destroyed: seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delete_after: Option<u64>,
    /// Whether this crate set the key's `CKA_SIGN` to false (disabling it or scheduling its deletion) when
    /// it was true: enabling a key sets `CKA_SIGN` again only then, never on a key made not to sign.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) signing_switched_off: bool,
    /// One above the revision of the record this one replaced (0 for a key's first record).
    #[serde(default)]
    pub(crate) revision: u64,
}

impl Metadata {
    /// The record of a new key.
    pub(crate) fn new(description: Option<String>, tags: &[Tag]) -> Self {
        Self {
            description,
            tags: tags.iter().map(|tag| (tag.key.clone(), tag.value.clone())).collect(),
            ..Self::default()
        }
    }

    /// The tags in the model's form.
    pub(crate) fn tags(&self) -> Vec<Tag> {
        self.tags.iter().map(|(key, value)| Tag::new(key.clone(), value.clone())).collect()
    }

    /// Marks the key for destruction `days` from `now`.
    pub(crate) fn schedule_deletion(&mut self, now: SystemTime, days: u32) {
        let due = now + Duration::from_secs(u64::from(days) * 86_400);
        self.state = StoredState::PendingDeletion;
        self.delete_after = Some(due.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()));
    }

    /// Whether a key pending deletion is due for destruction at `now`.
    pub(crate) fn deletion_due(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        self.state == StoredState::PendingDeletion && self.delete_after.is_some_and(|due| due <= now)
    }

    /// The record that replaces this one, before its changes.
    pub(crate) fn next_revision(&self) -> Self {
        Self { revision: self.revision.saturating_add(1), ..self.clone() }
    }

    /// The record as stored.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record.
    ///
    /// # Errors
    /// What is wrong with it, when it is not a record this crate wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|error| format!("its ethkms data object does not parse ({error})"))
    }
}

/// The record to go by among the records of one key (`(object, what it holds)`), with the objects that
/// are left over: the record of the highest revision, written last, wins; the others are what a write cut
/// short did not get to destroy (the caller destroys them when it may write). `None` without records.
///
/// # Errors
/// What is wrong when a record does not parse, or when records of the highest revision disagree (two
/// writers at once, from two processes): then which one holds the key's state cannot be told, and the
/// key is not used until one of them is removed.
pub(crate) fn newest<H: Copy>(records: &[(H, Vec<u8>)]) -> Result<Option<(H, Metadata, Vec<H>)>, String> {
    let mut decoded = records
        .iter()
        .map(|(handle, value)| Ok((*handle, Metadata::decode(value)?)))
        .collect::<Result<Vec<_>, String>>()?;
    // The first of the highest revision.
    let chosen = decoded
        .iter()
        .enumerate()
        .max_by_key(|(index, (_, metadata))| (metadata.revision, usize::MAX - index))
        .map(|(index, _)| index);
    let Some(chosen) = chosen else {
        return Ok(None);
    };
    let (handle, metadata) = decoded.remove(chosen);
    if decoded.iter().any(|(_, other)| other.revision == metadata.revision && *other != metadata) {
        return Err(format!(
            "two of its ethkms data objects (revision {}) disagree; remove the wrong one (CKO_DATA, CKA_APPLICATION `ethkms`, CKA_LABEL its key id)",
            metadata.revision
        ));
    }
    let stale = decoded.into_iter().map(|(other, _)| other).collect();
    Ok(Some((handle, metadata, stale)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_deletion_falls_due() {
        let mut record = Metadata::new(Some("hot wallet".into()), &[Tag::new("env", "prod"), Tag::new("k", "")]);
        assert_eq!(Metadata::decode(&record.encode()).unwrap(), record);
        assert_eq!(record.tags(), [Tag::new("env", "prod"), Tag::new("k", "")]);
        let now = SystemTime::now();
        record.schedule_deletion(now, 7);
        assert_eq!(record.state.key_state(), KeyState::PendingDeletion);
        assert!(!record.deletion_due(now));
        assert!(record.deletion_due(now + Duration::from_secs(7 * 86_400)));
        assert_eq!(Metadata::decode(&record.encode()).unwrap(), record);
        assert_eq!(Metadata::decode(b"{}").unwrap(), Metadata::default());
        assert!(Metadata::decode(b"{\"state\":\"Melted\"}").unwrap_err().contains("does not parse"));
        assert!(Metadata::decode(&[0xff]).is_err());
    }

    #[test]
    fn the_newest_record_wins_and_disagreeing_ones_are_refused() {
        let first = Metadata::new(Some("first".into()), &[]);
        let mut second = first.next_revision();
        second.state = StoredState::Disabled;
        second.signing_switched_off = true;
        assert_eq!(second.revision, 1);
        let records = [(7, second.encode()), (3, first.encode()), (9, first.encode())];
        assert_eq!(newest(&records).unwrap(), Some((7, second.clone(), vec![3, 9])));
        // Order does not matter.
        let records = [(3, first.encode()), (7, second.encode())];
        assert_eq!(newest(&records).unwrap(), Some((7, second.clone(), vec![3])));
        // Two identical records: one is kept, the other is left over.
        assert_eq!(newest(&[(1, first.encode()), (2, first.encode())]).unwrap(), Some((1, first.clone(), vec![2])));
        assert_eq!(newest::<u8>(&[]).unwrap(), None);
        // A newer record settles an older disagreement.
        let mut rival = first.clone();
        rival.description = Some("rival".into());
        let records = [(1, first.encode()), (2, rival.encode()), (3, second.encode())];
        assert_eq!(newest(&records).unwrap(), Some((3, second.clone(), vec![1, 2])));
        // Two of one revision that differ, or one that does not parse: refused.
        let mut rival = first.next_revision();
        rival.description = Some("rival".into());
        let error = newest(&[(7, second.encode()), (8, rival.encode())]).unwrap_err();
        assert!(error.contains("revision 1") && error.contains("disagree"), "{error}");
        assert!(newest(&[(7, second.encode()), (8, b"{".to_vec())]).unwrap_err().contains("does not parse"));
        // The flag is stored only when set, and old records without a revision read as revision 0.
        assert!(!String::from_utf8(first.encode()).unwrap().contains("signing_switched_off"));
        assert_eq!(Metadata::decode(br#"{"state":"Disabled"}"#).unwrap().revision, 0);
    }
}
