// Compiles TestToken.sol exactly as committed: solc 0.8.37, optimizer 200 runs, EVM version cancun.
const solc = require('solc');
const fs = require('fs');
const input = {
  language: 'Solidity',
  sources: { 'TestToken.sol': { content: fs.readFileSync('TestToken.sol', 'utf8') } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'cancun',
    outputSelection: { '*': { '*': ['evm.bytecode.object', 'abi'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
for (const error of output.errors || []) console.error(error.formattedMessage);
const contract = output.contracts['TestToken.sol'].TestToken;
fs.writeFileSync('TestToken.bin', contract.evm.bytecode.object + '\n');
fs.writeFileSync('TestToken.abi.json', JSON.stringify(contract.abi, null, 1) + '\n');
console.log('solc', solc.version(), 'bytecode bytes', contract.evm.bytecode.object.length / 2);
