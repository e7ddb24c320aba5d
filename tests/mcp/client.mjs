// Drives spendgate's MCP server with the official TypeScript SDK, as an agent framework would:
// connects over Streamable HTTP or stdio (`spendgate mcp`), lists the tools, makes the calls in
// MCP_CALLS in order, and prints what it saw as JSON.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const { SPENDGATE_URL: url, SPENDGATE_API_KEY: key, MCP_TRANSPORT: mode, SPENDGATE_BIN: bin } = process.env;
const calls = JSON.parse(process.env.MCP_CALLS);

const transport =
  mode === "stdio"
    ? new StdioClientTransport({
        command: bin,
        args: ["mcp"],
        env: { SPENDGATE_URL: url, SPENDGATE_API_KEY: key, PATH: process.env.PATH },
        stderr: "inherit",
      })
    : new StreamableHTTPClientTransport(new URL(`${url}/mcp`), {
        requestInit: { headers: { Authorization: `Bearer ${key}` } },
      });

const client = new Client({ name: "spendgate-test-agent", version: "1.0.0" });
await client.connect(transport);
const { tools } = await client.listTools();
const results = [];
// An argument {"$from": i, "path": "a.b"} is that field of the i-th call's result.
const resolve = (value) =>
  value && typeof value === "object" && "$from" in value
    ? value.path.split(".").reduce((v, k) => v?.[k], results[value.$from])
    : value;
for (const call of calls) {
  const args = Object.fromEntries(Object.entries(call.arguments).map(([k, v]) => [k, resolve(v)]));
  try {
    results.push(await client.callTool({ name: call.name, arguments: args }));
  } catch (e) {
    results.push({ protocolError: String(e.message ?? e) });
  }
}
console.log(JSON.stringify({ server: client.getServerVersion(), instructions: client.getInstructions(), tools, results }));
await client.close();
