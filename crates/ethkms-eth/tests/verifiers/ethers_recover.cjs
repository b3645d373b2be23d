// Recovers signers with ethers v6, an implementation nobody in this project wrote.
// Same input and output as eth_account_recover.py (run with NODE_PATH pointing at node_modules).
const { Transaction, verifyMessage, verifyTypedData } = require('ethers');

function recover(c) {
  if (c.kind === 'tx') return Transaction.from(c.raw).from;
  if (c.kind === 'message') return verifyMessage(c.message, c.signature);
  if (c.kind === 'typed') {
    const typed = JSON.parse(c.json);
    const types = { ...typed.types };
    delete types.EIP712Domain; // ethers derives the domain type itself
    return verifyTypedData(typed.domain, types, typed.message, c.signature);
  }
  throw new Error(`unknown kind ${c.kind}`);
}

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => {
  const results = JSON.parse(input).map((c) => {
    try {
      return { name: c.name, address: recover(c) };
    } catch (error) {
      return { name: c.name, error: String(error) };
    }
  });
  console.log(JSON.stringify(results));
});
