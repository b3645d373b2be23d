// Uses the signing service the way a Node application would: ethers v6's JsonRpcProvider with a bearer
// token, and the service's account as a JsonRpcSigner (personal_sign, eth_signTypedData_v4,
// eth_sendTransaction). Prints what it got as one JSON object. Usage: node ethers_client.cjs URL TOKEN TO
const { JsonRpcProvider, FetchRequest, verifyMessage, verifyTypedData } = require('ethers');

async function main() {
  const [url, token, recipient] = process.argv.slice(2);
  const request = new FetchRequest(url);
  request.setHeader('Authorization', `Bearer ${token}`);
  const provider = new JsonRpcProvider(request, 31337, { staticNetwork: true, batchMaxCount: 1 });
  const accounts = await provider.send('eth_accounts', []);
  const signer = await provider.getSigner(accounts[0]);
  const message = 'hello from ethers';
  const messageSignature = await signer.signMessage(message);
  const domain = { name: 'ethkms', version: '1', chainId: 31337 };
  const types = { Note: [{ name: 'text', type: 'string' }] };
  const typedSignature = await signer.signTypedData(domain, types, { text: 'hi' });
  const transaction = await signer.sendTransaction({ to: recipient, value: 1000n });
  const receipt = await transaction.wait(1, 30000);
  console.log(JSON.stringify({
    accounts,
    messageSigner: verifyMessage(message, messageSignature),
    typedSigner: verifyTypedData(domain, types, { text: 'hi' }, typedSignature),
    hash: transaction.hash,
    status: receipt.status,
    from: receipt.from,
  }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
