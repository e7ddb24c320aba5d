#!/bin/bash
# x402 payments (`POST …/x402/authorize`) with and without the check against the chain, interleaved:
#   loadtest/onchain.sh [ROUNDS]
# Starts a local hardhat chain with the test token (tests/chain/chain.mjs; npm installs hardhat and solc-js
# into target/tmp once), and for each side a release server on a fresh SQLite database whose one agent's
# wallet holds a million tokens on that chain. The "chain" side sets SPENDGATE_CHAIN_RPC, so each payment reads
# the wallet's balance (eth_call) and what it has signed and not seen settle before signing, one payment per
# wallet at a time. RATE (default 200/s) and SECONDS_EACH (10) may be set. Prints each run's medians and CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
key=sgk_bench_0123456789abcdef0123456789abcdef
master=c3BlbmRnYXRlLXRlc3QtbWFzdGVyLWtleS0zMi1ieXQ=
token=0x5FbDB2315678afecb367f032d93F642f64180aa3
pay_to=0x209693Bc6afc0C5328bA36FaF03C514EF312287C
loadtest="$root/target/release/loadtest"
spendgate="$root/target/release/spendgate"
dir=$(mktemp -d)
chain_pid= pid=
trap 'kill $chain_pid $pid 2>/dev/null; rm -rf "$dir"' EXIT

node_home="$root/target/tmp/node-hardhat_2_29_1+solc_0_8_37"
if [ ! -d "$node_home/node_modules" ]; then
  mkdir -p "$node_home"
  echo '{"private": true, "type": "module"}' >"$node_home/package.json"
  (cd "$node_home" && npm install --silent --no-audit --no-fund --save-exact hardhat@2.29.1 solc@0.8.37)
fi
cp "$root/tests/chain/chain.mjs" "$node_home/"
(cd "$node_home" && SOURCE="$root/tests/chain/TestUSD.sol" node chain.mjs >"$dir/chain" 2>/dev/null) &
chain_pid=$!
for _ in $(seq 1 100); do [ -s "$dir/chain" ] && break; sleep 0.2; done
rpc=$(sed 's/.*"rpc":"\([^"]*\)".*/\1/' "$dir/chain")
minter=$(sed 's/.*"minter":"\([^"]*\)".*/\1/' "$dir/chain")

rpc_call() {
  curl -sf "$rpc" -H 'content-type: application/json' -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}"
}
api() {
  curl -sf "http://127.0.0.1:8080$2" -X "$1" -H "Authorization: Bearer $key" -H 'content-type: application/json' ${3:+-d "$3"}
}
# A v2 PAYMENT-REQUIRED for 0.01 of the test token, to the payTo the agent's policy names.
required=$(printf '{"x402Version":2,"resource":{"url":"https://api.example.com/x"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"%s","payTo":"%s","maxTimeoutSeconds":60,"extra":{"name":"Test USD","version":"1"}}]}' "$token" "$pay_to" | base64 -w0)
body="{\"url\": \"https://api.example.com/x\", \"payment_required\": \"$required\"}"

for round in $(seq 1 "${1:-3}"); do
  for side in plain chain; do
    rm -rf "$dir/db"
    extra=()
    [ $side = chain ] && extra=(SPENDGATE_CHAIN_RPC="eip155:84532=$rpc" SPENDGATE_CHAIN_CONFIRMATIONS=1)
    env SPENDGATE_LOG=warn SPENDGATE_FX_URL= SPENDGATE_BOOTSTRAP_ADMIN_KEY=$key SPENDGATE_MASTER_KEY=$master \
      SPENDGATE_X402_ASSETS="eip155:84532=$token|Test USD|1" SPENDGATE_DATABASE_URL="sqlite://$dir/db/sg.db" \
      "${extra[@]}" "$spendgate" serve >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.2; done
    agent=$(api POST /v1/agents '{"name": "bench"}' | sed 's/.*"id":"\(agt_[^"]*\)".*/\1/')
    api POST /v1/treasury/deposits '{"id": "bench", "amount": 100000000000, "currency": "USD"}' >/dev/null
    api POST "/v1/agents/$agent/fund" '{"id": "bench", "amount": 100000000000, "currency": "USD"}' >/dev/null
    api PUT "/v1/agents/$agent/policy" "{\"x402\": {\"pay_to\": [\"eip155:84532:$pay_to\"]}}" >/dev/null
    wallet=$(api GET "/v1/agents/$agent/wallet" | sed 's/.*"address":"\(0x[^"]*\)".*/\1/')
    # mint(wallet, 10^12): a million tokens.
    data="0x40c10f19$(printf '%064s' "${wallet#0x}" | tr ' ' 0)$(printf '%064x' 1000000000000)"
    rpc_call eth_sendTransaction "[{\"from\": \"$minter\", \"to\": \"$token\", \"data\": \"$data\"}]" >/dev/null
    echo "== round $round: $side"
    SPENDGATE_API_KEY=$key "$loadtest" --server-pid $pid --path "/v1/agents/$agent/x402/authorize" --body "$body" \
      --header 'Idempotency-Key: {run}-{n}' --rate "${RATE:-200}" --seconds "${SECONDS_EACH:-10}" --rounds 1 \
      2>/dev/null | grep -E "median|CPU|status|error" || true
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
