// Signs eth_signTypedData_v4 JSON with ethers v6, an implementation nobody in this project wrote (run with
// NODE_PATH pointing at node_modules). Reads a JSON list of {"name", "private_key", "json"} on standard
// input; prints a JSON list of {"name", "address", "signature"} or {"name", "error"}, one per case, in order.
const { Wallet } = require('ethers');

async function sign(c) {
  const wallet = new Wallet(c.private_key);
  const typed = JSON.parse(c.json);
  const types = { ...typed.types };
  delete types.EIP712Domain; // ethers derives the domain type itself
  return { address: wallet.address, signature: await wallet.signTypedData(typed.domain, types, typed.message) };
}

let input = '';
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', async () => {
  const results = [];
  for (const c of JSON.parse(input)) {
    try {
      results.push({ name: c.name, ...(await sign(c)) });
    } catch (error) {
      results.push({ name: c.name, error: String(error) });
    }
  }
  console.log(JSON.stringify(results));
});
