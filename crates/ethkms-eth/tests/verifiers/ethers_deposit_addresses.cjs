// Derives deposit addresses with ethers v6, an implementation nobody in this project wrote, for the tests of
// crates/ethkms-deposits (run with NODE_PATH pointing at node_modules).
// Reads {"factory", "parent", "artifact": path of DepositForwarder.json, "references": [string, ...]} on
// standard input and prints {"forwarder", "addresses": [address, ...]} (EIP-55, in the order given):
//   forwarder = CREATE2(factory, salt = parent as bytes32, keccak256(creation code ++ abi.encode(parent)))
//   address   = CREATE2(factory, salt = keccak256(utf8(reference)), keccak256(EIP-1167 clone of forwarder))
'use strict';
const fs = require('fs');
const { AbiCoder, concat, getAddress, getCreate2Address, keccak256, toUtf8Bytes, zeroPadValue } = require('ethers');

// EIP-1167's creation code, around the implementation's address (https://eips.ethereum.org/EIPS/eip-1167).
const CLONE_PREFIX = '0x3d602d80600a3d3981f3363d3d373d3d3d363d73';
const CLONE_SUFFIX = '0x5af43d82803e903d91602b57fd5bf3';

function derive({ factory, parent, artifact, references }) {
  const { bytecode } = JSON.parse(fs.readFileSync(artifact, 'utf8'));
  const creation = concat([bytecode, AbiCoder.defaultAbiCoder().encode(['address'], [parent])]);
  const forwarder = getCreate2Address(factory, zeroPadValue(parent, 32), keccak256(creation));
  const cloneHash = keccak256(concat([CLONE_PREFIX, forwarder, CLONE_SUFFIX]));
  const addresses = references.map((reference) =>
    getCreate2Address(factory, keccak256(toUtf8Bytes(reference)), cloneHash),
  );
  return { forwarder: getAddress(forwarder), addresses };
}

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => console.log(JSON.stringify(derive(JSON.parse(input)))));
