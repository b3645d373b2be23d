// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

import {DepositForwarder} from "./DepositForwarder.sol";

/// @title Deposit addresses by CREATE2, deployed and swept in batches.
/// @notice The deposit address of customer salt `salt` under parent `parent` is the CREATE2 address of an
/// EIP-1167 clone of `parent`'s forwarder (itself at a CREATE2 address of this factory): a pure function of
/// (factory, parent, salt), known before anything is deployed. `sweep` deploys the clones not yet deployed
/// and moves their ether and chosen tokens to the parent, in one transaction. Only the owner (the sweeping
/// key) or the parent itself may sweep; nobody — the owner included — can send a clone's funds anywhere but
/// to its parent.
contract DepositFactory {
    /// Who may sweep for every parent.
    address public owner;
    /// The owner named by `transferOwnership`, until it accepts.
    address public pendingOwner;

    /// The owner changed.
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    /// Neither the owner nor the parent asked.
    error NotAllowed();
    /// `salts` and `masks` differ in length.
    error LengthMismatch();
    /// The deposit address of `salt` holds no code and its mask does not allow deploying it (or it could not
    /// be created).
    error NotDeployed(bytes32 salt);

    /// Bit 255 of a mask: deploy the clone if it is not there yet.
    uint256 private constant DEPLOY = 1 << 255;

    constructor(address owner_) {
        owner = owner_;
        emit OwnershipTransferred(address(0), owner_);
    }

    /// Names `newOwner`; it becomes the owner when it calls `acceptOwnership`.
    function transferOwnership(address newOwner) external {
        if (msg.sender != owner) revert NotAllowed();
        pendingOwner = newOwner;
    }

    /// The pending owner takes over.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotAllowed();
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }

    /// The address of `parent`'s forwarder (deployed or not).
    function forwarderOf(address payable parent) public view returns (address) {
        bytes32 code = keccak256(abi.encodePacked(type(DepositForwarder).creationCode, abi.encode(parent)));
        return _create2Address(bytes32(uint256(uint160(address(parent)))), code);
    }

    /// The deposit address of `salt` under `parent` (deployed or not).
    function depositAddress(address payable parent, bytes32 salt) external view returns (address) {
        return _create2Address(salt, keccak256(_cloneCode(forwarderOf(parent))));
    }

    /// Sweeps the deposit addresses of `salts` under `parent` — each one's ether, and the tokens of `tokens`
    /// whose bit is set in its mask — deploying first those not yet deployed whose mask has bit 255 set; one
    /// not deployed without that bit reverts the whole sweep with `NotDeployed(salt)`.
    function sweep(address payable parent, bytes32[] calldata salts, uint256[] calldata masks, address[] calldata tokens)
        external
    {
        if (msg.sender != owner && msg.sender != parent) revert NotAllowed();
        if (salts.length != masks.length) revert LengthMismatch();
        address forwarder = forwarderOf(parent);
        if (forwarder.code.length == 0) {
            new DepositForwarder{salt: bytes32(uint256(uint160(address(parent))))}(parent);
        }
        bytes memory clone = _cloneCode(forwarder);
        bytes32 cloneHash = keccak256(clone);
        for (uint256 i = 0; i < salts.length; ++i) {
            // Reading the code first also warms the address for the call below, so it costs a deployed
            // address nothing more; a CREATE2 onto code would burn the gas it was given.
            address target = _create2Address(salts[i], cloneHash);
            if (target.code.length == 0) {
                if (masks[i] & DEPLOY == 0) revert NotDeployed(salts[i]);
                bytes32 salt = salts[i];
                assembly ("memory-safe") {
                    target := create2(0, add(clone, 0x20), mload(clone), salt)
                }
                if (target == address(0)) revert NotDeployed(salts[i]);
            }
            DepositForwarder(payable(target)).sweep(tokens, masks[i] & ~DEPLOY);
        }
    }

    /// The creation code of an EIP-1167 clone of `implementation`.
    function _cloneCode(address implementation) private pure returns (bytes memory) {
        return abi.encodePacked(
            hex"3d602d80600a3d3981f3363d3d373d3d3d363d73", implementation, hex"5af43d82803e903d91602b57fd5bf3"
        );
    }

    function _create2Address(bytes32 salt, bytes32 codeHash) private view returns (address) {
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, codeHash)))));
    }
}
