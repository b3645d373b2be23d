//! What PKCS#11 has no attribute for — a key's description, its tags, and whether it was disabled or
//! scheduled for deletion — kept on the token beside the key, in a private data object (`CKO_DATA`,
//! `CKA_APPLICATION` [`APPLICATION`], `CKA_LABEL` the key id, `CKA_VALUE` this record as JSON).
//!
//! The token enforces the state on its own: a disabled or doomed key's `CKA_SIGN` is false, so it cannot
//! sign whatever reads this record; the record says *why* it cannot.

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
}
