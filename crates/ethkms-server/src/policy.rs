//! The per-key policy engine: every request to sign is checked against its key's rules before any KMS
//! request, and a denial names the rule it broke.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use alloy_primitives::{Address, Bytes, U256};
//! use ethkms_server::policy::{Asset, KeyPolicy, PolicyEngine, Rule, SignRequest};
//!
//! let hot = KeyPolicy {
//!     allowed_chain_ids: Some(vec![1]),
//!     max_value: [(Asset::Ether, U256::from(10u64.pow(18)))].into(),   // 1 ether per withdrawal
//!     daily_limit: [(Asset::Ether, U256::from(5 * 10u64.pow(18)))].into(), // 5 ether a day
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
//! };
//! engine.check_and_record(&withdrawal(10u64.pow(18)), now)?;
//! let denial = engine.check_and_record(&withdrawal(2 * 10u64.pow(18)), now).unwrap_err();
//! assert_eq!(denial.rule, Rule::MaxValue);
//! # Ok::<(), ethkms_server::policy::Denial>(())
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, sol};

sol! {
    function transfer(address to, uint256 amount) external returns (bool);
}

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

/// A contract function a key may call: the contract and the 4-byte selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContractCall {
    /// The contract.
    pub address: Address,
    /// The function selector.
    pub selector: [u8; 4],
}

/// The rules of one key. Empty rules allow everything; set the ones you need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Chains the key may sign for (`None`: any).
    pub allowed_chain_ids: Option<Vec<u64>>,
    /// The only destinations allowed (`None`: any not denied).
    pub destination_allowlist: Option<Vec<Address>>,
    /// Destinations never allowed.
    pub destination_denylist: Vec<Address>,
    /// The largest amount per transaction, by asset (an asset not listed has no limit).
    pub max_value: BTreeMap<Asset, U256>,
    /// The most that may leave in any 24 hours, by asset (an asset not listed has no limit).
    pub daily_limit: BTreeMap<Asset, U256>,
    /// Contract calls allowed besides ERC-20 transfers of tokens that have a limit (`None`: any call).
    pub contract_calls: Option<Vec<ContractCall>>,
}

/// Which rule denied a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The key has no policy: nothing is signed for keys the service does not know.
    UnknownKey,
    /// The chain id is not allowed.
    ChainId,
    /// The destination is on the deny list.
    DestinationDenied,
    /// The destination is not on the allow list.
    DestinationNotAllowed,
    /// The amount is above the per-transaction maximum.
    MaxValue,
    /// The amount would take the last 24 hours above the daily limit.
    DailyLimit,
    /// The contract call is not on the allowlist.
    ContractCall,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownKey => "unknown_key",
            Self::ChainId => "allowed_chain_ids",
            Self::DestinationDenied => "destination_denylist",
            Self::DestinationNotAllowed => "destination_allowlist",
            Self::MaxValue => "max_value",
            Self::DailyLimit => "daily_limit",
            Self::ContractCall => "contract_calls",
        })
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

/// A transaction a client asks the service to sign, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignRequest {
    /// The key, as the service names it.
    pub key: String,
    /// The transaction's chain id.
    pub chain_id: u64,
    /// The transaction's `to`.
    pub to: Address,
    /// The ether value.
    pub value: U256,
    /// The calldata.
    pub data: Bytes,
}

/// What a request moves, once ERC-20 transfers are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    /// The asset.
    pub asset: Asset,
    /// Who receives it.
    pub recipient: Address,
    /// How much (wei, or the token's smallest unit).
    pub amount: U256,
}

impl SignRequest {
    /// What the request moves: an ERC-20 `transfer(to, amount)` without ether moves the token to `to`;
    /// anything else moves its ether value to the transaction's `to`.
    #[must_use]
    pub fn movement(&self) -> Movement {
        if self.value.is_zero()
            && let Ok(call) = transferCall::abi_decode(&self.data)
        {
            return Movement { asset: Asset::Token(self.to), recipient: call.to, amount: call.amount };
        }
        Movement { asset: Asset::Ether, recipient: self.to, amount: self.value }
    }
}

/// The policies of every key, and what each key has spent in the last 24 hours.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    policies: HashMap<String, KeyPolicy>,
    spent: HashMap<(String, Asset), VecDeque<(SystemTime, U256)>>,
}

impl PolicyEngine {
    /// An engine with these policies, by key name.
    #[must_use]
    pub fn new(policies: HashMap<String, KeyPolicy>) -> Self {
        Self { policies, spent: HashMap::new() }
    }

    /// Checks `request` at time `now` without recording it.
    ///
    /// # Errors
    /// The [`Denial`] naming the first rule the request breaks, in the order: unknown key, chain id,
    /// contract call, deny list, allow list, per-transaction maximum, daily limit.
    pub fn check(&mut self, request: &SignRequest, now: SystemTime) -> Result<Movement, Denial> {
        let deny = |rule, message: String| Err(Denial { rule, message });
        let Some(policy) = self.policies.get(&request.key) else {
            return deny(Rule::UnknownKey, format!("no policy for key `{}`", request.key));
        };
        if let Some(chains) = &policy.allowed_chain_ids
            && !chains.contains(&request.chain_id)
        {
            return deny(Rule::ChainId, format!("chain {} is not one of {chains:?}", request.chain_id));
        }
        let movement = request.movement();
        let token_with_limits = matches!(movement.asset, Asset::Token(_))
            && (policy.max_value.contains_key(&movement.asset) || policy.daily_limit.contains_key(&movement.asset));
        if let (Some(allowed), Some(selector)) = (&policy.contract_calls, request.data.get(..4)) {
            let call = ContractCall { address: request.to, selector: selector.try_into().unwrap_or_default() };
            if !token_with_limits && !allowed.contains(&call) {
                return deny(
                    Rule::ContractCall,
                    format!(
                        "calling 0x{} on {} is not allowed",
                        alloy_primitives::hex::encode(call.selector),
                        request.to
                    ),
                );
            }
        }
        if policy.destination_denylist.contains(&movement.recipient) {
            return deny(Rule::DestinationDenied, format!("{} is on the deny list", movement.recipient));
        }
        if let Some(allowed) = &policy.destination_allowlist
            && !allowed.contains(&movement.recipient)
        {
            return deny(Rule::DestinationNotAllowed, format!("{} is not on the allow list", movement.recipient));
        }
        if let Some(maximum) = policy.max_value.get(&movement.asset)
            && movement.amount > *maximum
        {
            return deny(
                Rule::MaxValue,
                format!("{} of {} is above the maximum of {maximum} per transaction", movement.amount, movement.asset),
            );
        }
        if let Some(limit) = policy.daily_limit.get(&movement.asset) {
            let spent = spent_in_window(&mut self.spent, &request.key, movement.asset, now);
            if spent.saturating_add(movement.amount) > *limit {
                return deny(
                    Rule::DailyLimit,
                    format!(
                        "{} of {} would bring the last 24 hours to {}, above the limit of {limit}",
                        movement.amount,
                        movement.asset,
                        spent.saturating_add(movement.amount)
                    ),
                );
            }
        }
        Ok(movement)
    }

    /// Checks `request` and, if it passes, records its amount against the daily limit, atomically.
    ///
    /// # Errors
    /// As [`check`](Self::check); nothing is recorded then.
    pub fn check_and_record(&mut self, request: &SignRequest, now: SystemTime) -> Result<Movement, Denial> {
        let movement = self.check(request, now)?;
        self.record(&request.key, movement, now);
        Ok(movement)
    }

    /// Records a movement that happened at `at` (replaying a journal after a restart, say).
    pub fn record(&mut self, key: &str, movement: Movement, at: SystemTime) {
        self.spent.entry((key.to_owned(), movement.asset)).or_default().push_back((at, movement.amount));
    }

    /// Forgets a movement recorded at `at` that did not happen after all (a withdrawal refused before it
    /// was broadcast, or cancelled): its amount no longer counts against the daily limit. Returns whether
    /// it was found.
    pub fn forget(&mut self, key: &str, movement: Movement, at: SystemTime) -> bool {
        let Some(entries) = self.spent.get_mut(&(key.to_owned(), movement.asset)) else { return false };
        // The journal's time is taken a moment after the check's: the nearest entry of that amount within
        // a few seconds is the one.
        let distance = |when: SystemTime| {
            when.duration_since(at).or_else(|_| at.duration_since(when)).map_or(Duration::MAX, |d| d)
        };
        let found = entries
            .iter()
            .enumerate()
            .filter(|(_, (when, amount))| *amount == movement.amount && distance(*when) <= Duration::from_secs(5))
            .min_by_key(|(_, (when, _))| distance(*when))
            .map(|(index, _)| index);
        found.and_then(|index| entries.remove(index)).is_some()
    }
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
mod tests {
    use super::*;

    const ETHER: u64 = 1_000_000_000_000_000_000;
    const KEY: &str = "alias/hot";

    fn token() -> Address {
        Address::with_last_byte(0x70)
    }

    fn engine(policy: KeyPolicy) -> PolicyEngine {
        PolicyEngine::new([(KEY.to_owned(), policy)].into())
    }

    fn ether(to: Address, amount: u64) -> SignRequest {
        SignRequest { key: KEY.into(), chain_id: 1, to, value: U256::from(amount), data: Bytes::new() }
    }

    fn token_transfer(to: Address, amount: u64) -> SignRequest {
        let data = transferCall { to, amount: U256::from(amount) }.abi_encode().into();
        SignRequest { key: KEY.into(), chain_id: 1, to: token(), value: U256::ZERO, data }
    }

    fn rule(result: Result<Movement, Denial>) -> Option<Rule> {
        result.err().map(|denial| denial.rule)
    }

    #[test]
    fn unknown_keys_and_other_chains_are_denied() {
        let mut engine = engine(KeyPolicy { allowed_chain_ids: Some(vec![1, 10]), ..KeyPolicy::default() });
        let now = SystemTime::now();
        let mut request = ether(Address::ZERO, 1);
        assert_eq!(rule(engine.check(&request, now)), None);
        request.chain_id = 137;
        assert_eq!(rule(engine.check(&request, now)), Some(Rule::ChainId));
        request.key = "alias/other".into();
        let denial = engine.check(&request, now).unwrap_err();
        assert_eq!(denial.rule, Rule::UnknownKey);
        assert!(denial.to_string().contains("unknown_key") && denial.to_string().contains("alias/other"), "{denial}");
    }

    #[test]
    fn destinations_are_checked_against_both_lists_even_inside_token_transfers() {
        let good = Address::with_last_byte(1);
        let bad = Address::with_last_byte(2);
        let policy = KeyPolicy {
            destination_allowlist: Some(vec![good, bad]),
            destination_denylist: vec![bad],
            ..KeyPolicy::default()
        };
        let mut engine = engine(policy);
        let now = SystemTime::now();
        assert_eq!(rule(engine.check(&ether(good, 1), now)), None);
        assert_eq!(rule(engine.check(&ether(bad, 1), now)), Some(Rule::DestinationDenied));
        assert_eq!(rule(engine.check(&ether(Address::with_last_byte(3), 1), now)), Some(Rule::DestinationNotAllowed));
        // The token contract is not the recipient: the decoded `to` is.
        assert_eq!(rule(engine.check(&token_transfer(bad, 1), now)), Some(Rule::DestinationDenied));
        assert_eq!(rule(engine.check(&token_transfer(good, 1), now)), None);
    }

    #[test]
    fn per_transaction_maximum_by_asset() {
        let policy = KeyPolicy {
            max_value: [(Asset::Ether, U256::from(ETHER)), (Asset::Token(token()), U256::from(500))].into(),
            ..KeyPolicy::default()
        };
        let mut engine = engine(policy);
        let now = SystemTime::now();
        assert_eq!(rule(engine.check(&ether(Address::ZERO, ETHER), now)), None);
        assert_eq!(rule(engine.check(&ether(Address::ZERO, ETHER + 1), now)), Some(Rule::MaxValue));
        assert_eq!(rule(engine.check(&token_transfer(Address::ZERO, 500), now)), None);
        let denial = engine.check(&token_transfer(Address::ZERO, 501), now).unwrap_err();
        assert_eq!(denial.rule, Rule::MaxValue);
        assert!(denial.message.contains("token"), "{denial}");
    }

    #[test]
    fn the_daily_limit_rolls_over_24_hours_and_denials_are_not_counted() {
        let policy = KeyPolicy { daily_limit: [(Asset::Ether, U256::from(3 * ETHER))].into(), ..KeyPolicy::default() };
        let mut engine = engine(policy);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = Duration::from_secs(3600);
        engine.check_and_record(&ether(Address::ZERO, 2 * ETHER), start).unwrap();
        engine.check_and_record(&ether(Address::ZERO, ETHER), start + hour).unwrap();
        assert_eq!(rule(engine.check_and_record(&ether(Address::ZERO, 1), start + 2 * hour)), Some(Rule::DailyLimit));
        // The denied request was not recorded; 24 hours after the first, its 2 ether are free again.
        assert_eq!(rule(engine.check_and_record(&ether(Address::ZERO, 2 * ETHER), start + DAY)), None);
        assert_eq!(rule(engine.check(&ether(Address::ZERO, 1), start + DAY)), Some(Rule::DailyLimit));
        // Limits are per asset: tokens are not counted against ether.
        assert_eq!(rule(engine.check(&token_transfer(Address::ZERO, 10), start + DAY)), None);
    }

    #[test]
    fn contract_calls_need_the_allowlist() {
        let router = Address::with_last_byte(0x55);
        let swap = [0x12, 0x34, 0x56, 0x78];
        let policy = KeyPolicy {
            contract_calls: Some(vec![ContractCall { address: router, selector: swap }]),
            max_value: [(Asset::Token(token()), U256::from(1000))].into(),
            ..KeyPolicy::default()
        };
        let mut engine = engine(policy);
        let now = SystemTime::now();
        let call = |to: Address, selector: [u8; 4]| SignRequest {
            key: KEY.into(),
            chain_id: 1,
            to,
            value: U256::ZERO,
            data: [selector.as_slice(), &[0u8; 32]].concat().into(),
        };
        assert_eq!(rule(engine.check(&call(router, swap), now)), None);
        assert_eq!(rule(engine.check(&call(router, [0xde, 0xad, 0xbe, 0xef]), now)), Some(Rule::ContractCall));
        assert_eq!(rule(engine.check(&call(Address::with_last_byte(0x56), swap), now)), Some(Rule::ContractCall));
        // A transfer of a token with limits is a withdrawal, not an arbitrary call.
        assert_eq!(rule(engine.check(&token_transfer(Address::ZERO, 10), now)), None);
        // A transfer of a token without limits is a call like any other.
        let mut other_token = token_transfer(Address::ZERO, 10);
        other_token.to = Address::with_last_byte(0x71);
        assert_eq!(rule(engine.check(&other_token, now)), Some(Rule::ContractCall));
        // Plain ether transfers carry no calldata and are not calls.
        assert_eq!(rule(engine.check(&ether(Address::ZERO, 1), now)), None);
    }
}
