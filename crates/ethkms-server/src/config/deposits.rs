//! `[deposits]`: customer deposit addresses (see `ethkms-deposits`) — the factory and treasury they are
//! derived under, the key that sweeps them (its chain is theirs), the tokens credited, how deep a deposit
//! must be, where the first scan starts, and how the service sweeps them.
//!
//! ```toml
//! [deposits]
//! key = "hot"                                            # a key of [keys]: the factory's owner
//! factory = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
//! parent = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # the treasury every deposit goes to
//! tokens = ["0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"] # credited (and swept); others are ignored
//! confirmations = 12       # default: the key's
//! start_block = 21000000   # default: the chain's head when the service first runs
//! poll_interval_ms = 2000  # the default
//! sweep_interval_ms = 60000  # the default; 0: the service never sweeps (`ethkms deposits sweep` does)
//! sweep_batch = 50           # deposit addresses per sweep transaction (the default; at most 200)
//! sweep_margin_percent = 200 # ether is swept once worth more than twice its share of the gas (the default)
//! ```
//!
//! A client reaches them with `"deposits"` in its `methods` and the key in its `keys`.

use std::collections::BTreeMap;
use std::time::Duration;

use alloy_primitives::Address;
use serde::Deserialize;

use super::{ConfigError, KeyConfig};

/// The deposit settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositSettings {
    /// The sweeping key's name.
    pub key: String,
    /// The factory.
    pub factory: Address,
    /// The treasury.
    pub parent: Address,
    /// Tokens whose transfers to deposit addresses are credited.
    pub tokens: Vec<Address>,
    /// Blocks, the including one counted, before a deposit is confirmed.
    pub confirmations: u64,
    /// The first block scanned when the journal has read none.
    pub start_block: Option<u64>,
    /// How often the chain is read.
    pub poll_interval: Duration,
    /// How often the service sweeps confirmed deposits; `None`: never.
    pub sweep_interval: Option<Duration>,
    /// Deposit addresses per sweep transaction.
    pub sweep_batch: usize,
    /// Ether at an address is swept once worth more than this percentage of its share of the gas.
    pub sweep_margin_percent: u64,
}

/// The most deposit addresses one sweep transaction takes (a sweep of 200 new addresses with a token each
/// needs about 12M gas, well under a block's).
pub(super) const MAX_SWEEP_BATCH: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeposits {
    key: String,
    factory: String,
    parent: String,
    #[serde(default)]
    tokens: Vec<String>,
    confirmations: Option<u64>,
    start_block: Option<u64>,
    poll_interval_ms: Option<u64>,
    sweep_interval_ms: Option<u64>,
    sweep_batch: Option<usize>,
    sweep_margin_percent: Option<u64>,
}

/// Checks `[deposits]` against the keys.
pub(super) fn deposits(
    raw: Option<RawDeposits>,
    keys: &BTreeMap<String, KeyConfig>,
    journal: bool,
) -> Result<Option<DepositSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let error = |field: &str, message: String| ConfigError(format!("deposits.{field}: {message}"));
    let address = |field: &str, text: &str| ethkms::units::parse_address(text).map_err(|message| error(field, message));
    let key = keys.get(&raw.key).ok_or_else(|| error("key", format!("no key named `{}` in [keys]", raw.key)))?;
    if !journal {
        return Err(error("key", "deposits need `journal` (where addresses and deposits are kept)".into()));
    }
    let tokens = raw.tokens.iter().map(|text| address("tokens", text)).collect::<Result<Vec<_>, _>>()?;
    let confirmations = raw.confirmations.unwrap_or(key.confirmations);
    if confirmations == 0 {
        return Err(error("confirmations", "must be at least 1 (the block that includes the deposit)".into()));
    }
    let poll_interval = Duration::from_millis(raw.poll_interval_ms.unwrap_or(2_000));
    if poll_interval.is_zero() {
        return Err(error("poll_interval_ms", "must be more than zero".into()));
    }
    let sweep_batch = raw.sweep_batch.unwrap_or(50);
    if !(1..=MAX_SWEEP_BATCH).contains(&sweep_batch) {
        return Err(error("sweep_batch", format!("must be from 1 to {MAX_SWEEP_BATCH}, not {sweep_batch}")));
    }
    let sweep_interval = match raw.sweep_interval_ms.unwrap_or(60_000) {
        0 => None,
        millis => Some(Duration::from_millis(millis)),
    };
    Ok(Some(DepositSettings {
        key: raw.key,
        factory: address("factory", &raw.factory)?,
        parent: address("parent", &raw.parent)?,
        tokens,
        confirmations,
        start_block: raw.start_block,
        poll_interval,
        sweep_interval,
        sweep_batch,
        sweep_margin_percent: raw.sweep_margin_percent.unwrap_or(200),
    }))
}
