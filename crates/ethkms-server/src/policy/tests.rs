//! Unit tests of the policy engine: each rule, the movements of each kind of request, and the window.

use std::time::{Duration, SystemTime};

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::SolCall;

use super::calls::{approveCall, increaseAllowanceCall, permitCall};
use super::typed::tests::{erc2612, permit_batch};
use super::*;

const ETHER: u64 = 1_000_000_000_000_000_000;
const KEY: &str = "alias/hot";
/// The most fees any test transaction may pay: 1,000 wei.
const FEE: u64 = 1_000;
const CAPS: FeeCaps = FeeCaps { max_fee_per_gas: 1, max_priority_fee_per_gas: 1, max_fee_per_tx: FEE as u128 };

fn token() -> Address {
    Address::with_last_byte(0x70)
}

fn policy() -> KeyPolicy {
    KeyPolicy { fees: CAPS, ..KeyPolicy::default() }
}

fn engine(policy: KeyPolicy) -> PolicyEngine {
    PolicyEngine::new([(KEY.to_owned(), policy)].into())
}

fn ether(to: Address, amount: u64) -> SignRequest {
    SignRequest { key: KEY.into(), chain_id: 1, to, value: U256::from(amount), ..SignRequest::default() }
}

fn call(to: Address, data: Vec<u8>) -> SignRequest {
    SignRequest { key: KEY.into(), chain_id: 1, to, data: data.into(), ..SignRequest::default() }
}

fn token_transfer(to: Address, amount: u64) -> SignRequest {
    call(token(), transferCall { to, amount: U256::from(amount) }.abi_encode())
}

fn rule<T>(result: Result<T, Denial>) -> Option<Rule> {
    result.err().map(|denial| denial.rule)
}

fn limited_token(max: u64) -> KeyPolicy {
    KeyPolicy { max_value: [(Asset::Token(token()), U256::from(max))].into(), ..policy() }
}

#[test]
fn unknown_keys_and_other_chains_are_denied() {
    let mut engine = engine(KeyPolicy { allowed_chain_ids: Some(vec![1, 10]), ..policy() });
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
        ..limited_token(1_000)
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
fn per_transaction_maximum_by_asset_counts_fees_as_ether() {
    let policy = KeyPolicy {
        max_value: [(Asset::Ether, U256::from(ETHER)), (Asset::Token(token()), U256::from(500))].into(),
        ..policy()
    };
    let mut engine = engine(policy);
    let now = SystemTime::now();
    assert_eq!(rule(engine.check(&ether(Address::ZERO, ETHER - FEE), now)), None);
    let denial = engine.check(&ether(Address::ZERO, ETHER - FEE + 1), now).unwrap_err();
    assert_eq!(denial.rule, Rule::MaxValue);
    assert!(denial.message.contains("worst-case fees"), "{denial}");
    let movements = engine.check(&token_transfer(Address::ZERO, 500), now).unwrap();
    assert_eq!(totals(&movements), [(Asset::Ether, U256::from(FEE)), (Asset::Token(token()), U256::from(500))].into());
    let denial = engine.check(&token_transfer(Address::ZERO, 501), now).unwrap_err();
    assert_eq!(denial.rule, Rule::MaxValue);
    assert!(denial.message.contains("token"), "{denial}");
}

#[test]
fn the_daily_limit_rolls_over_24_hours_and_denials_are_not_counted() {
    let policy = KeyPolicy { daily_limit: [(Asset::Ether, U256::from(3 * ETHER))].into(), ..policy() };
    let mut engine = engine(policy);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let hour = Duration::from_secs(3600);
    engine.check_and_record(&ether(Address::ZERO, 2 * ETHER - FEE), start).unwrap();
    engine.check_and_record(&ether(Address::ZERO, ETHER - FEE), start + hour).unwrap();
    assert_eq!(rule(engine.check_and_record(&ether(Address::ZERO, 0), start + 2 * hour)), Some(Rule::DailyLimit));
    // The denied request was not recorded; 24 hours after the first, its 2 ether are free again.
    assert_eq!(rule(engine.check_and_record(&ether(Address::ZERO, 2 * ETHER - FEE), start + DAY)), None);
    assert_eq!(rule(engine.check(&ether(Address::ZERO, 0), start + DAY)), Some(Rule::DailyLimit));
}

#[test]
fn forgetting_gives_back_every_asset_a_request_moved() {
    let policy = KeyPolicy {
        daily_limit: [(Asset::Ether, U256::from(FEE)), (Asset::Token(token()), U256::from(10))].into(),
        ..policy()
    };
    let mut engine = engine(policy);
    let now = SystemTime::now();
    let transfer = token_transfer(Address::ZERO, 10);
    let movements = engine.check_and_record(&transfer, now).unwrap();
    assert_eq!(rule(engine.check(&token_transfer(Address::ZERO, 1), now)), Some(Rule::DailyLimit));
    assert!(engine.forget(KEY, &movements, now + Duration::from_secs(1)));
    assert_eq!(rule(engine.check(&transfer, now)), None);
    assert!(!engine.forget(KEY, &movements, now), "nothing left to forget");
}

#[test]
fn client_fees_above_the_caps_are_refused_by_name() {
    // The example: a 0-value transaction with 10M gas at 1e14 wei per gas (1,000 ether of fees).
    let mut engine = engine(KeyPolicy { destination_allowlist: Some(vec![Address::ZERO]), ..KeyPolicy::default() });
    let now = SystemTime::now();
    let mut request = ether(Address::ZERO, 0);
    request.gas =
        GasRequest { gas_limit: Some(10_000_000), max_fee_per_gas: Some(100_000_000_000_000), ..GasRequest::default() };
    let denial = engine.check(&request, now).unwrap_err();
    assert_eq!(denial.rule, Rule::FeeCap);
    assert!(denial.message.contains("maxFeePerGas"), "{denial}");
    // Within the per-gas cap, but not the per-transaction one: 10M gas × 500 gwei is 5 ether.
    request.gas.max_fee_per_gas = Some(500_000_000_000);
    assert!(engine.check(&request, now).unwrap_err().message.contains("max_fee_per_tx"));
    request.gas = GasRequest { gas_limit: Some(21_000), ..GasRequest::default() };
    let movements = engine.check(&request, now).unwrap();
    assert_eq!(totals(&movements)[&Asset::Ether], U256::from(21_000u64 * 500_000_000_000));
}

#[test]
fn approvals_count_against_the_token_and_their_spender_must_be_allowed() {
    let friend = Address::with_last_byte(1);
    let attacker = Address::with_last_byte(0xaa);
    let policy = KeyPolicy { destination_allowlist: Some(vec![friend]), ..limited_token(100) };
    let mut engine = engine(policy);
    let now = SystemTime::now();
    let approve = |spender, amount: U256| call(token(), approveCall { spender, amount }.abi_encode());
    let increase =
        |spender, amount: U256| call(token(), increaseAllowanceCall { spender, addedValue: amount }.abi_encode());
    let permit = |spender, amount: U256| {
        let call = permitCall {
            owner: Address::ZERO,
            spender,
            value: amount,
            deadline: U256::ZERO,
            v: 27,
            r: Default::default(),
            s: Default::default(),
        };
        self::call(token(), call.abi_encode())
    };
    let builders: [&dyn Fn(Address, U256) -> SignRequest; 3] = [&approve, &increase, &permit];
    for build in builders {
        assert_eq!(rule(engine.check(&build(attacker, U256::MAX), now)), Some(Rule::DestinationNotAllowed));
        assert_eq!(rule(engine.check(&build(friend, U256::MAX), now)), Some(Rule::MaxValue));
        let movements = engine.check(&build(friend, U256::from(100)), now).unwrap();
        assert_eq!(totals(&movements)[&Asset::Token(token())], U256::from(100));
        // Short calldata of a known selector: refused by name, not treated as some other call.
        let mut short = build(friend, U256::from(1));
        short.data = Bytes::from(short.data[..short.data.len() - 1].to_vec());
        assert_eq!(rule(engine.check(&short, now)), Some(Rule::Calldata));
    }
}

#[test]
fn calls_are_denied_by_default_once_a_key_has_limits_or_an_allowlist() {
    let router = Address::with_last_byte(0x55);
    let swap = [0x12, 0x34, 0x56, 0x78];
    let mut engine = engine(limited_token(1_000));
    let now = SystemTime::now();
    let with_selector = |to, selector: [u8; 4]| call(to, [selector.as_slice(), &[0u8; 32]].concat());
    assert_eq!(rule(engine.check(&with_selector(router, swap), now)), Some(Rule::ContractCall));
    assert_eq!(rule(engine.check(&call(router, vec![1, 2]), now)), Some(Rule::ContractCall));
    // transferFrom is not one of the decoded calls: a call like any other.
    assert_eq!(rule(engine.check(&with_selector(token(), [0x23, 0xb8, 0x72, 0xdd]), now)), Some(Rule::ContractCall));
    // A transfer of a token without limits is a call like any other.
    let mut other_token = token_transfer(Address::ZERO, 10);
    other_token.to = Address::with_last_byte(0x71);
    assert_eq!(rule(engine.check(&other_token, now)), Some(Rule::ContractCall));
    assert_eq!(rule(engine.check(&token_transfer(Address::ZERO, 10), now)), None);
    assert_eq!(rule(engine.check(&ether(Address::ZERO, 1), now)), None);

    // A key without limits or allowlist signs any call, but a decoded spender still meets the deny list.
    let attacker = Address::with_last_byte(0xaa);
    let mut open = self::engine(KeyPolicy { destination_denylist: vec![attacker], ..policy() });
    assert_eq!(rule(open.check(&with_selector(router, swap), now)), None);
    let approve =
        call(Address::with_last_byte(0x71), approveCall { spender: attacker, amount: U256::MAX }.abi_encode());
    assert_eq!(rule(open.check(&approve, now)), Some(Rule::DestinationDenied));
}

#[test]
fn allowlisted_calls_check_their_arguments_and_count_their_value() {
    let router = Address::with_last_byte(0x55);
    let friend = Address::with_last_byte(1);
    let swap = [0x12, 0x34, 0x56, 0x78];
    let policy = KeyPolicy {
        destination_allowlist: Some(vec![friend]),
        max_value: [(Asset::Ether, U256::from(10 * FEE))].into(),
        contract_calls: Some(vec![ContractCall {
            address: router,
            selector: swap,
            args: vec![
                ArgConstraint { index: 0, kind: ArgKind::AddressAllowlisted },
                ArgConstraint { index: 1, kind: ArgKind::AmountMax { max: U256::from(50), asset: None } },
            ],
        }]),
        ..policy()
    };
    let mut engine = engine(policy);
    let now = SystemTime::now();
    let swap_call = |to: Address, amount: u64, value: u64| SignRequest {
        value: U256::from(value),
        ..call(router, [swap.as_slice(), to.into_word().as_slice(), &U256::from(amount).to_be_bytes::<32>()].concat())
    };
    assert_eq!(rule(engine.check(&swap_call(friend, 50, 0), now)), None, "the router itself needs no allowlisting");
    assert_eq!(
        rule(engine.check(&swap_call(Address::with_last_byte(2), 50, 0), now)),
        Some(Rule::DestinationNotAllowed)
    );
    assert_eq!(rule(engine.check(&swap_call(friend, 51, 0), now)), Some(Rule::CallArgument));
    let mut short = swap_call(friend, 1, 0);
    short.data = Bytes::from(short.data[..40].to_vec());
    assert_eq!(rule(engine.check(&short, now)), Some(Rule::Calldata));
    // Value sent with the call counts, with the fees, against the ether maximum.
    assert_eq!(rule(engine.check(&swap_call(friend, 1, 9 * FEE), now)), None);
    assert_eq!(rule(engine.check(&swap_call(friend, 1, 9 * FEE + 1), now)), Some(Rule::MaxValue));
}

fn typed_policy() -> KeyPolicy {
    KeyPolicy {
        destination_allowlist: Some(vec![Address::with_last_byte(1)]),
        typed_data: Some(TypedDataPolicy {
            domains: vec![
                TypedDomain { verifying_contract: Some(token()), primary_types: vec!["Permit".into()] },
                TypedDomain {
                    verifying_contract: typed::tests::PERMIT2.parse().ok(),
                    primary_types: vec!["PermitBatch".into()],
                },
            ],
            max_deadline: Duration::from_secs(3600),
        }),
        ..limited_token(100)
    }
}

#[test]
fn typed_data_domains_types_deadlines_and_permit_amounts() {
    let mut engine = engine(typed_policy());
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let soon = U256::from(1_700_000_000 + 3600);
    let friend = Address::with_last_byte(1);
    let mut check = |json: &str| engine.check_typed_and_record(KEY, 1, &TypedRequest::parse(json).unwrap(), now);
    assert_eq!(rule(check(&erc2612(5, token(), friend, U256::from(1), soon))), Some(Rule::TypedDataDomain));
    let elsewhere = Address::with_last_byte(0x99);
    assert_eq!(rule(check(&erc2612(1, elsewhere, friend, U256::from(1), soon))), Some(Rule::TypedDataDomain));
    assert_eq!(
        rule(check(&erc2612(1, token(), Address::ZERO, U256::from(1), soon))),
        Some(Rule::DestinationNotAllowed)
    );
    assert_eq!(rule(check(&erc2612(1, token(), friend, U256::from(101), soon))), Some(Rule::MaxValue));
    assert_eq!(
        rule(check(&erc2612(1, token(), friend, U256::from(1), soon + U256::from(1)))),
        Some(Rule::PermitDeadline)
    );
    let movements = check(&erc2612(1, token(), friend, U256::from(100), soon)).unwrap();
    assert_eq!(totals(&movements), [(Asset::Token(token()), U256::from(100))].into());
    // Permit2: every token of a batch must have limits; the amounts of one token add up.
    let other = Address::with_last_byte(0x71);
    let batch = |details: &[(Address, U256)]| permit_batch(1, details, friend, soon);
    assert_eq!(rule(check(&batch(&[(token(), U256::from(1)), (other, U256::from(1))]))), Some(Rule::TypedDataType));
    assert_eq!(rule(check(&batch(&[(token(), U256::from(60)), (token(), U256::from(41))]))), Some(Rule::MaxValue));
    assert_eq!(rule(check(&batch(&[(token(), U256::from(1))]))), None);
    // A type the domain does not list.
    let note = erc2612(1, token(), friend, U256::from(1), soon)
        .replace("\"primaryType\":\"Permit\"", "\"primaryType\":\"EIP712Domain\"");
    assert_eq!(rule(check(&note)), Some(Rule::TypedDataType));
}

#[test]
fn keys_without_a_typed_data_policy_sign_typed_data_only_when_otherwise_unrestricted() {
    let now = SystemTime::now();
    let permit = TypedRequest::parse(&erc2612(1, token(), Address::ZERO, U256::MAX, U256::MAX)).unwrap();
    let mut restricted = engine(limited_token(1));
    assert_eq!(rule(restricted.check_typed(KEY, 1, &permit, now)), Some(Rule::TypedDataDomain));
    let mut open = engine(policy());
    assert_eq!(rule(open.check_typed(KEY, 1, &permit, now)), None);
    // Never for another chain.
    assert_eq!(rule(open.check_typed(KEY, 10, &permit, now)), Some(Rule::TypedDataDomain));
}
