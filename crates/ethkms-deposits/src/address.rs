//! Deposit addresses, derived off-chain: the address of customer reference `r` under a factory and a parent
//! (the treasury its funds go to) is the CREATE2 address of an EIP-1167 clone of the parent's forwarder,
//! salted with `keccak256(r)` — pure arithmetic, no node and no KMS, the same as the factory's
//! `depositAddress(parent, salt)`.
//!
//! ```
//! use ethkms_deposits::{DepositAddresses, Reference};
//! use alloy_primitives::address;
//!
//! let addresses = DepositAddresses::new(
//!     address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"), // the factory
//!     address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"), // the treasury
//! );
//! let alice = addresses.address(&Reference::new("customer-8812")?);
//! assert_eq!(alice, addresses.address(&Reference::new("customer-8812")?));
//! // Index `n` is the reference `n` in decimal.
//! assert_eq!(addresses.address_of_index(7), addresses.address(&Reference::new("7")?));
//! # Ok::<(), ethkms_deposits::ReferenceError>(())
//! ```

use core::fmt;

use alloy_primitives::{Address, B256, keccak256};

use crate::contracts;

/// The longest reference, in characters (Unicode scalar values, as JSON Schema's `maxLength` counts).
pub const MAX_REFERENCE_CHARS: usize = 200;

/// A customer reference: the string a deposit address is derived from (an account id, a UUID, an index in
/// decimal). 1 to [`MAX_REFERENCE_CHARS`] characters, no control characters, so that what a client
/// sends, what is logged and what is stored are the same string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference(String);

/// Why a string is not a [`Reference`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// It is empty.
    #[error("a deposit reference must not be empty")]
    Empty,
    /// It is longer than [`MAX_REFERENCE_CHARS`] (it has this many characters).
    #[error("a deposit reference is at most {MAX_REFERENCE_CHARS} characters; this one has {0}")]
    TooLong(usize),
    /// It holds a control character, at this byte offset.
    #[error("a deposit reference must not hold a control character (one at byte {0})")]
    ControlCharacter(usize),
}

impl Reference {
    /// Checks `text` (see [`Reference`]).
    ///
    /// # Errors
    /// [`ReferenceError`] if it is empty, too long, or holds a control character.
    pub fn new(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let characters = text.chars().count();
        if characters > MAX_REFERENCE_CHARS {
            return Err(ReferenceError::TooLong(characters));
        }
        if let Some((at, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(ReferenceError::ControlCharacter(at));
        }
        Ok(Self(text.to_owned()))
    }

    /// The reference of index `index`: its decimal digits.
    pub fn of_index(index: u64) -> Self {
        Self(index.to_string())
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CREATE2 salt: `keccak256` of the reference's bytes.
    pub fn salt(&self) -> B256 {
        keccak256(self.0.as_bytes())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl core::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

/// The deposit addresses of one parent under one factory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DepositAddresses {
    factory: Address,
    parent: Address,
    forwarder: Address,
    clone_code_hash: B256,
}

impl DepositAddresses {
    /// The addresses of deposits to `parent` through the factory at `factory`.
    pub fn new(factory: Address, parent: Address) -> Self {
        let forwarder = factory.create2(parent.into_word(), keccak256(contracts::forwarder_creation_code(parent)));
        let clone_code_hash = keccak256(contracts::clone_creation_code(forwarder));
        Self { factory, parent, forwarder, clone_code_hash }
    }

    /// The factory.
    pub const fn factory(&self) -> Address {
        self.factory
    }

    /// Where every deposit goes.
    pub const fn parent(&self) -> Address {
        self.parent
    }

    /// The parent's forwarder: the logic every deposit address delegates to (deployed by the first sweep).
    pub const fn forwarder(&self) -> Address {
        self.forwarder
    }

    /// The deposit address of `reference`.
    pub fn address(&self, reference: &Reference) -> Address {
        self.address_of_salt(reference.salt())
    }

    /// The deposit address of CREATE2 salt `salt`.
    pub fn address_of_salt(&self, salt: B256) -> Address {
        self.factory.create2(salt, self.clone_code_hash)
    }

    /// The deposit address of index `index` (the reference of its decimal digits), without allocating.
    pub fn address_of_index(&self, index: u64) -> Address {
        let mut digits = [0_u8; 20];
        self.address_of_salt(keccak256(decimal(index, &mut digits)))
    }

    /// The deposit addresses of indices `range`, in order, appended to `out`.
    pub fn extend_with_indices(&self, range: core::ops::Range<u64>, out: &mut Vec<Address>) {
        out.reserve(usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(0));
        out.extend(range.map(|index| self.address_of_index(index)));
    }
}

/// `index` in decimal, written at the end of `buffer`.
fn decimal(mut index: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (index % 10) as u8;
        index /= 10;
        if index == 0 {
            return &buffer[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::address;
    use proptest::prelude::*;

    use super::*;

    const FACTORY: Address = address!("0x5FbDB2315678afecb367f032d93F642f64180aa3");
    const PARENT: Address = address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");

    #[test]
    fn bad_references_are_refused_by_name() {
        assert_eq!(Reference::new(""), Err(ReferenceError::Empty));
        assert_eq!(Reference::new(&"x".repeat(201)), Err(ReferenceError::TooLong(201)));
        assert_eq!(Reference::new("ab\0c"), Err(ReferenceError::ControlCharacter(2)));
        assert_eq!(Reference::new("é\u{85}"), Err(ReferenceError::ControlCharacter(2)));
        assert!(Reference::new(&"é".repeat(200)).is_ok(), "200 characters (400 bytes)");
        assert_eq!(Reference::new(&"é".repeat(201)), Err(ReferenceError::TooLong(201)));
        assert!(ReferenceError::TooLong(201).to_string().contains("201"));
    }

    #[test]
    fn addresses_differ_by_reference_parent_and_factory() {
        let addresses = DepositAddresses::new(FACTORY, PARENT);
        let alice = addresses.address(&Reference::new("alice").unwrap());
        assert_ne!(alice, addresses.address(&Reference::new("bob").unwrap()));
        assert_ne!(
            alice,
            DepositAddresses::new(FACTORY, Address::with_last_byte(1)).address(&Reference::new("alice").unwrap())
        );
        assert_ne!(alice, DepositAddresses::new(PARENT, PARENT).address(&Reference::new("alice").unwrap()));
        assert_ne!(addresses.forwarder(), alice);
    }

    proptest! {
        #[test]
        fn an_index_is_its_decimal_reference(index in any::<u64>()) {
            let addresses = DepositAddresses::new(FACTORY, PARENT);
            prop_assert_eq!(addresses.address_of_index(index), addresses.address(&Reference::of_index(index)));
        }
    }

    #[test]
    fn ranges_are_derived_in_order() {
        let addresses = DepositAddresses::new(FACTORY, PARENT);
        let mut out = Vec::new();
        addresses.extend_with_indices(0..5, &mut out);
        addresses.extend_with_indices(u64::MAX - 1..u64::MAX, &mut out);
        let expected: Vec<Address> =
            [0, 1, 2, 3, 4, u64::MAX - 1].into_iter().map(|index| addresses.address_of_index(index)).collect();
        assert_eq!(out, expected);
    }
}
