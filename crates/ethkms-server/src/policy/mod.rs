//! The per-key policy engine: every request to sign is checked against its key's rules before any KMS
//! request, and a denial names the rule it broke.
//!
//! What a request moves is worked out first — its [`Movement`]s — then checked against the key's
//! destination lists and limits:
//!
//! - A transaction moves its ether value to its `to`, and up to its [worst-case fees](fees) to the block's
//!   proposer: both count as ether against `max_value` and `daily_limit` (so a key's `max_value` for ether
//!   bounds value plus fees). Client fees above the key's [`FeeCaps`] are refused (`fee_cap`).
//! - Its calldata is [decoded](calls): an ERC-20 `transfer`, `approve`, `increaseAllowance` or `permit`
//!   moves that token (or an allowance of it, counted the same) to the recipient or spender, who must pass
//!   the destination lists. Malformed calldata for one of these selectors is refused (`calldata`).
//! - Calls are denied by default ([`KeyPolicy::restricts_calls`]) when a key has a token limit, a
//!   destination allowlist or a contract-call allowlist: calldata is then allowed only as a decoded call of
//!   a token with limits, or as a call on `contract_calls` whose argument constraints hold (`contract_calls`,
//!   `call_argument`). Keys without any of these sign any call, as before.
//! - Typed data has its [own rules](typed) (`typed_data_domain`, `typed_data_type`, `permit_deadline`); its
//!   permits are counted like approvals.
//!
//! Limits are per asset, on the sum of a request's movements of it. Checked amounts are counted against the
//! rolling 24-hour window at once ([`PolicyEngine::check_and_record`]) and given back if nothing is signed
//! after all ([`PolicyEngine::forget`]).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use alloy_primitives::{Address, Bytes, U256};
//! use ethkms_server::policy::{Asset, GasRequest, KeyPolicy, PolicyEngine, Rule, SignRequest};
//!
//! const ETHER: u64 = 10u64.pow(18);
//! let hot = KeyPolicy {
//!     allowed_chain_ids: Some(vec![1]),
//!     max_value: [(Asset::Ether, U256::from(ETHER))].into(),       // 1 ether per transaction, fees included
//!     daily_limit: [(Asset::Ether, U256::from(5 * ETHER))].into(), // 5 ether a day
//!     ..KeyPolicy::default()
//! };
//! let mut engine = PolicyEngine::new([("alias/hot".to_owned(), hot)].into());
//! let now = SystemTime::now();
//! let withdrawal = |amount: u64| SignRequest {
//!     key: "alias/hot".into(),
//!     chain_id: 1,
//!     to: Address::with_last_byte(0x42),
//!     value: U256::from(amount),
//!     data: Bytes::new(),
//!     gas: GasRequest::default(), // the service picks gas and fees: at most the key's 0.05 ether per transaction
//! };
//! engine.check_and_record(&withdrawal(ETHER / 2), now)?;
//! let denial = engine.check_and_record(&withdrawal(ETHER), now).unwrap_err();
//! assert_eq!(denial.rule, Rule::MaxValue); // 1 ether plus up to 0.05 in fees
//! # Ok::<(), ethkms_server::policy::Denial>(())
//! ```

mod added;
pub mod calls;
pub mod fees;
pub mod typed;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use alloy_primitives::{Address, Bytes, U256};

pub use calls::{ArgConstraint, ArgKind, ContractCall, transferCall};
pub use fees::{FeeCaps, GasRequest};
pub use typed::{TypedDataPolicy, TypedDomain, TypedRequest};

/// The window of the daily limit.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What is being moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// Ether.
    Ether,
    /// An ERC-20 token, by contract address.
    Token(Address),
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ether => f.write_str("ETH"),
            Self::Token(address) => write!(f, "token {address}"),
        }
    }
}

/// The rules of one key. Empty rules allow everything but fees above the caps; set the ones you need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Chains the key may sign for (`None`: any).
    pub allowed_chain_ids: Option<Vec<u64>>,
    /// The only destinations allowed (`None`: any not denied).
    pub destination_allowlist: Option<Vec<Address>>,
    /// Destinations never allowed.
    pub destination_denylist: Vec<Address>,
    /// The largest amount per transaction, by asset (an asset not listed has no limit); for ether, value
    /// and worst-case fees together.
    pub max_value: BTreeMap<Asset, U256>,
    /// The most that may leave in any 24 hours, by asset (an asset not listed has no limit).
    pub daily_limit: BTreeMap<Asset, U256>,
    /// Contract calls allowed besides the token calls of tokens that have a limit (`None`: any call, unless
    /// [`restricts_calls`](Self::restricts_calls)).
    pub contract_calls: Option<Vec<ContractCall>>,
    /// The key's fee caps (`keys.NAME.fees`).
    pub fees: FeeCaps,
    /// Typed-data rules (`None`: no typed data, unless the key is otherwise unrestricted).
    pub typed_data: Option<TypedDataPolicy>,
}

impl KeyPolicy {
    /// Whether `asset` has a `max_value` or a `daily_limit`.
    #[must_use]
    pub fn limits(&self, asset: Asset) -> bool {
        self.max_value.contains_key(&asset) || self.daily_limit.contains_key(&asset)
    }

    /// Whether calls are denied unless allowed: the key has a token limit, a destination allowlist or a
    /// contract-call allowlist.
    #[must_use]
    pub fn restricts_calls(&self) -> bool {
        self.destination_allowlist.is_some()
            || self.contract_calls.is_some()
            || self.max_value.keys().chain(self.daily_limit.keys()).any(|asset| matches!(asset, Asset::Token(_)))
    }

    /// Whether typed data is denied unless allowed: the key has a `typed_data` policy, any limit, or
    /// restricts calls.
    #[must_use]
    pub fn restricts_typed_data(&self) -> bool {
        self.typed_data.is_some()
            || !self.max_value.is_empty()
            || !self.daily_limit.is_empty()
            || self.restricts_calls()
    }
}

/// Which rule denied a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The key has no policy: nothing is signed for keys the service does not know.
    UnknownKey,
    /// The chain id is not allowed.
    ChainId,
    /// A destination (recipient, spender, or constrained address argument) is on the deny list.
    DestinationDenied,
    /// A destination is not on the allow list.
    DestinationNotAllowed,
    /// The amount is above the per-transaction maximum.
    MaxValue,
    /// The amount would take the last 24 hours above the daily limit.
    DailyLimit,
    /// The contract call is not on the allowlist.
    ContractCall,
    /// A fee field is above the key's caps.
    FeeCap,
    /// The calldata of a decoded function is malformed, or a constrained argument is missing or invalid.
    Calldata,
    /// A constrained amount argument is above its cap.
    CallArgument,
    /// The typed data's domain (chain id, verifying contract) is not allowed.
    TypedDataDomain,
    /// The typed data's primary type is not allowed, or a permit is not understood or of a token without
    /// limits.
    TypedDataType,
    /// A permit's deadline is too far away.
    PermitDeadline,
}

impl Rule {
    /// The rule's stable name, as in `error.data.rule`, the audit log and the metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownKey => "unknown_key",
            Self::ChainId => "allowed_chain_ids",
            Self::DestinationDenied => "destination_denylist",
            Self::DestinationNotAllowed => "destination_allowlist",
            Self::MaxValue => "max_value",
            Self::DailyLimit => "daily_limit",
            Self::ContractCall => "contract_calls",
            Self::FeeCap => "fee_cap",
            Self::Calldata => "calldata",
            Self::CallArgument => "call_argument",
            Self::TypedDataDomain => "typed_data_domain",
            Self::TypedDataType => "typed_data_type",
            Self::PermitDeadline => "permit_deadline",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A denied request: the rule, and a message that says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy rule `{rule}`: {message}")]
pub struct Denial {
    /// The rule.
    pub rule: Rule,
    /// Why.
    pub message: String,
}

impl Denial {
    fn new(rule: Rule, message: impl Into<String>) -> Self {
        Self { rule, message: message.into() }
    }
}

/// A transaction a client asks the service to sign, as the policy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignRequest {
    /// The key, as the service names it.
    pub key: String,
    /// The transaction's chain id.
    pub chain_id: u64,
    /// The transaction's `to` (zero for a contract creation).
    pub to: Address,
    /// The ether value.
    pub value: U256,
    /// The calldata.
    pub data: Bytes,
    /// The client's gas and fee fields.
    pub gas: GasRequest,
}

#[cfg(feature = "service")]
impl SignRequest {
    /// The policy's view of `request` for key `key`; a request without a chain id is for `chain_id`.
    #[must_use]
    pub fn from_transaction(key: &str, chain_id: u64, request: &alloy_rpc_types_eth::TransactionRequest) -> Self {
        let hashes = request.blob_versioned_hashes.as_ref().map_or(0, Vec::len);
        let sidecar = request.sidecar.as_ref().map_or(0, |sidecar| sidecar.blobs().len());
        Self {
            key: key.to_owned(),
            chain_id: request.chain_id.unwrap_or(chain_id),
            to: request.to.and_then(|to| to.to().copied()).unwrap_or_default(),
            value: request.value.unwrap_or_default(),
            data: request.input.input().cloned().unwrap_or_default(),
            gas: GasRequest {
                gas_limit: request.gas,
                gas_price: request.gas_price,
                max_fee_per_gas: request.max_fee_per_gas,
                max_priority_fee_per_gas: request.max_priority_fee_per_gas,
                blobs: u64::try_from(hashes.max(sidecar)).unwrap_or(u64::MAX),
                max_fee_per_blob_gas: request.max_fee_per_blob_gas,
            },
        }
    }
}

/// Something a request moves: ether (value or fees), tokens, or an allowance of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    /// The asset.
    pub asset: Asset,
    /// Who receives it (`None`: fees, paid to the block's proposer, an amount argument, or not known).
    pub recipient: Option<Address>,
    /// How much (wei, or the token's smallest unit).
    pub amount: U256,
}

/// The sum of `movements` by asset, leaving out nothing-amounts: what counts against the limits.
#[must_use]
pub fn totals(movements: &[Movement]) -> BTreeMap<Asset, U256> {
    let mut totals = BTreeMap::new();
    for movement in movements.iter().filter(|movement| !movement.amount.is_zero()) {
        let total: &mut U256 = totals.entry(movement.asset).or_default();
        *total = total.saturating_add(movement.amount);
    }
    totals
}

/// What a request does, before the destination lists and limits: what it moves, and who must pass the
/// destination lists.
#[derive(Debug, Default)]
struct Effects {
    movements: Vec<Movement>,
    recipients: Vec<Address>,
}

impl Effects {
    fn moves(&mut self, asset: Asset, recipient: Option<Address>, amount: U256) {
        self.movements.push(Movement { asset, recipient, amount });
        self.recipients.extend(recipient);
    }
}

/// What `request`'s value and calldata do under `policy` (fees aside).
fn call_effects(policy: &KeyPolicy, request: &SignRequest) -> Result<Effects, Denial> {
    let mut effects = Effects::default();
    let data = &request.data;
    if data.is_empty() {
        effects.moves(Asset::Ether, Some(request.to), request.value);
        return Ok(effects);
    }
    let token = Asset::Token(request.to);
    let decoded = calls::decode(data).map_err(|message| Denial::new(Rule::Calldata, message))?;
    if let Some(call) = decoded
        && (policy.limits(token) || !policy.restricts_calls())
    {
        effects.moves(token, Some(call.counterparty), call.amount);
        if !request.value.is_zero() {
            effects.moves(Asset::Ether, Some(request.to), request.value);
        }
        return Ok(effects);
    }
    let selector = data.get(..4).and_then(|selector| <[u8; 4]>::try_from(selector).ok());
    let allowed = policy
        .contract_calls
        .iter()
        .flatten()
        .find(|call| call.address == request.to && Some(call.selector) == selector);
    match allowed {
        Some(call) => {
            let arguments = call.arguments(data).map_err(|error| match error {
                calls::ArgumentError::Calldata(message) => Denial::new(Rule::Calldata, message),
                calls::ArgumentError::AboveCap(message) => Denial::new(Rule::CallArgument, message),
            })?;
            effects.recipients.extend(arguments.addresses);
            effects.recipients.extend(decoded.map(|call| call.counterparty));
            for (asset, amount) in arguments.amounts {
                effects.moves(asset, None, amount);
            }
            // The contract is on the allowlist: what it is sent is counted, not checked as a destination.
            effects.movements.push(Movement {
                asset: Asset::Ether,
                recipient: Some(request.to),
                amount: request.value,
            });
        }
        None if policy.restricts_calls() => {
            let what = selector.map_or_else(
                || format!("calldata of {} bytes", data.len()),
                |selector| format!("calling 0x{}", alloy_primitives::hex::encode(selector)),
            );
            let why = if decoded.is_some() { " (a token without limits)" } else { "" };
            return Err(Denial::new(Rule::ContractCall, format!("{what} on {}{why} is not allowed", request.to)));
        }
        None => effects.moves(Asset::Ether, Some(request.to), request.value),
    }
    Ok(effects)
}

/// The policies of every key, and what each key has spent in the last 24 hours.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    policies: HashMap<String, KeyPolicy>,
    spent: HashMap<(String, Asset), VecDeque<(SystemTime, U256)>>,
    /// Destinations added to each key's allowlist, with when each takes effect ([`Self::set_added`]).
    added: HashMap<String, Vec<(Address, SystemTime)>>,
}

impl PolicyEngine {
    /// An engine with these policies, by key name.
    #[must_use]
    pub fn new(policies: HashMap<String, KeyPolicy>) -> Self {
        Self { policies, spent: HashMap::new(), added: HashMap::new() }
    }

    /// Checks `request` at time `now` without recording it, and returns what it moves.
    ///
    /// # Errors
    /// The [`Denial`] naming the first rule the request breaks, in the order: unknown key, chain id, fee cap,
    /// calldata and contract calls, deny list, allow list, per-transaction maximum, daily limit.
    pub fn check(&mut self, request: &SignRequest, now: SystemTime) -> Result<Vec<Movement>, Denial> {
        let (policy, effects) = transaction_effects(&self.policies, request)?;
        let added = added::at(&self.added, &request.key, now);
        let spent = &mut self.spent;
        within_limits(policy, added, &effects, &mut |asset| spent_in_window(spent, &request.key, asset, now))?;
        Ok(effects.movements)
    }

    /// The assets `key` has a daily limit for: what a journal reads the last 24 hours of before
    /// [`check_spent`](Self::check_spent).
    #[must_use]
    pub fn limited_assets(&self, key: &str) -> Vec<Asset> {
        self.policies.get(key).map(|policy| policy.daily_limit.keys().copied().collect()).unwrap_or_default()
    }

    /// As [`check`](Self::check), with what the key moved in the last 24 hours given (`spent`, read by a
    /// journal that every replica writes to) instead of this engine's own record, at time `now`.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_spent(
        &self,
        request: &SignRequest,
        spent: &BTreeMap<Asset, U256>,
        now: SystemTime,
    ) -> Result<Vec<Movement>, Denial> {
        let (policy, effects) = transaction_effects(&self.policies, request)?;
        let added = added::at(&self.added, &request.key, now);
        within_limits(policy, added, &effects, &mut |asset| spent.get(&asset).copied().unwrap_or_default())?;
        Ok(effects.movements)
    }

    /// As [`check_typed`](Self::check_typed), with what the key moved in the last 24 hours given.
    ///
    /// # Errors
    /// As [`check_typed`](Self::check_typed).
    pub fn check_typed_spent(
        &self,
        key: &str,
        chain_id: u64,
        request: &TypedRequest,
        now: SystemTime,
        spent: &BTreeMap<Asset, U256>,
    ) -> Result<Vec<Movement>, Denial> {
        let policy = known(&self.policies, key)?;
        let effects = typed::effects(policy, chain_id, request, now)?;
        let added = added::at(&self.added, key, now);
        within_limits(policy, added, &effects, &mut |asset| spent.get(&asset).copied().unwrap_or_default())?;
        Ok(effects.movements)
    }

    /// Checks typed data to be signed by `key` (a key for chain `chain_id`) at time `now` without recording
    /// it, and returns what its permits allow to move.
    ///
    /// # Errors
    /// The [`Denial`] naming the first rule it breaks: unknown key, then as in [`typed`].
    pub fn check_typed(
        &mut self,
        key: &str,
        chain_id: u64,
        request: &TypedRequest,
        now: SystemTime,
    ) -> Result<Vec<Movement>, Denial> {
        let policy = known(&self.policies, key)?;
        let effects = typed::effects(policy, chain_id, request, now)?;
        let added = added::at(&self.added, key, now);
        let spent = &mut self.spent;
        within_limits(policy, added, &effects, &mut |asset| spent_in_window(spent, key, asset, now))?;
        Ok(effects.movements)
    }

    /// Checks `request` and, if it passes, records what it moves against the daily limits, atomically.
    ///
    /// # Errors
    /// As [`check`](Self::check); nothing is recorded then.
    pub fn check_and_record(&mut self, request: &SignRequest, now: SystemTime) -> Result<Vec<Movement>, Denial> {
        let movements = self.check(request, now)?;
        self.record(&request.key, &movements, now);
        Ok(movements)
    }

    /// Checks typed data and, if it passes, records what its permits allow against the daily limits.
    ///
    /// # Errors
    /// As [`check_typed`](Self::check_typed); nothing is recorded then.
    pub fn check_typed_and_record(
        &mut self,
        key: &str,
        chain_id: u64,
        request: &TypedRequest,
        now: SystemTime,
    ) -> Result<Vec<Movement>, Denial> {
        let movements = self.check_typed(key, chain_id, request, now)?;
        self.record(key, &movements, now);
        Ok(movements)
    }

    /// Records movements that happened at `at` (replaying a journal after a restart, say): their
    /// [`totals`] by asset.
    pub fn record(&mut self, key: &str, movements: &[Movement], at: SystemTime) {
        for (asset, amount) in totals(movements) {
            self.spent.entry((key.to_owned(), asset)).or_default().push_back((at, amount));
        }
    }

    /// Forgets movements recorded at `at` that did not happen after all (a withdrawal refused before it
    /// was broadcast, or cancelled): their amounts no longer count against the daily limits. Returns whether
    /// every one was found.
    pub fn forget(&mut self, key: &str, movements: &[Movement], at: SystemTime) -> bool {
        let mut all = true;
        for (asset, amount) in totals(movements) {
            all &= self.forget_one(key, asset, amount, at);
        }
        all
    }

    fn forget_one(&mut self, key: &str, asset: Asset, amount: U256, at: SystemTime) -> bool {
        let Some(entries) = self.spent.get_mut(&(key.to_owned(), asset)) else { return false };
        // The journal's time is taken a moment after the check's: the nearest entry of that amount within
        // a few seconds is the one.
        let distance = |when: SystemTime| {
            when.duration_since(at).or_else(|_| at.duration_since(when)).map_or(Duration::MAX, |d| d)
        };
        let found = entries
            .iter()
            .enumerate()
            .filter(|(_, (when, spent))| *spent == amount && distance(*when) <= Duration::from_secs(5))
            .min_by_key(|(_, (when, _))| distance(*when))
            .map(|(index, _)| index);
        found.and_then(|index| entries.remove(index)).is_some()
    }
}

/// The key's policy and what `request` moves — its value and calls, and its worst-case fees as ether —
/// after the rules that need no daily total: unknown key, chain id, fee cap, calldata and contract calls.
fn transaction_effects<'a>(
    policies: &'a HashMap<String, KeyPolicy>,
    request: &SignRequest,
) -> Result<(&'a KeyPolicy, Effects), Denial> {
    let policy = known(policies, &request.key)?;
    if let Some(chains) = &policy.allowed_chain_ids
        && !chains.contains(&request.chain_id)
    {
        return Err(Denial::new(Rule::ChainId, format!("chain {} is not one of {chains:?}", request.chain_id)));
    }
    let fees = fees::worst_case(&request.gas, &policy.fees).map_err(|message| Denial::new(Rule::FeeCap, message))?;
    let mut effects = call_effects(policy, request)?;
    effects.movements.push(Movement { asset: Asset::Ether, recipient: None, amount: fees });
    Ok((policy, effects))
}

fn known<'a>(policies: &'a HashMap<String, KeyPolicy>, key: &str) -> Result<&'a KeyPolicy, Denial> {
    policies.get(key).ok_or_else(|| Denial::new(Rule::UnknownKey, format!("no policy for key `{key}`")))
}

/// Checks `effects` against the destination lists (the allowlist with the key's `added` destinations),
/// then each asset's total against its per-transaction maximum and daily limit (`spent`: what the key
/// moved of an asset in the last 24 hours).
fn within_limits(
    policy: &KeyPolicy,
    added: added::Added<'_>,
    effects: &Effects,
    spent: &mut dyn FnMut(Asset) -> U256,
) -> Result<(), Denial> {
    for recipient in &effects.recipients {
        if policy.destination_denylist.contains(recipient) {
            return Err(Denial::new(Rule::DestinationDenied, format!("{recipient} is on the deny list")));
        }
        if let Some(allowed) = &policy.destination_allowlist
            && !allowed.contains(recipient)
            && !added.allows(recipient)
        {
            return Err(Denial::new(Rule::DestinationNotAllowed, format!("{recipient} is not on the allow list")));
        }
    }
    let totals = totals(&effects.movements);
    let what = |asset: Asset, amount: U256| match asset {
        Asset::Ether => format!("{amount} wei of ETH (value and worst-case fees)"),
        Asset::Token(_) => format!("{amount} of {asset}"),
    };
    for (asset, amount) in &totals {
        if let Some(maximum) = policy.max_value.get(asset)
            && amount > maximum
        {
            return Err(Denial::new(
                Rule::MaxValue,
                format!("{} is above the maximum of {maximum} per transaction", what(*asset, *amount)),
            ));
        }
    }
    for (asset, amount) in &totals {
        if let Some(limit) = policy.daily_limit.get(asset) {
            let total = spent(*asset).saturating_add(*amount);
            if total > *limit {
                return Err(Denial::new(
                    Rule::DailyLimit,
                    format!(
                        "{} would bring the last 24 hours to {total}, above the limit of {limit}",
                        what(*asset, *amount)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What `key` moved of `asset` in the 24 hours before `now`, forgetting older entries.
fn spent_in_window(
    spent: &mut HashMap<(String, Asset), VecDeque<(SystemTime, U256)>>,
    key: &str,
    asset: Asset,
    now: SystemTime,
) -> U256 {
    let Some(entries) = spent.get_mut(&(key.to_owned(), asset)) else { return U256::ZERO };
    let start = now.checked_sub(DAY).unwrap_or(SystemTime::UNIX_EPOCH);
    while entries.front().is_some_and(|(at, _)| *at <= start) {
        entries.pop_front();
    }
    entries.iter().fold(U256::ZERO, |sum, (_, amount)| sum.saturating_add(*amount))
}

#[cfg(test)]
mod tests;
