//! The proxy's fault bands and the checks of its probabilities, without a server.

use super::{Call, Decision, Faults, unit};

#[test]
fn unit_covers_zero_to_one() {
    assert!(unit(0).abs() < f64::EPSILON);
    assert!(unit(u64::MAX) < 1.0);
    assert!(unit(u64::MAX) > 0.999_999);
}

#[test]
fn bands_are_fixed_and_cumulative() {
    let faults = Faults { forwarded_then_error: 0.25, bad_gateway: 0.25, drop_connection: 0.25 };
    assert!(matches!(faults.pick(0.1, false, true), Decision::ForwardThenError));
    // The after-forward band passes other methods through, it does not shift the other bands.
    assert!(matches!(faults.pick(0.1, false, false), Decision::Pass));
    assert!(matches!(faults.pick(0.3, true, false), Decision::BadGateway(status) if status.as_u16() == 502));
    assert!(matches!(faults.pick(0.3, false, false), Decision::BadGateway(status) if status.as_u16() == 503));
    assert!(matches!(faults.pick(0.6, true, true), Decision::Drop { forward_first: true }));
    assert!(matches!(faults.pick(0.8, true, true), Decision::Pass));
    assert!(matches!(Faults::none().pick(0.0, true, true), Decision::Pass));
}

#[test]
#[should_panic(expected = "sum to at most 1")]
fn probabilities_over_one_are_refused() {
    Faults { forwarded_then_error: 0.5, bad_gateway: 0.5, drop_connection: 0.1 }.check();
}

#[test]
#[should_panic(expected = "must be in [0, 1]")]
fn nan_is_refused() {
    Faults { bad_gateway: f64::NAN, ..Faults::none() }.check();
}

#[test]
fn raw_transactions_are_read_from_single_calls_and_batches() {
    let single = br#"{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x02aa"]}"#;
    assert_eq!(Call::parse(single).raw_transactions, ["0x02aa"]);
    let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x02bb"]},
        {"jsonrpc":"2.0","id":2,"method":"eth_chainId","params":[]},
        {"jsonrpc":"2.0","id":3,"method":"eth_sendRawTransaction","params":["0x02cc"]}]"#;
    assert_eq!(Call::parse(batch).raw_transactions, ["0x02bb", "0x02cc"]);
    let other = br#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["0x02dd"]}"#;
    assert!(Call::parse(other).raw_transactions.is_empty());
    assert!(Call::parse(b"not json").raw_transactions.is_empty());
}
