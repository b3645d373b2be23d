//! Customer references for the address tests: random Unicode strings from a seeded generator (the same
//! every run, so a failure can be replayed), and the edge cases.

use ethkms_deposits::{MAX_REFERENCE_CHARS, Reference};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// The seed of the random references.
const SEED: [u8; 32] = *b"ethkms-deposits contracts tests!";

/// `count` random references of 1 to 60 characters, none a control character (any plane of Unicode, so
/// up to 4 bytes each), then the edge cases: the shortest, the longest ([`MAX_REFERENCE_CHARS`]) in 1-,
/// 2- and 4-byte characters, digits, spaces, an emoji with joiners.
pub(crate) fn references(count: usize) -> Vec<Reference> {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let character = any::<char>().prop_filter("no control character", |c| !c.is_control());
    let strategy = proptest::collection::vec(character, 1..=60);
    let mut references: Vec<Reference> = (0..count)
        .map(|_| {
            let text: String = strategy.new_tree(&mut runner).unwrap().current().into_iter().collect();
            Reference::new(&text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
        })
        .collect();
    let edges = [
        "0".to_owned(),
        "x".repeat(MAX_REFERENCE_CHARS),
        "é".repeat(MAX_REFERENCE_CHARS),
        "𝄞".repeat(MAX_REFERENCE_CHARS),
        "18446744073709551615".to_owned(),
        " leading and trailing spaces ".to_owned(),
        "customer-8812".to_owned(),
        "👩‍👩‍👧‍👦".to_owned(),
    ];
    references.extend(edges.iter().map(|text| Reference::new(text).unwrap()));
    assert!(references.iter().any(|reference| reference.as_str().chars().count() == MAX_REFERENCE_CHARS));
    assert!(references.iter().any(|reference| !reference.as_str().is_ascii()));
    references
}
