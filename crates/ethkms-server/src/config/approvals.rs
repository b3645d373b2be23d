//! `[keys.NAME.approvals]`: four-eyes approvals of a key's large withdrawals. A withdrawal of an asset at
//! or above its `threshold` is stored `pending_approval` (its policy checked and its amount counted against
//! the daily limit first) and signed only once `quorum` distinct `approvers` have each signed an EIP-712
//! approval of its full content; any approver may reject it; it expires after `expiry_seconds`.
//!
//! ```toml
//! [keys.hot.approvals]
//! threshold = { ETH = "10ether", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48" = "100000000000" }
//! approvers = ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
//!              "0x90F79bf6EB2c4f870365E785982E1f101E93b906"]
//! quorum = 2              # of the approvers (M of N)
//! expiry_seconds = 86400  # the default: a day
//! allowlist_delay_seconds = 172800  # the default: 48 hours
//! ```
//!
//! Assets without a threshold never need approvals. Approvers are Ethereum addresses — a hardware wallet,
//! another KMS key under another IAM role (`ethkms approve`), any EIP-712 signer; a client posts their
//! signatures with `"approvals"` in its `methods`.
//!
//! The same approvers and quorum guard additions to a key's `destination_allowlist` through the API
//! (`POST /v1/keys/NAME/allowlist`, by a client with `"allowlist"` in its `methods`): an addition takes
//! effect `allowlist_delay_seconds` after it is proposed (at least 1; 48 hours by default), and only once
//! `quorum` approvers have approved it; any approver may cancel it until then (see `crate::approvals`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use alloy_primitives::{Address, U256};
use serde::Deserialize;

use super::ConfigError;
use crate::policy::Asset;

/// The longest a withdrawal may wait for approvals: 30 days.
const MAX_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest an allowlist addition may wait before it takes effect: a year.
const MAX_ALLOWLIST_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// A key's approval settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Per asset, the amount at and above which a withdrawal needs approvals.
    pub threshold: BTreeMap<Asset, U256>,
    /// Who may approve or reject, distinct.
    pub approvers: Vec<Address>,
    /// How many distinct approvals a withdrawal needs.
    pub quorum: u32,
    /// How long a withdrawal waits for them.
    pub expiry: Duration,
    /// How long after it is proposed an allowlist addition takes effect (with the quorum's approvals).
    pub allowlist_delay: Duration,
}

impl ApprovalSettings {
    /// Whether a withdrawal of `amount` of `asset` needs approvals.
    #[must_use]
    pub fn needed(&self, asset: Asset, amount: U256) -> bool {
        self.threshold.get(&asset).is_some_and(|threshold| amount >= *threshold)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    threshold: BTreeMap<String, String>,
    approvers: Vec<String>,
    quorum: u32,
    expiry_seconds: Option<u64>,
    allowlist_delay_seconds: Option<u64>,
}

/// Checks `[keys.NAME.approvals]` of key `name`.
pub(super) fn approvals(
    name: &str,
    raw: Option<RawApprovals>,
    journal: bool,
) -> Result<Option<ApprovalSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let error = |field: &str, message: String| ConfigError(format!("keys.{name}.approvals.{field}: {message}"));
    if !journal {
        return Err(error("threshold", "approvals need `journal` (where pending withdrawals are kept)".into()));
    }
    if raw.threshold.is_empty() {
        return Err(error("threshold", "names no asset: give a threshold for each asset that needs approvals".into()));
    }
    let threshold = super::policy::asset_amounts(&format!("keys.{name}.approvals.threshold"), raw.threshold)?;
    if let Some((asset, _)) = threshold.iter().find(|(_, amount)| amount.is_zero()) {
        return Err(error("threshold", format!("{asset}: a threshold of zero would need approvals for everything")));
    }
    let mut approvers = Vec::new();
    let mut seen = HashSet::new();
    for text in &raw.approvers {
        let approver = ethkms::units::parse_address(text).map_err(|message| error("approvers", message))?;
        if approver.is_zero() {
            return Err(error("approvers", "the zero address cannot sign".into()));
        }
        if !seen.insert(approver) {
            return Err(error("approvers", format!("{approver} is listed twice")));
        }
        approvers.push(approver);
    }
    let count = u32::try_from(approvers.len()).unwrap_or(u32::MAX);
    if raw.quorum == 0 || raw.quorum > count {
        return Err(error(
            "quorum",
            format!("must be from 1 to the number of approvers ({count}), not {}", raw.quorum),
        ));
    }
    let expiry = Duration::from_secs(raw.expiry_seconds.unwrap_or(86_400));
    if expiry.is_zero() || expiry > MAX_EXPIRY {
        return Err(error("expiry_seconds", format!("must be from 1 to {} (30 days)", MAX_EXPIRY.as_secs())));
    }
    let allowlist_delay = Duration::from_secs(raw.allowlist_delay_seconds.unwrap_or(172_800));
    if allowlist_delay.is_zero() || allowlist_delay > MAX_ALLOWLIST_DELAY {
        return Err(error(
            "allowlist_delay_seconds",
            format!("must be from 1 to {} (a year)", MAX_ALLOWLIST_DELAY.as_secs()),
        ));
    }
    Ok(Some(ApprovalSettings { threshold, approvers, quorum: raw.quorum, expiry, allowlist_delay }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(approvals: &str, journal: bool) -> Result<Config, String> {
        let journal = if journal { "journal = \"j.sqlite\"\n" } else { "" };
        Config::parse(&format!(
            "listen = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:2\"\naudit_log = \"a\"\n{journal}\
             [keys.hot]\nkey = \"alias/hot\"\nchain_id = 1\n[keys.hot.approvals]\n{approvals}"
        ))
        .map_err(|error| error.to_string())
    }

    const A: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const B: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    #[test]
    fn approvals_parse_with_their_defaults() {
        let parsed =
            config(&format!("threshold = {{ ETH = \"2ether\" }}\napprovers = [\"{A}\", \"{B}\"]\nquorum = 2\n"), true)
                .unwrap();
        let approvals = parsed.keys["hot"].approvals.clone().unwrap();
        assert_eq!((approvals.quorum, approvals.expiry.as_secs(), approvals.approvers.len()), (2, 86_400, 2));
        assert_eq!(approvals.allowlist_delay.as_secs(), 172_800);
        let two =
            alloy_primitives::U256::from(2) * alloy_primitives::U256::from(10).pow(alloy_primitives::U256::from(18));
        assert!(approvals.needed(crate::policy::Asset::Ether, two));
        assert!(!approvals.needed(crate::policy::Asset::Ether, two - alloy_primitives::U256::from(1)));
        assert!(!approvals.needed(crate::policy::Asset::Token(alloy_primitives::Address::ZERO), two));
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (format!("threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 1\n"), false, "need `journal`"),
            (format!("threshold = {{}}\napprovers = [\"{A}\"]\nquorum = 1\n"), true, "names no asset"),
            (format!("threshold = {{ ETH = \"0\" }}\napprovers = [\"{A}\"]\nquorum = 1\n"), true, "threshold of zero"),
            (
                format!("threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\", \"{A}\"]\nquorum = 1\n"),
                true,
                "listed twice",
            ),
            (
                format!("threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 2\n"),
                true,
                "from 1 to the number",
            ),
            (
                format!("threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 0\n"),
                true,
                "from 1 to the number",
            ),
            ("threshold = { ETH = \"1\" }\napprovers = [\"0x12\"]\nquorum = 1\n".into(), true, "approvers"),
            (
                format!("threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 1\nexpiry_seconds = 0\n"),
                true,
                "expiry_seconds",
            ),
            (
                format!(
                    "threshold = {{ ETH = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 1\nallowlist_delay_seconds = 0\n"
                ),
                true,
                "allowlist_delay_seconds",
            ),
            (format!("threshold = {{ BTC = \"1\" }}\napprovers = [\"{A}\"]\nquorum = 1\n"), true, "threshold"),
        ];
        for (text, journal, needle) in cases {
            let error = config(&text, journal).unwrap_err();
            assert!(error.contains("keys.hot.approvals") && error.contains(needle), "`{needle}` not in: {error}");
        }
    }
}
