//! The contracts (Solidity in `contracts/src`, compiled by `cargo xtask contracts` with a pinned solc into
//! `contracts/artifacts`, which `cargo xtask ci` checks it still gives): their bytecode, and their
//! interfaces as alloy types for calls, events and errors.
//!
//! - [`DepositFactory`]: deploys each parent's forwarder and the deposit addresses (EIP-1167 clones), and
//!   sweeps them in batches (`sweep`); only its owner (the sweeping key) or the parent may sweep.
//! - [`DepositForwarder`]: what every deposit address of one parent runs; passes ether on at once and
//!   tokens when swept, only ever to the parent.

use std::sync::OnceLock;

use alloy_primitives::{Address, Bytes, hex};
use alloy_sol_types::SolValue as _;

alloy_sol_types::sol! {
    /// The factory's interface (see `contracts/src/DepositFactory.sol`).
    #[derive(Debug, PartialEq, Eq)]
    interface DepositFactory {
        event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
        error NotAllowed();
        error LengthMismatch();
        error NotDeployed(bytes32 salt);
        function owner() external view returns (address);
        function pendingOwner() external view returns (address);
        function transferOwnership(address newOwner) external;
        function acceptOwnership() external;
        function forwarderOf(address parent) external view returns (address);
        function depositAddress(address parent, bytes32 salt) external view returns (address);
        function sweep(address parent, bytes32[] salts, uint256[] masks, address[] tokens) external;
    }

    /// The forwarder's interface (see `contracts/src/DepositForwarder.sol`): also every deposit address's.
    #[derive(Debug, PartialEq, Eq)]
    interface DepositForwarder {
        event Deposited(address indexed from, uint256 value);
        error NotAllowed();
        error EtherNotSent();
        error TokenNotSent(address token);
        function parent() external view returns (address);
        function factory() external view returns (address);
        function sweep(address[] tokens, uint256 mask) external;
    }

    /// What the deposits need of an ERC-20 token.
    #[derive(Debug, PartialEq, Eq)]
    interface Erc20 {
        event Transfer(address indexed from, address indexed to, uint256 value);
        function balanceOf(address owner) external view returns (uint256);
        function transfer(address to, uint256 amount) external returns (bool);
    }
}

/// Bit 255 of a sweep mask: deploy the deposit address first.
pub const DEPLOY_BIT: usize = 255;

/// The most tokens one sweep can name (bits 0 to 254 of a mask).
pub const MAX_SWEEP_TOKENS: usize = DEPLOY_BIT;

/// The creation code of an EIP-1167 clone: these bytes, the implementation's address, then [`CLONE_SUFFIX`].
const CLONE_PREFIX: [u8; 20] = hex!("3d602d80600a3d3981f3363d3d373d3d3d363d73");
const CLONE_SUFFIX: [u8; 15] = hex!("5af43d82803e903d91602b57fd5bf3");

/// A compiled contract, as committed in `contracts/artifacts`.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The contract's name.
    pub name: &'static str,
    /// The compiler that made it (`solc 0.8.28+commit…`).
    pub compiler: String,
    /// Its creation code, without constructor arguments.
    pub bytecode: Bytes,
    /// Its runtime code.
    pub deployed_bytecode: Bytes,
    /// Its ABI, as solc wrote it.
    pub abi: serde_json::Value,
}

fn parse(name: &'static str, json: &str) -> Artifact {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let bytes = |field: &str| -> Bytes {
        value[field].as_str().and_then(|text| hex::decode(text).ok()).unwrap_or_default().into()
    };
    Artifact {
        name,
        compiler: value["compiler"].as_str().unwrap_or_default().to_owned(),
        bytecode: bytes("bytecode"),
        deployed_bytecode: bytes("deployedBytecode"),
        abi: value["abi"].clone(),
    }
}

/// The factory's artifact.
pub fn factory_artifact() -> &'static Artifact {
    static ARTIFACT: OnceLock<Artifact> = OnceLock::new();
    ARTIFACT.get_or_init(|| parse("DepositFactory", include_str!("../contracts/artifacts/DepositFactory.json")))
}

/// The forwarder's artifact.
pub fn forwarder_artifact() -> &'static Artifact {
    static ARTIFACT: OnceLock<Artifact> = OnceLock::new();
    ARTIFACT.get_or_init(|| parse("DepositForwarder", include_str!("../contracts/artifacts/DepositForwarder.json")))
}

/// The test token's artifact (an ERC-20 anyone mints; optionally answering nothing, as USDT does): for
/// tests and demonstrations, never for value.
pub fn test_token_artifact() -> &'static Artifact {
    static ARTIFACT: OnceLock<Artifact> = OnceLock::new();
    ARTIFACT.get_or_init(|| parse("TestToken", include_str!("../contracts/artifacts/TestToken.json")))
}

/// The transaction input that deploys a factory owned by `owner` (the key that will sweep).
pub fn factory_creation_code(owner: Address) -> Bytes {
    [factory_artifact().bytecode.as_ref(), &owner.abi_encode()].concat().into()
}

/// The creation code of `parent`'s forwarder, as the factory deploys it.
pub fn forwarder_creation_code(parent: Address) -> Vec<u8> {
    [forwarder_artifact().bytecode.as_ref(), &parent.abi_encode()].concat()
}

/// The creation code of an EIP-1167 clone of `implementation`.
pub fn clone_creation_code(implementation: Address) -> [u8; 55] {
    let mut code = [0_u8; 55];
    code[..20].copy_from_slice(&CLONE_PREFIX);
    code[20..40].copy_from_slice(implementation.as_slice());
    code[40..].copy_from_slice(&CLONE_SUFFIX);
    code
}

/// The runtime code of an EIP-1167 clone of `implementation` (what a deployed deposit address holds).
pub fn clone_runtime_code(implementation: Address) -> Vec<u8> {
    clone_creation_code(implementation)[10..].to_vec()
}

#[cfg(test)]
mod tests {
    use alloy_primitives::keccak256;
    use alloy_sol_types::{SolCall, SolError, SolEvent};

    use super::*;

    /// The selectors (or topics) of the ABI's entries of `kind`, by signature.
    fn signatures(artifact: &Artifact, kind: &str) -> Vec<String> {
        let mut signatures: Vec<String> = artifact
            .abi
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["type"] == kind)
            .map(|entry| {
                let inputs: Vec<&str> =
                    entry["inputs"].as_array().unwrap().iter().map(|input| input["type"].as_str().unwrap()).collect();
                format!("{}({})", entry["name"].as_str().unwrap(), inputs.join(","))
            })
            .collect();
        signatures.sort();
        signatures
    }

    #[test]
    fn the_artifacts_are_present_and_made_by_the_pinned_compiler() {
        for artifact in [factory_artifact(), forwarder_artifact(), test_token_artifact()] {
            assert!(artifact.bytecode.len() > 100, "{}", artifact.name);
            assert!(artifact.deployed_bytecode.len() > 100, "{}", artifact.name);
            assert!(artifact.compiler.starts_with("solc 0.8.28+"), "{}: {}", artifact.name, artifact.compiler);
        }
    }

    #[test]
    fn the_rust_interfaces_are_the_compiled_ones() {
        use DepositFactory as F;
        use DepositForwarder as W;
        let factory: Vec<&str> = vec![
            F::acceptOwnershipCall::SIGNATURE,
            F::depositAddressCall::SIGNATURE,
            F::forwarderOfCall::SIGNATURE,
            F::ownerCall::SIGNATURE,
            F::pendingOwnerCall::SIGNATURE,
            F::sweepCall::SIGNATURE,
            F::transferOwnershipCall::SIGNATURE,
        ];
        assert_eq!(signatures(factory_artifact(), "function"), factory);
        assert_eq!(signatures(factory_artifact(), "event"), [F::OwnershipTransferred::SIGNATURE]);
        let mut errors = vec![F::LengthMismatch::SIGNATURE, F::NotAllowed::SIGNATURE, F::NotDeployed::SIGNATURE];
        errors.sort_unstable();
        assert_eq!(signatures(factory_artifact(), "error"), errors);

        let forwarder = vec![W::factoryCall::SIGNATURE, W::parentCall::SIGNATURE, W::sweepCall::SIGNATURE];
        assert_eq!(signatures(forwarder_artifact(), "function"), forwarder);
        assert_eq!(signatures(forwarder_artifact(), "event"), [W::Deposited::SIGNATURE]);
        let mut errors = vec![W::EtherNotSent::SIGNATURE, W::NotAllowed::SIGNATURE, W::TokenNotSent::SIGNATURE];
        errors.sort_unstable();
        assert_eq!(signatures(forwarder_artifact(), "error"), errors);
        assert_eq!(Erc20::Transfer::SIGNATURE_HASH, keccak256("Transfer(address,address,uint256)"));
    }

    #[test]
    fn a_clone_is_the_eip_1167_proxy_of_its_implementation() {
        let implementation = Address::repeat_byte(0xbe);
        let runtime = clone_runtime_code(implementation);
        assert_eq!(runtime.len(), 45);
        assert_eq!(
            hex::encode(&runtime),
            "363d3d373d3d3d363d73bebebebebebebebebebebebebebebebebebebebe5af43d82803e903d91602b57fd5bf3"
        );
    }
}
