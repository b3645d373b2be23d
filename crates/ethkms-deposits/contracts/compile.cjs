// Compiles the contracts with the solc of the npm package `solc` (pinned by `cargo xtask`) into
// `artifacts/`: for each contract its ABI, creation and runtime bytecode, and the compiler that made them.
// The contracts of `alternatives/` (designs measured against ours by `cargo xtask bench deposits`, never
// deployed by ethkms) go to `artifacts/alternatives/`.
// Usage: node compile.cjs OUT_DIR   (NODE_PATH names the node_modules holding `solc`).
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const root = __dirname;
const out = process.argv[2];
if (!out) {
  console.error('usage: node compile.cjs OUT_DIR');
  process.exit(2);
}
const sources = {};
for (const dir of ['src', 'test', 'alternatives']) {
  for (const file of fs.readdirSync(path.join(root, dir)).filter((f) => f.endsWith('.sol')).sort()) {
    sources[`${dir}/${file}`] = { content: fs.readFileSync(path.join(root, dir, file), 'utf8') };
  }
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    // Paris: no PUSH0, so the same bytecode deploys on chains that lack Shanghai's opcodes.
    evmVersion: 'paris',
    optimizer: { enabled: true, runs: 1000000 },
    // No metadata hash: the bytecode depends on the sources and settings alone, not on file paths.
    metadata: { bytecodeHash: 'none', appendCBOR: false },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: (p) => ({ error: `no import ${p}` }) }));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const message of output.errors || []) console.error(message.formattedMessage);
if (errors.length) process.exit(1);
fs.mkdirSync(out, { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts)) {
  const dir = file.startsWith('alternatives/') ? path.join(out, 'alternatives') : out;
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, contract] of Object.entries(contracts)) {
    const artifact = {
      contract: name,
      source: file,
      compiler: `solc ${solc.version()}`,
      settings: { evmVersion: input.settings.evmVersion, optimizer: input.settings.optimizer },
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
      deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
    };
    fs.writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
  }
}
