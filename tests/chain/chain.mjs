// A local chain for tests: a hardhat node (chain id 84532, as Base Sepolia's) with the test token
// of $SOURCE compiled here by solc-js (no compiler download) and deployed by the first account.
// Prints {"rpc", "token", "minter"} once listening, then serves until it is killed.
import { createRequire } from "node:module";
import fs from "node:fs";

const require = createRequire(import.meta.url);
fs.writeFileSync(
  "hardhat.config.cjs",
  "module.exports = { networks: { hardhat: { chainId: 84532 } } };\n",
);
process.env.HARDHAT_CONFIG = "hardhat.config.cjs";
const solc = require("solc");
const hre = require("hardhat");
const { TASK_NODE_CREATE_SERVER } = require("hardhat/builtin-tasks/task-names");

const input = {
  language: "Solidity",
  sources: { "TestUSD.sol": { content: fs.readFileSync(process.env.SOURCE, "utf8") } },
  settings: { outputSelection: { "*": { "*": ["evm.bytecode.object"] } } },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const bytecode = "0x" + output.contracts["TestUSD.sol"].TestUSD.evm.bytecode.object;

const provider = hre.network.provider;
const [minter] = await provider.request({ method: "eth_accounts" });
const hash = await provider.request({ method: "eth_sendTransaction", params: [{ from: minter, data: bytecode }] });
const receipt = await provider.request({ method: "eth_getTransactionReceipt", params: [hash] });
const server = await hre.run(TASK_NODE_CREATE_SERVER, { hostname: "127.0.0.1", port: 0, provider });
const { port } = await server.listen();
console.log(JSON.stringify({ rpc: `http://127.0.0.1:${port}`, token: receipt.contractAddress, minter }));
