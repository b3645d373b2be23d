// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

/// @title For measurement only: what every deposit address of `CwiaDepositFactory` runs.
/// @notice Not part of ethkms: the clone-with-immutable-args alternative to `DepositForwarder` that
/// `cargo xtask bench deposits` measures beside it. A deposit address is an EIP-1167 proxy of this one
/// contract (one for all parents) with its parent's address appended to its runtime code: 65 bytes, the 45
/// of the proxy then the 20 of the parent, read back from the clone's code on every call. Otherwise it does
/// what `DepositForwarder` does: ether sent to a deposit address goes on to the parent at once; ether that
/// arrived before the clone existed, and tokens, move only to the parent, and only when the factory or the
/// parent asks.
contract CwiaDepositForwarder {
    /// The factory that deployed this contract and deploys its clones: it sweeps them in batches.
    address public immutable factory;
    /// This contract's own address: it is no deposit address and has no parent.
    address private immutable self;

    /// Where a clone holds its parent: after the 45 bytes of the proxy.
    uint256 private constant PARENT_OFFSET = 45;

    /// Ether arrived at a deposit address (and went on to the parent).
    event Deposited(address indexed from, uint256 value);

    /// Neither the factory nor the parent asked.
    error NotAllowed();
    /// The parent did not take the ether.
    error EtherNotSent();
    /// `token` did not move the balance (its call failed or answered `false`).
    error TokenNotSent(address token);
    /// Called on this contract itself, not through a clone.
    error NotAClone();

    constructor() {
        factory = msg.sender;
        self = address(this);
    }

    /// Where every asset of this deposit address goes.
    function parent() external view returns (address payable) {
        return _parent();
    }

    /// Ether sent to a deposit address: recorded and passed on to the parent, with whatever it held.
    receive() external payable {
        emit Deposited(msg.sender, msg.value);
        _sendEther(_parent());
    }

    /// Sends the ether balance, and the balance of every token of `tokens` whose bit is set in `mask`
    /// (bit `i` for `tokens[i]`), to the parent. Only the factory (in a batch) or the parent may ask.
    function sweep(address[] calldata tokens, uint256 mask) external {
        address payable to = _parent();
        if (msg.sender != factory && msg.sender != to) revert NotAllowed();
        if (address(this).balance != 0) _sendEther(to);
        for (uint256 i = 0; i < tokens.length && mask >> i != 0; ++i) {
            if ((mask >> i) & 1 != 0) _sendToken(tokens[i], to);
        }
    }

    /// The parent, from the running clone's code.
    function _parent() private view returns (address payable to) {
        if (address(this) == self) revert NotAClone();
        assembly ("memory-safe") {
            mstore(0, 0)
            extcodecopy(address(), 12, PARENT_OFFSET, 20)
            to := mload(0)
        }
    }

    function _sendEther(address payable to) private {
        (bool sent,) = to.call{value: address(this).balance}("");
        if (!sent) revert EtherNotSent();
    }

    /// Moves the whole balance of `token`, as `DepositForwarder` does.
    function _sendToken(address token, address to) private {
        (bool read, bytes memory balance) = token.staticcall(abi.encodeWithSelector(0x70a08231, address(this)));
        if (!read || balance.length < 32) revert TokenNotSent(token);
        uint256 amount = abi.decode(balance, (uint256));
        if (amount == 0) return;
        (bool sent, bytes memory answer) = token.call(abi.encodeWithSelector(0xa9059cbb, to, amount));
        if (!sent || (answer.length != 0 && (answer.length < 32 || !abi.decode(answer, (bool))))) {
            revert TokenNotSent(token);
        }
    }
}
