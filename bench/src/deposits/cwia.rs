//! The clone-with-immutable-args (CWIA) alternative to ethkms's deposit contracts, measured beside them by
//! `ethkms-bench deposits` and used nowhere else: `CwiaDepositFactory` and `CwiaDepositForwarder`
//! (`crates/ethkms-deposits/contracts/alternatives`, compiled with the others by `cargo xtask contracts`).
//! A deposit address is an EIP-1167 proxy of the factory's one forwarder with its treasury's address
//! appended to its runtime code (65 bytes instead of 45), at the CREATE2 address of the same salt as ours.

use alloy_primitives::{Address, B256, Bytes, hex, keccak256};
use alloy_sol_types::SolValue as _;

alloy_sol_types::sol! {
    /// What the benchmark calls of the alternative factory besides `sweep` (whose call is the same as ours).
    interface CwiaDepositFactory {
        function implementation() external view returns (address);
        function depositAddress(address parent, bytes32 salt) external view returns (address);
    }

    /// What the benchmark reads of a deployed alternative deposit address.
    interface CwiaDepositForwarder {
        function parent() external view returns (address);
    }
}

/// The factory's committed artifact.
const FACTORY_ARTIFACT: &str =
    include_str!("../../../crates/ethkms-deposits/contracts/artifacts/alternatives/CwiaDepositFactory.json");

/// The creation code of a clone: [`CLONE_PREFIX`] (EIP-1167's, with a runtime of 0x41 bytes), the
/// implementation, [`CLONE_SUFFIX`], then the parent.
const CLONE_PREFIX: [u8; 20] = hex!("3d604180600a3d3981f3363d3d373d3d3d363d73");
const CLONE_SUFFIX: [u8; 15] = hex!("5af43d82803e903d91602b57fd5bf3");

/// The transaction input that deploys an alternative factory owned by `owner` (it deploys its forwarder).
pub(crate) fn factory_creation_code(owner: Address) -> Result<Bytes, Box<dyn std::error::Error>> {
    let artifact: serde_json::Value = serde_json::from_str(FACTORY_ARTIFACT)?;
    let bytecode = hex::decode(artifact["bytecode"].as_str().ok_or("CwiaDepositFactory.json has no bytecode")?)?;
    Ok([bytecode.as_slice(), &owner.abi_encode()].concat().into())
}

/// The creation code of the clone of `implementation` for `parent`.
fn clone_creation_code(implementation: Address, parent: Address) -> [u8; 75] {
    let mut code = [0_u8; 75];
    code[..20].copy_from_slice(&CLONE_PREFIX);
    code[20..40].copy_from_slice(implementation.as_slice());
    code[40..55].copy_from_slice(&CLONE_SUFFIX);
    code[55..].copy_from_slice(parent.as_slice());
    code
}

/// The alternative's deposit addresses of one parent, derived as its factory derives them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Addresses {
    factory: Address,
    code_hash: B256,
}

impl Addresses {
    /// The deposit addresses under `factory` (whose forwarder is `implementation`) of `parent`.
    pub(crate) fn new(factory: Address, implementation: Address, parent: Address) -> Self {
        Self { factory, code_hash: keccak256(clone_creation_code(implementation, parent)) }
    }

    /// The deposit address of `salt`.
    pub(crate) fn address_of_salt(&self, salt: B256) -> Address {
        self.factory.create2(salt, self.code_hash)
    }
}
