//! The typed-data policy decoder and check: never panics on any input; whatever a restricted key accepts
//! is for its chain, and every permit in it is of the limited token, to the allowlisted spender, within
//! the token's maximum and the deadline bound; every denial is one line.
#![no_main]

use std::time::{Duration, SystemTime};

use alloy_primitives::{Address, U256};
use ethkms_server::policy::{Asset, KeyPolicy, PolicyEngine, TypedDataPolicy, TypedDomain, TypedRequest};

const CHAIN: u64 = 31337;
const NOW: u64 = 1_700_000_000;

fn engine() -> PolicyEngine {
    let token = Address::with_last_byte(0x70);
    let permit2: Address = "0x000000000022D473030F116dDEE9F6B43aC78BA3".parse().unwrap();
    let policy = KeyPolicy {
        destination_allowlist: Some(vec![Address::with_last_byte(1)]),
        max_value: [(Asset::Token(token), U256::from(1000))].into(),
        typed_data: Some(TypedDataPolicy {
            domains: vec![
                TypedDomain { verifying_contract: Some(token), primary_types: vec!["Permit".into()] },
                TypedDomain {
                    verifying_contract: Some(permit2),
                    primary_types: ["PermitSingle", "PermitBatch", "PermitTransferFrom", "PermitBatchTransferFrom"]
                        .map(String::from)
                        .to_vec(),
                },
                TypedDomain { verifying_contract: None, primary_types: vec!["Note".into()] },
            ],
            max_deadline: Duration::from_secs(3600),
        }),
        ..KeyPolicy::default()
    };
    PolicyEngine::new([("hot".to_owned(), policy)].into())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(request) = TypedRequest::parse(text) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    match engine().check_typed("hot", CHAIN, &request, now) {
        Ok(_) => {
            assert_eq!(request.chain_id, Some(U256::from(CHAIN)));
            assert!(request.not_understood.is_none());
            for permit in &request.permits {
                assert_eq!(permit.token, Some(Address::with_last_byte(0x70)), "{permit:?}");
                assert_eq!(permit.spender, Address::with_last_byte(1), "{permit:?}");
                assert!(permit.amount <= U256::from(1000) && permit.deadline <= U256::from(NOW + 3600), "{permit:?}");
            }
        }
        Err(denial) => assert!(!denial.to_string().contains('\n'), "{denial}"),
    }
});
