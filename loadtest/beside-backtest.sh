#!/bin/bash
# The decision path with backtests running beside it: one release server on a fresh SQLite database (or a
# PostgreSQL schema with POSTGRES=<url>); a first load run records history; then interleaved rounds of the load
# alone and the load with backtests replaying that history back to back (the recorded rules over every agent of
# it), at the same rate. Prints each run's medians, CPU per request, and how many decisions the backtests replayed.
#   loadtest/beside-backtest.sh [ROUNDS]      RATE (default 2000/s), SECONDS_EACH (20)
set -euo pipefail
cd "$(dirname "$0")/.."
key=sgk_bench_0123456789abcdef0123456789abcdef
secret=whsec_bench_0123456789abcdef
base=http://127.0.0.1:8080
dir=$(mktemp -d)
pid= replayer=
trap 'kill $replayer $pid 2>/dev/null; rm -rf "$dir"' EXIT
url="sqlite://$dir/db/sg.db"
if [ -n "${POSTGRES:-}" ]; then
  schema="beside_$$"
  PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
  url="$POSTGRES?options=-csearch_path%3D$schema"
fi
SPENDGATE_WEBHOOK_SECRET=$secret SPENDGATE_LOG=warn SPENDGATE_FX_URL= SPENDGATE_BOOTSTRAP_ADMIN_KEY=$key \
  SPENDGATE_DATABASE_URL="$url" target/release/spendgate serve >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do curl -sf $base/healthz >/dev/null && break; sleep 0.2; done
load() {
  SPENDGATE_API_KEY=$key target/release/loadtest --server-pid $pid --secret $secret --agents 100 --cards 1000 \
    --rate "${RATE:-2000}" --seconds "$1" --rounds 1 2>/dev/null
}
echo "== history: $(load 30 | grep -c . || true) lines of load output"
api() { curl -sf -H "Authorization: Bearer $key" -H 'content-type: application/json' "$@"; }
targets=$(api "$base/v1/agents?limit=100" | python3 -c 'import json, sys; print(json.dumps([a["id"] for a in json.load(sys.stdin)["data"]]))')
spec="{\"targets\": $targets, \"policy\": \"recorded\"}"
# Backtests one after another until killed; each finished one's decision count is appended to a file.
replay_forever() {
  while :; do
    id=$(api -X POST "$base/v1/backtests" -d "$spec" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
    while :; do
      b=$(api "$base/v1/backtests/$id")
      status=$(echo "$b" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
      [ "$status" = running ] || break
      sleep 0.2
    done
    echo "$b" | python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["report"]["decisions"], b["report"]["changed"])' >>"$1"
  done
}
for round in $(seq 1 "${1:-3}"); do
  echo "== round $round: alone"
  load "${SECONDS_EACH:-20}" | grep -E "median|CPU|check"
  echo "== round $round: beside backtests"
  replay_forever "$dir/replayed.$round" &
  replayer=$!
  load "${SECONDS_EACH:-20}" | grep -E "median|CPU|check"
  kill $replayer 2>/dev/null; wait $replayer 2>/dev/null || true
  replayer=
  awk '{n++; d+=$1; c+=$2} END {printf "   backtests finished beside it: %d, %d decisions replayed, %d changed\n", n, d, c}' "$dir/replayed.$round" 2>/dev/null || echo "   no backtest finished"
done
