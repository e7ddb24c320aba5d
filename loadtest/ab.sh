#!/bin/bash
# Two builds of spendgate, one after the other, each on a fresh SQLite database at the same rate:
#   loadtest/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
# RATE (default 5000/s) and SECONDS_EACH (20) may be set; POSTGRES=<url> runs each on a fresh schema of that
# PostgreSQL database instead (psql makes and drops it). Prints each run's medians and CPU per request.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY [ROUNDS]" >&2; exit 2; }
key=sgk_bench_0123456789abcdef0123456789abcdef
secret=whsec_bench_0123456789abcdef
loadtest="$(dirname "$0")/../target/release/loadtest"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for round in $(seq 1 "${3:-3}"); do
  for binary in "$1" "$2"; do
    rm -rf "$dir/db"
    url="sqlite://$dir/db/sg.db"
    if [ -n "${POSTGRES:-}" ]; then
      runs=$((${runs:-0} + 1))
      schema="ab_$$_$runs"
      PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
      url="$POSTGRES?options=-csearch_path%3D$schema"
    fi
    SPENDGATE_WEBHOOK_SECRET=$secret SPENDGATE_LOG=warn SPENDGATE_FX_URL= SPENDGATE_BOOTSTRAP_ADMIN_KEY=$key \
      SPENDGATE_DATABASE_URL="$url" "$binary" serve >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.2; done
    echo "== round $round: $binary"
    SPENDGATE_API_KEY=$key "$loadtest" --server-pid $pid --secret $secret --agents 100 --cards 1000 \
      --rate "${RATE:-5000}" --seconds "${SECONDS_EACH:-20}" --rounds 1 2>/dev/null | grep -E "median|CPU|check"
    kill $pid
    wait $pid 2>/dev/null || true
    if [ -n "${POSTGRES:-}" ]; then PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES" -c "DROP SCHEMA $schema CASCADE"; fi
  done
done
