//! Approvers in tests: local secp256k1 keys that sign EIP-712 JSON as a wallet would, and the JSON altered
//! field by field (a signature over other content, or for another chain).

use alloy_primitives::{Address, Signature};
use serde_json::Value;

/// A local approver: its key and address.
pub fn local_key(byte: u8) -> (k256::ecdsa::SigningKey, Address) {
    let key = k256::ecdsa::SigningKey::from_slice(&[byte; 32]).unwrap();
    let address = Address::from_public_key(key.verifying_key());
    (key, address)
}

/// Signs `typed` (`eth_signTypedData_v4` JSON) with a local key: 0x-hex.
pub fn sign_locally(key: &k256::ecdsa::SigningKey, typed: &Value) -> String {
    let typed: alloy_dyn_abi::TypedData = serde_json::from_value(typed.clone()).unwrap();
    let digest = typed.eip712_signing_hash().unwrap();
    let (signature, parity) = key.sign_prehash_recoverable(digest.as_slice()).unwrap();
    let signature = Signature::from_signature_and_parity(signature, parity.is_y_odd());
    format!("0x{}", alloy_primitives::hex::encode(signature.as_bytes()))
}

/// `typed` with `message.<field>` replaced, or the domain's chain id.
pub fn altered(typed: &Value, field: &str, value: Value) -> Value {
    let mut typed = typed.clone();
    if field == "chainId" {
        typed["domain"]["chainId"] = value;
    } else {
        typed["message"][field] = value;
    }
    typed
}
