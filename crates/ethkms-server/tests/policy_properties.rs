//! Properties of the policy engine, against oracles that read the requests independently of it: for
//! random transactions (to, value, selector, calldata, gas, fees, blobs) and random typed data, whatever is
//! accepted has a worst-case ether outflow (value and every fee the service may pay for the nonce) within
//! `max_value`, token outflow (transfers, approvals, permits, counted call arguments) within the token's
//! `max_value`, and only allowlisted counterparties; over random sequences, with some accepted requests
//! forgotten again, the sums of any 24 hours stay within `daily_limit`.

use std::time::{Duration, SystemTime};

mod common;

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, sol};
use common::typed::{self, permit2};
use ethkms_server::policy::{
    ArgConstraint, ArgKind, Asset, ContractCall, DAY, FeeCaps, GasRequest, KeyPolicy, PolicyEngine, SignRequest,
    TypedDataPolicy, TypedDomain, TypedRequest,
};
use proptest::prelude::*;

sol! {
    function transfer(address to, uint256 amount) external returns (bool);
    function approve(address spender, uint256 amount) external returns (bool);
    function increaseAllowance(address spender, uint256 addedValue) external returns (bool);
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

const KEY: &str = "hot";
const CHAIN: u64 = 31337;
const GWEI: u128 = 1_000_000_000;
const ETHER: u128 = 1_000_000_000_000_000_000;
const TOKEN_MAX: u64 = 1_000;
const TOKEN_DAILY: u64 = 5_000;
const SWAP_MAX: u64 = 700;
const SWAP: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const CAPS: FeeCaps =
    FeeCaps { max_fee_per_gas: 100 * GWEI, max_priority_fee_per_gas: 2 * GWEI, max_fee_per_tx: ETHER / 100 };
const START: u64 = 1_700_000_000;
const MAX_DEADLINE: u64 = 3_600;

fn token() -> Address {
    Address::with_last_byte(0x70)
}
fn friend() -> Address {
    Address::with_last_byte(0x01)
}
fn attacker() -> Address {
    Address::with_last_byte(0xaa)
}
fn router() -> Address {
    Address::with_last_byte(0x55)
}

fn policy() -> KeyPolicy {
    KeyPolicy {
        destination_allowlist: Some(vec![friend()]),
        max_value: [(Asset::Ether, U256::from(ETHER)), (Asset::Token(token()), U256::from(TOKEN_MAX))].into(),
        daily_limit: [(Asset::Ether, U256::from(3 * ETHER)), (Asset::Token(token()), U256::from(TOKEN_DAILY))].into(),
        contract_calls: Some(vec![ContractCall {
            address: router(),
            selector: SWAP,
            args: vec![
                ArgConstraint { index: 0, kind: ArgKind::AddressAllowlisted },
                ArgConstraint {
                    index: 1,
                    kind: ArgKind::AmountMax { max: U256::from(SWAP_MAX), asset: Some(Asset::Token(token())) },
                },
            ],
        }]),
        fees: CAPS,
        typed_data: Some(TypedDataPolicy {
            domains: vec![
                TypedDomain { verifying_contract: Some(token()), primary_types: vec!["Permit".into()] },
                TypedDomain {
                    verifying_contract: Some(permit2()),
                    primary_types: vec!["PermitSingle".into(), "PermitTransferFrom".into()],
                },
            ],
            max_deadline: Duration::from_secs(MAX_DEADLINE),
        }),
        ..KeyPolicy::default()
    }
}

fn engine() -> PolicyEngine {
    PolicyEngine::new([(KEY.to_owned(), policy())].into())
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

fn address_strategy() -> impl Strategy<Value = Address> {
    prop_oneof![
        Just(token()),
        Just(friend()),
        Just(attacker()),
        Just(router()),
        any::<[u8; 20]>().prop_map(Address::from)
    ]
}

fn amount_strategy() -> impl Strategy<Value = U256> {
    prop_oneof![
        6 => (0..2 * TOKEN_MAX).prop_map(U256::from),
        1 => Just(U256::MAX),
        1 => any::<[u8; 32]>().prop_map(U256::from_be_bytes),
    ]
}

/// A counterparty: mostly the allowlisted one.
fn party_strategy() -> impl Strategy<Value = Address> {
    prop_oneof![3 => Just(friend()), 1 => address_strategy()]
}

/// A 32-byte argument word: an address, or a number.
fn word_strategy() -> impl Strategy<Value = [u8; 32]> {
    prop_oneof![
        party_strategy().prop_map(|address| address.into_word().0),
        amount_strategy().prop_map(|amount| amount.to_be_bytes::<32>()),
    ]
}

/// A destination and calldata: nothing (to anyone), a well-formed token call or swap (mostly to the token
/// or the router), some other call, or random bytes — then, now and then, cut, extended, or with a bit
/// flipped.
fn call_strategy() -> impl Strategy<Value = (Address, Vec<u8>)> {
    let mostly = |address: fn() -> Address| prop_oneof![4 => Just(address()), 1 => address_strategy()];
    let token_call = (
        prop_oneof![
            Just((transferCall::SELECTOR, 2)),
            Just((approveCall::SELECTOR, 2)),
            Just((increaseAllowanceCall::SELECTOR, 2)),
            Just((transferFromCall::SELECTOR, 3)),
        ],
        party_strategy(),
        amount_strategy(),
    )
        .prop_map(|((selector, words), party, amount)| {
            let mut data = selector.to_vec();
            if words == 3 {
                data.extend(friend().into_word().0); // transferFrom's `from`
            }
            data.extend(party.into_word().0);
            data.extend(amount.to_be_bytes::<32>());
            data
        });
    let permit = (party_strategy(), amount_strategy(), any::<[u8; 32]>()).prop_map(|(spender, value, deadline)| {
        let (r, s) = Default::default();
        let deadline = U256::from_be_bytes(deadline);
        permitCall { owner: friend(), spender, value, deadline, v: 27, r, s }.abi_encode()
    });
    let swap = (party_strategy(), amount_strategy(), prop::collection::vec(word_strategy(), 0..3)).prop_map(
        |(recipient, amount, rest)| {
            let mut data = SWAP.to_vec();
            data.extend(recipient.into_word().0);
            data.extend(amount.to_be_bytes::<32>());
            data.extend(rest.iter().flatten());
            data
        },
    );
    let other = (any::<[u8; 4]>(), prop::collection::vec(word_strategy(), 0..4))
        .prop_map(|(selector, words)| [selector.as_slice(), words.concat().as_slice()].concat());
    let call = prop_oneof![
        2 => (party_strategy(), Just(Vec::new())),
        4 => (mostly(token), token_call),
        1 => (mostly(token), permit),
        2 => (mostly(router), swap),
        1 => (address_strategy(), other),
        1 => (address_strategy(), prop::collection::vec(any::<u8>(), 1..80)),
    ];
    (call, prop_oneof![17 => Just(None), 3 => any::<(u8, u8)>().prop_map(Some)]).prop_map(
        |((to, mut data), mutation)| {
            match mutation {
                Some((0..=84, by)) => data.truncate(data.len().saturating_sub(usize::from(by % 40) + 1)),
                Some((85..=169, by)) => data.extend(std::iter::repeat_n(by, usize::from(by % 40) + 1)),
                Some((_, at)) if data.len() > 4 => {
                    let index = 4 + usize::from(at) % (data.len() - 4);
                    data[index] ^= 0x80;
                }
                _ => {}
            }
            (to, data)
        },
    )
}

fn fee_strategy() -> impl Strategy<Value = Option<u128>> {
    prop::option::weighted(
        0.2,
        prop_oneof![Just(0), Just(GWEI), Just(100 * GWEI), Just(100 * GWEI + 1), Just(10u128.pow(14)), any::<u128>()],
    )
}

fn gas_strategy() -> impl Strategy<Value = GasRequest> {
    (
        prop::option::of(prop_oneof![Just(21_000u64), Just(100_000), Just(10_000_000), any::<u64>()]),
        fee_strategy(),
        fee_strategy(),
        fee_strategy(),
        prop_oneof![9 => Just(0u64), 1 => 1u64..7],
        fee_strategy(),
    )
        .prop_map(
            |(gas_limit, gas_price, max_fee_per_gas, max_priority_fee_per_gas, blobs, max_fee_per_blob_gas)| {
                GasRequest {
                    gas_limit,
                    gas_price,
                    max_fee_per_gas,
                    max_priority_fee_per_gas,
                    blobs,
                    max_fee_per_blob_gas,
                }
            },
        )
}

fn value_strategy() -> impl Strategy<Value = U256> {
    prop_oneof![
        6 => Just(U256::ZERO),
        1 => (0..2 * ETHER).prop_map(U256::from),
        // Near the maximum, where the fees decide.
        2 => (ETHER - 2 * CAPS.max_fee_per_tx..=ETHER).prop_map(U256::from),
        1 => any::<u128>().prop_map(U256::from),
    ]
}

fn transaction_strategy() -> impl Strategy<Value = SignRequest> {
    (call_strategy(), value_strategy(), gas_strategy()).prop_map(|((to, data), value, gas)| SignRequest {
        key: KEY.into(),
        chain_id: CHAIN,
        to,
        value,
        data: Bytes::from(data),
        gas,
    })
}

fn word(data: &[u8], index: usize) -> Option<U256> {
    data.get(4 + 32 * index..4 + 32 * (index + 1)).map(U256::from_be_slice)
}

fn as_address(word: U256) -> Option<Address> {
    (word >> 160usize).is_zero().then(|| Address::from_word(word.into()))
}

/// The oracle's worst case of what a transaction pays in fees, given that the service signs it and every
/// bump of it within the key's caps: blob transactions are never re-signed (exactly the client's fees);
/// others may go up to `min(gas × max_fee_per_gas, max_fee_per_tx)`, or `max_fee_per_tx` when the
/// service estimates the gas, and at least the client's own fees.
fn oracle_fees(gas: &GasRequest) -> U256 {
    let wide = |value: u128| U256::from(value);
    let client_fee = gas.gas_price.or(gas.max_fee_per_gas).unwrap_or(0);
    let client = wide(gas.gas_limit.unwrap_or(0).into()).saturating_mul(wide(client_fee)).saturating_add(
        wide(gas.blobs.into())
            .saturating_mul(wide(131_072))
            .saturating_mul(wide(gas.max_fee_per_blob_gas.unwrap_or(0))),
    );
    if gas.blobs > 0 {
        return client;
    }
    let bumps = gas.gas_limit.map_or(wide(CAPS.max_fee_per_tx), |limit| {
        wide(limit.into()).saturating_mul(wide(CAPS.max_fee_per_gas)).min(wide(CAPS.max_fee_per_tx))
    });
    client.max(bumps)
}

/// What the oracle reads a transaction to move of the token (through the token or the router), and to
/// whom, or why it must not be accepted.
fn oracle_token(request: &SignRequest) -> Result<Option<(Address, U256)>, &'static str> {
    let data = &request.data;
    if data.is_empty() {
        return if request.to == friend() { Ok(None) } else { Err("ether to a stranger") };
    }
    let selector: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or("calldata shorter than a selector")?;
    let (counterparty, amount, words) = match (request.to, selector) {
        (to, transferCall::SELECTOR | approveCall::SELECTOR | increaseAllowanceCall::SELECTOR) if to == token() => {
            (0, 1, 2)
        }
        (to, permitCall::SELECTOR) if to == token() => (1, 2, 7),
        (to, SWAP) if to == router() => {
            let recipient = word(data, 0).and_then(as_address).ok_or("no recipient")?;
            let amount = word(data, 1).ok_or("no amount")?;
            return Ok(Some((recipient, amount)));
        }
        _ => return Err("a call that is not allowed"),
    };
    if data.len() != 4 + 32 * words {
        return Err("calldata of the wrong length");
    }
    let counterparty = word(data, counterparty).and_then(as_address).ok_or("not an address")?;
    Ok(Some((counterparty, word(data, amount).ok_or("no amount")?)))
}

/// Typed data built from known parameters, and the parameters.
#[derive(Clone, Debug)]
struct Typed {
    chain: u64,
    contract: Address,
    primary: &'static str,
    spender: Address,
    token: Address,
    amount: U256,
    deadline: u64,
    /// `Permit`'s fields in another order: not ERC-2612's type.
    mangled: bool,
}

impl Typed {
    fn json(&self) -> String {
        let &Self { chain, contract, spender, token, amount, deadline, .. } = self;
        let mut typed = match self.primary {
            "Permit" => typed::erc2612(chain, contract, friend(), spender, amount, deadline),
            "PermitSingle" => typed::permit_single(chain, contract, token, spender, amount, deadline),
            "PermitTransferFrom" => typed::permit_transfer_from(chain, contract, token, spender, amount, deadline),
            _ => typed::note(chain, contract),
        };
        if self.mangled
            && let Some(fields) = typed["types"]["Permit"].as_array_mut()
        {
            fields.swap(0, 1);
        }
        typed.to_string()
    }
}

fn typed_strategy() -> impl Strategy<Value = Typed> {
    (
        prop_oneof![4 => Just(CHAIN), 1 => Just(1u64)],
        prop_oneof![2 => Just(token()), 2 => Just(permit2()), 1 => address_strategy()],
        prop_oneof![Just("Permit"), Just("PermitSingle"), Just("PermitTransferFrom"), Just("Note")],
        party_strategy(),
        prop_oneof![4 => Just(token()), 1 => address_strategy()],
        prop_oneof![6 => (0..2 * TOKEN_MAX).prop_map(U256::from), 1 => Just(U256::MAX >> 96), 1 => Just(U256::MAX)],
        0..2 * MAX_DEADLINE,
        prop_oneof![9 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(chain, contract, primary, spender, token, amount, deadline, mangled)| Typed {
            chain,
            contract,
            primary,
            spender,
            token,
            amount,
            deadline: START + deadline,
            mangled,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn accepted_transactions_stay_within_the_per_transaction_limits(request in transaction_strategy()) {
        let Ok(movements) = engine().check(&request, at(START)) else { return Ok(()) };
        // Ether: the value and the worst case of the fees.
        let fees = oracle_fees(&request.gas);
        prop_assert!(request.value.saturating_add(fees) <= U256::from(ETHER), "{request:?} → {movements:?}");
        // No client fee field above its cap.
        for fee in [request.gas.gas_price, request.gas.max_fee_per_gas].into_iter().flatten() {
            prop_assert!(fee <= CAPS.max_fee_per_gas);
        }
        prop_assert!(request.gas.max_priority_fee_per_gas.is_none_or(|tip| tip <= CAPS.max_priority_fee_per_gas));
        // Tokens, read by the oracle from the calldata.
        match oracle_token(&request) {
            Err(why) => prop_assert!(false, "accepted {why}: {request:?}"),
            Ok(None) => {}
            Ok(Some((counterparty, amount))) => {
                prop_assert_eq!(counterparty, friend());
                let cap = if request.to == router() { SWAP_MAX } else { TOKEN_MAX };
                prop_assert!(amount <= U256::from(cap), "{amount} accepted: {request:?}");
                // Ether sent along with a token call goes to the contract, which is no allowed destination.
                prop_assert!(request.to == router() || request.value.is_zero());
            }
        }
    }

    #[test]
    fn accepted_typed_data_is_for_the_chain_an_allowed_domain_and_within_the_limits(typed in typed_strategy()) {
        let Ok(request) = TypedRequest::parse(&typed.json()) else { return Ok(()) };
        let Ok(movements) = engine().check_typed(KEY, CHAIN, &request, at(START)) else { return Ok(()) };
        prop_assert_eq!(typed.chain, CHAIN);
        let allowed = (typed.contract == token() && typed.primary == "Permit")
            || (typed.contract == permit2() && matches!(typed.primary, "PermitSingle" | "PermitTransferFrom"));
        prop_assert!(allowed && !(typed.mangled && typed.primary == "Permit"), "{typed:?} → {movements:?}");
        prop_assert_eq!(typed.spender, friend());
        prop_assert!(typed.amount <= U256::from(TOKEN_MAX));
        prop_assert!(typed.deadline <= START + MAX_DEADLINE);
        if typed.primary != "Permit" {
            prop_assert_eq!(typed.token, token());
        }
    }

    #[test]
    fn no_24_hours_exceed_the_daily_limits(
        steps in prop::collection::vec((0u64..6 * 3600, 0u8..6, 0u64..=TOKEN_MAX, 0u128..ETHER), 1..60),
    ) {
        let mut engine = engine();
        let mut now = START;
        // Accepted and not forgotten: (time, ether, token, what the engine recorded).
        let mut kept: Vec<(u64, U256, U256, Vec<ethkms_server::policy::Movement>)> = Vec::new();
        for (advance, kind, amount, value) in steps {
            now += advance;
            let amount = U256::from(amount);
            let base = SignRequest { key: KEY.into(), chain_id: CHAIN, to: token(), ..SignRequest::default() };
            let request = match kind {
                0 => SignRequest { to: friend(), value: U256::from(value), ..base },
                1 => SignRequest { data: transferCall { to: friend(), amount }.abi_encode().into(), ..base },
                2 => SignRequest { data: approveCall { spender: friend(), amount }.abi_encode().into(), ..base },
                3 => {
                    let data = [SWAP.as_slice(), friend().into_word().as_slice(), &amount.to_be_bytes::<32>()].concat();
                    SignRequest { to: router(), data: data.into(), ..base }
                }
                4 => {
                    let typed = Typed { chain: CHAIN, contract: token(), primary: "Permit", spender: friend(), token: token(), amount, deadline: now + 60, mangled: false };
                    let parsed = TypedRequest::parse(&typed.json()).unwrap();
                    if let Ok(movements) = engine.check_typed_and_record(KEY, CHAIN, &parsed, at(now)) {
                        kept.push((now, U256::ZERO, amount, movements));
                    }
                    continue;
                }
                _ => {
                    // A signature that failed: the last kept request is given back.
                    // (Entries older than 24 hours have left the window already.)
                    if let Some((when, _, _, movements)) = kept.pop() {
                        prop_assert!(engine.forget(KEY, &movements, at(when)) || when + DAY.as_secs() <= now);
                    }
                    continue;
                }
            };
            if let Ok(movements) = engine.check_and_record(&request, at(now)) {
                let ether = request.value.saturating_add(U256::from(CAPS.max_fee_per_tx));
                let token_amount = if kind == 0 { U256::ZERO } else { amount };
                kept.push((now, ether, token_amount, movements));
            }
            let window = now.saturating_sub(DAY.as_secs());
            let recent = kept.iter().filter(|(when, ..)| *when > window);
            let (ether, token_amount) = recent.fold((U256::ZERO, U256::ZERO), |(e, t), (_, ether, token, _)| (e + ether, t + token));
            prop_assert!(ether <= U256::from(3 * ETHER), "{ether} wei in 24 hours");
            prop_assert!(token_amount <= U256::from(TOKEN_DAILY), "{token_amount} of the token in 24 hours");
        }
    }
}

/// How many of `count` random requests the policy accepts: the properties above are about those.
fn accepted<S: Strategy>(strategy: &S, count: usize, accepts: impl Fn(&S::Value) -> bool) -> usize {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..count).filter(|_| accepts(&strategy.new_tree(&mut runner).unwrap().current())).count()
}

#[test]
fn the_random_requests_are_accepted_often_enough_for_the_properties_to_bite() {
    let transactions = accepted(&transaction_strategy(), 2_000, |request| engine().check(request, at(START)).is_ok());
    let tokens = accepted(&transaction_strategy(), 2_000, |request| {
        !request.data.is_empty() && engine().check(request, at(START)).is_ok()
    });
    let typed = accepted(&typed_strategy(), 2_000, |typed| {
        TypedRequest::parse(&typed.json())
            .is_ok_and(|request| engine().check_typed(KEY, CHAIN, &request, at(START)).is_ok())
    });
    assert!(transactions >= 150 && tokens >= 60 && typed >= 40, "{transactions} {tokens} {typed} of 2,000 accepted");
}
