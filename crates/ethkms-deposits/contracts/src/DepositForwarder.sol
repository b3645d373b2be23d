// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.28;

/// @title The logic behind the deposit addresses of one parent (a treasury).
/// @notice Every deposit address is an EIP-1167 clone that delegates here; this contract has no storage
/// and its two addresses are immutable, so a clone needs no initialisation and nobody can change where its
/// funds go. Ether sent to a deposit address goes on to the parent at once; ether that arrived before the
/// clone existed, and tokens, move only to the parent, and only when the factory or the parent asks.
contract DepositForwarder {
    /// Where every asset of a deposit address goes.
    address payable public immutable parent;
    /// The factory that deployed this contract and its clones: it sweeps them in batches.
    address public immutable factory;

    /// Ether arrived at a deposit address (and went on to the parent).
    event Deposited(address indexed from, uint256 value);

    /// Neither the factory nor the parent asked.
    error NotAllowed();
    /// The parent did not take the ether.
    error EtherNotSent();
    /// `token` did not move the balance (its call failed or answered `false`).
    error TokenNotSent(address token);

    constructor(address payable parent_) {
        parent = parent_;
        factory = msg.sender;
    }

    /// Ether sent to a deposit address: recorded and passed on to the parent, with whatever it held.
    receive() external payable {
        emit Deposited(msg.sender, msg.value);
        _sendEther();
    }

    /// Sends the ether balance, and the balance of every token of `tokens` whose bit is set in `mask`
    /// (bit `i` for `tokens[i]`), to the parent. Only the factory (in a batch) or the parent may ask.
    function sweep(address[] calldata tokens, uint256 mask) external {
        if (msg.sender != factory && msg.sender != parent) revert NotAllowed();
        if (address(this).balance != 0) _sendEther();
        for (uint256 i = 0; i < tokens.length && mask >> i != 0; ++i) {
            if ((mask >> i) & 1 != 0) _sendToken(tokens[i]);
        }
    }

    function _sendEther() private {
        (bool sent,) = parent.call{value: address(this).balance}("");
        if (!sent) revert EtherNotSent();
    }

    /// Moves the whole balance of `token`; a token that answers nothing (as USDT does) is taken at its call's
    /// word, and one that answers `false` or fails stops the sweep.
    function _sendToken(address token) private {
        (bool read, bytes memory balance) = token.staticcall(abi.encodeWithSelector(0x70a08231, address(this)));
        if (!read || balance.length < 32) revert TokenNotSent(token);
        uint256 amount = abi.decode(balance, (uint256));
        if (amount == 0) return;
        (bool sent, bytes memory answer) = token.call(abi.encodeWithSelector(0xa9059cbb, parent, amount));
        if (!sent || (answer.length != 0 && (answer.length < 32 || !abi.decode(answer, (bool))))) {
            revert TokenNotSent(token);
        }
    }
}
