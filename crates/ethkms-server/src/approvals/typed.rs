//! The EIP-712 message an approver signs: a withdrawal's full content — its id, the key's address, the
//! recipient, the asset (the zero address for ether), the amount, its approval expiry and the decision — in
//! the domain `{name: "ethkms", version: "1", chainId}` of the key's chain, so that a signature for another
//! withdrawal, amount, recipient or chain recovers to another address. [`ApprovalContent::typed_data`] is the
//! same message as `eth_signTypedData_v4` JSON, for wallets and `ethkms sign typed-data`.
//!
//! An approver's decision on a time-locked allowlist addition is a second primary type in the same domain,
//! [`AdditionContent`]: the key's address, the destination, the time it takes effect and the decision.

use alloy_primitives::{Address, B256, Signature, U256};
use alloy_sol_types::{Eip712Domain, SolStruct as _, eip712_domain};
use serde_json::{Value, json};

use crate::policy::Asset;

alloy_sol_types::sol! {
    /// An approver's decision on one withdrawal.
    struct WithdrawalApproval {
        string id;
        address key;
        address to;
        address asset;
        uint256 amount;
        uint64 expiry;
        bool approve;
    }

    /// An approver's decision on one allowlist addition.
    struct AllowlistAddition {
        address key;
        address destination;
        uint64 effective;
        bool approve;
    }
}

/// What an approver signs, for one allowlist addition and one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdditionContent {
    /// The signing key's address.
    pub key: Address,
    /// The key's chain.
    pub chain_id: u64,
    /// The destination added.
    pub destination: Address,
    /// When the addition takes effect (with its quorum), Unix seconds.
    pub effective: u64,
    /// Approve (`true`) or reject (cancel).
    pub approve: bool,
}

impl AdditionContent {
    fn message(&self) -> AllowlistAddition {
        AllowlistAddition {
            key: self.key,
            destination: self.destination,
            effective: self.effective,
            approve: self.approve,
        }
    }

    /// The EIP-712 digest signed, in the domain of withdrawal approvals.
    #[must_use]
    pub fn signing_hash(&self) -> B256 {
        self.message().eip712_signing_hash(&domain(self.chain_id))
    }

    /// The address whose key made `signature` over this content.
    ///
    /// # Errors
    /// [`SignatureError`] if `signature` is not a valid 65-byte signature.
    pub fn signer(&self, signature: &[u8]) -> Result<Address, SignatureError> {
        recover(signature, self.signing_hash())
    }

    /// The message as `eth_signTypedData_v4` takes it.
    #[must_use]
    pub fn typed_data(&self) -> Value {
        typed_data(
            self.chain_id,
            "AllowlistAddition",
            &[("key", "address"), ("destination", "address"), ("effective", "uint64"), ("approve", "bool")],
            &json!({
                "key": self.key.to_string(),
                "destination": self.destination.to_string(),
                "effective": self.effective,
                "approve": self.approve,
            }),
        )
    }
}

fn domain(chain_id: u64) -> Eip712Domain {
    eip712_domain! { name: "ethkms", version: "1", chain_id: chain_id, }
}

/// `message` of type `primary` (its `fields`, in order) in the domain of [`domain`], as
/// `eth_signTypedData_v4` JSON.
fn typed_data(chain_id: u64, primary: &str, fields: &[(&str, &str)], message: &Value) -> Value {
    let fields: Vec<Value> = fields.iter().map(|(name, kind)| json!({ "name": name, "type": kind })).collect();
    json!({
        "types": {
            "EIP712Domain": [
                { "name": "name", "type": "string" },
                { "name": "version", "type": "string" },
                { "name": "chainId", "type": "uint256" },
            ],
            primary: fields,
        },
        "primaryType": primary,
        "domain": { "name": "ethkms", "version": "1", "chainId": chain_id },
        "message": message,
    })
}

fn recover(signature: &[u8], hash: B256) -> Result<Address, SignatureError> {
    let signature = Signature::try_from(signature).map_err(|error| SignatureError::Malformed(error.to_string()))?;
    signature.recover_address_from_prehash(&hash).map_err(|error| SignatureError::Malformed(error.to_string()))
}

/// What an approver signs, for one withdrawal and one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalContent {
    /// The withdrawal's id.
    pub id: String,
    /// The signing key's address.
    pub key: Address,
    /// The key's chain.
    pub chain_id: u64,
    /// The recipient.
    pub to: Address,
    /// What is sent.
    pub asset: Asset,
    /// How much (wei, or the token's smallest unit).
    pub amount: U256,
    /// When the withdrawal expires unapproved, Unix seconds.
    pub expiry: u64,
    /// Approve (`true`) or reject.
    pub approve: bool,
}

/// Why a signature does not count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 65 bytes, or not a valid signature.
    #[error("the signature is not a 65-byte secp256k1 signature: {0}")]
    Malformed(String),
}

impl ApprovalContent {
    /// The domain: `ethkms`, version 1, the key's chain.
    #[must_use]
    pub fn domain(&self) -> Eip712Domain {
        domain(self.chain_id)
    }

    fn message(&self) -> WithdrawalApproval {
        WithdrawalApproval {
            id: self.id.clone(),
            key: self.key,
            to: self.to,
            asset: asset_address(self.asset),
            amount: self.amount,
            expiry: self.expiry,
            approve: self.approve,
        }
    }

    /// The EIP-712 digest signed.
    #[must_use]
    pub fn signing_hash(&self) -> B256 {
        self.message().eip712_signing_hash(&self.domain())
    }

    /// The address whose key made `signature` over this content.
    ///
    /// # Errors
    /// [`SignatureError`] if `signature` is not a valid 65-byte signature.
    pub fn signer(&self, signature: &[u8]) -> Result<Address, SignatureError> {
        recover(signature, self.signing_hash())
    }

    /// The message as `eth_signTypedData_v4` takes it.
    #[must_use]
    pub fn typed_data(&self) -> Value {
        typed_data(
            self.chain_id,
            "WithdrawalApproval",
            &[
                ("id", "string"),
                ("key", "address"),
                ("to", "address"),
                ("asset", "address"),
                ("amount", "uint256"),
                ("expiry", "uint64"),
                ("approve", "bool"),
            ],
            &json!({
                "id": self.id,
                "key": self.key.to_string(),
                "to": self.to.to_string(),
                "asset": asset_address(self.asset).to_string(),
                "amount": self.amount.to_string(),
                "expiry": self.expiry,
                "approve": self.approve,
            }),
        )
    }
}

/// An asset as the message names it: the token's address, or the zero address for ether.
#[must_use]
pub fn asset_address(asset: Asset) -> Address {
    match asset {
        Asset::Ether => Address::ZERO,
        Asset::Token(token) => token,
    }
}

#[cfg(test)]
mod tests {
    use alloy_dyn_abi::TypedData;

    use super::*;

    fn content() -> ApprovalContent {
        ApprovalContent {
            id: "0b7a6f4e-1f43-4d5e-9d7b-5a1f0c3e2d10".into(),
            key: Address::with_last_byte(1),
            chain_id: 31337,
            to: Address::with_last_byte(2),
            asset: Asset::Ether,
            amount: U256::from(10).pow(U256::from(19)),
            expiry: 1_800_000_000,
            approve: true,
        }
    }

    #[test]
    fn the_typed_data_json_hashes_to_the_digest_signed() {
        for approve in [true, false] {
            for asset in [Asset::Ether, Asset::Token(Address::with_last_byte(9))] {
                let content = ApprovalContent { approve, asset, ..content() };
                let typed: TypedData = serde_json::from_value(content.typed_data()).unwrap();
                assert_eq!(typed.eip712_signing_hash().unwrap(), content.signing_hash());
            }
        }
    }

    #[test]
    fn every_field_and_the_chain_change_the_digest() {
        let base = content().signing_hash();
        let changed = [
            ApprovalContent { id: "other".into(), ..content() },
            ApprovalContent { key: Address::with_last_byte(3), ..content() },
            ApprovalContent { chain_id: 1, ..content() },
            ApprovalContent { to: Address::with_last_byte(3), ..content() },
            ApprovalContent { asset: Asset::Token(Address::with_last_byte(9)), ..content() },
            ApprovalContent { amount: U256::from(1), ..content() },
            ApprovalContent { expiry: 1, ..content() },
            ApprovalContent { approve: false, ..content() },
        ];
        for other in changed {
            assert_ne!(other.signing_hash(), base, "{other:?}");
        }
    }

    #[test]
    fn a_signature_recovers_its_signer_and_garbage_is_refused() {
        let key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let address = Address::from_public_key(key.verifying_key());
        let (signature, parity) = key.sign_prehash_recoverable(content().signing_hash().as_slice()).unwrap();
        let signature = Signature::from_signature_and_parity(signature, parity.is_y_odd()).as_bytes();
        assert_eq!(content().signer(&signature).unwrap(), address);
        let other = ApprovalContent { amount: U256::from(1), ..content() };
        assert_ne!(other.signer(&signature).unwrap(), address);
        assert!(matches!(content().signer(&[0; 64]), Err(SignatureError::Malformed(_))));
        assert!(matches!(content().signer(&[0xff; 65]), Err(SignatureError::Malformed(_))));
    }

    fn addition() -> AdditionContent {
        AdditionContent {
            key: Address::with_last_byte(1),
            chain_id: 31337,
            destination: Address::with_last_byte(2),
            effective: 1_800_000_000,
            approve: true,
        }
    }

    #[test]
    fn an_allowlist_addition_hashes_as_its_json_and_every_field_counts() {
        for approve in [true, false] {
            let content = AdditionContent { approve, ..addition() };
            let typed: TypedData = serde_json::from_value(content.typed_data()).unwrap();
            assert_eq!(typed.eip712_signing_hash().unwrap(), content.signing_hash());
        }
        let base = addition().signing_hash();
        let changed = [
            AdditionContent { key: Address::with_last_byte(3), ..addition() },
            AdditionContent { chain_id: 1, ..addition() },
            AdditionContent { destination: Address::with_last_byte(3), ..addition() },
            AdditionContent { effective: 1, ..addition() },
            AdditionContent { approve: false, ..addition() },
        ];
        for other in changed {
            assert_ne!(other.signing_hash(), base, "{other:?}");
        }
        let key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let (signature, parity) = key.sign_prehash_recoverable(base.as_slice()).unwrap();
        let signature = Signature::from_signature_and_parity(signature, parity.is_y_odd()).as_bytes();
        assert_eq!(addition().signer(&signature).unwrap(), Address::from_public_key(key.verifying_key()));
        assert!(matches!(addition().signer(&[0; 64]), Err(SignatureError::Malformed(_))));
    }
}
