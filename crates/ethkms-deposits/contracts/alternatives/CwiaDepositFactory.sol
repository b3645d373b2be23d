// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

import {CwiaDepositForwarder} from "./CwiaDepositForwarder.sol";

/// @title For measurement only: deposit addresses as clones with immutable arguments.
/// @notice Not part of ethkms: the alternative to `DepositFactory` that `cargo xtask bench deposits`
/// measures beside it. The deposit address of customer salt `salt` under parent `parent` is the CREATE2
/// address (salt `salt`, as in `DepositFactory`) of an EIP-1167 proxy of the one `CwiaDepositForwarder`
/// this factory deploys with itself, `parent` appended to the proxy's runtime code. No forwarder per
/// parent, so a parent's first sweep deploys nothing but its clones. `sweep`, the ownership and who may
/// sweep are those of `DepositFactory`.
contract CwiaDepositFactory {
    /// Who may sweep for every parent.
    address public owner;
    /// The owner named by `transferOwnership`, until it accepts.
    address public pendingOwner;
    /// The forwarder every deposit address of every parent delegates to.
    address public immutable implementation;

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
        implementation = address(new CwiaDepositForwarder());
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

    /// The deposit address of `salt` under `parent` (deployed or not).
    function depositAddress(address payable parent, bytes32 salt) external view returns (address) {
        return _create2Address(salt, keccak256(_cloneCode(parent)));
    }

    /// Sweeps the deposit addresses of `salts` under `parent`, as `DepositFactory.sweep` does.
    function sweep(address payable parent, bytes32[] calldata salts, uint256[] calldata masks, address[] calldata tokens)
        external
    {
        if (msg.sender != owner && msg.sender != parent) revert NotAllowed();
        if (salts.length != masks.length) revert LengthMismatch();
        bytes memory clone = _cloneCode(parent);
        bytes32 cloneHash = keccak256(clone);
        for (uint256 i = 0; i < salts.length; ++i) {
            // Reading the code first also warms the address for the call below, as in `DepositFactory`.
            address target = _create2Address(salts[i], cloneHash);
            if (target.code.length == 0) {
                if (masks[i] & DEPLOY == 0) revert NotDeployed(salts[i]);
                bytes32 salt = salts[i];
                assembly ("memory-safe") {
                    target := create2(0, add(clone, 0x20), mload(clone), salt)
                }
                if (target == address(0)) revert NotDeployed(salts[i]);
            }
            CwiaDepositForwarder(payable(target)).sweep(tokens, masks[i] & ~DEPLOY);
        }
    }

    /// The creation code of `parent`'s clone: the EIP-1167 creation code with a runtime of 65 bytes (0x41)
    /// instead of 45, the proxy of `implementation`, then `parent`.
    function _cloneCode(address parent) private view returns (bytes memory) {
        return abi.encodePacked(
            hex"3d604180600a3d3981f3363d3d373d3d3d363d73",
            implementation,
            hex"5af43d82803e903d91602b57fd5bf3",
            parent
        );
    }

    function _create2Address(bytes32 salt, bytes32 codeHash) private view returns (address) {
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, codeHash)))));
    }
}
