#!/bin/bash
# Two builds of spendgate, one after the other, each on a fresh SQLite database at the same rate:
#   loadtest/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
# RATE (default 5000/s) and SECONDS_EACH (20) may be set; POSTGRES=<url> runs each on a fresh schema of that
# PostgreSQL database instead (psql makes and drops it). HOOKS=after (or both) subscribes a local endpoint
# to every authorization event in the AFTER run (or in both), so the same binary measures the webhook
# outbox's cost; the run then waits for the outbox to deliver what was queued and prints how long that took.
# Prints each run's medians and CPU per request.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY [ROUNDS]" >&2; exit 2; }
key=sgk_bench_0123456789abcdef0123456789abcdef
secret=whsec_bench_0123456789abcdef
loadtest="$(dirname "$0")/../target/release/loadtest"
dir=$(mktemp -d)
sink_pid= pid=
# A run cut short leaves no server or endpoint behind to answer the next one.
trap 'kill $sink_pid $pid 2>/dev/null; rm -rf "$dir"' EXIT
if [ -n "${HOOKS:-}" ]; then
  # An endpoint that answers every POST with 204 at once.
  "$loadtest" --sink 127.0.0.1:8099 &
  sink_pid=$!
fi
for round in $(seq 1 "${3:-3}"); do
  for side in before after; do
    binary=$1
    [ $side = after ] && binary=$2
    rm -rf "$dir/db"
    url="sqlite://$dir/db/sg.db"
    if [ -n "${POSTGRES:-}" ]; then
      runs=$((${runs:-0} + 1))
      schema="ab_$$_$runs"
      PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
      url="$POSTGRES?options=-csearch_path%3D$schema"
    fi
    SPENDGATE_WEBHOOK_PRIVATE_DESTINATIONS=127.0.0.1:8099 SPENDGATE_WEBHOOK_SECRET=$secret SPENDGATE_LOG=warn SPENDGATE_FX_URL= SPENDGATE_BOOTSTRAP_ADMIN_KEY=$key \
      SPENDGATE_DATABASE_URL="$url" "$binary" serve >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.2; done
    hooked=
    if [ "${HOOKS:-}" = both ] || { [ "${HOOKS:-}" = after ] && [ $side = after ]; }; then
      hooked=" (an endpoint subscribed)"
      curl -sf -X POST http://127.0.0.1:8080/v1/webhook-endpoints -H "Authorization: Bearer $key" \
        -H 'content-type: application/json' \
        -d '{"url": "http://127.0.0.1:8099/hook", "events": ["authorization.approved", "authorization.declined"]}' >/dev/null
    fi
    echo "== round $round: $binary$hooked"
    SPENDGATE_API_KEY=$key "$loadtest" --server-pid $pid --secret $secret --agents 100 --cards 1000 \
      --rate "${RATE:-5000}" --seconds "${SECONDS_EACH:-20}" --rounds 1 2>/dev/null | grep -E "median|CPU|check"
    if [ -n "$hooked" ]; then
      start=$(date +%s%N)
      for _ in $(seq 1 600); do
        backlog=$(curl -sf "http://127.0.0.1:8080/metrics" |
          awk '/^spendgate_webhook_(deliveries_pending|chains_behind) /{n++; s+=$2} END{print (n == 2 ? s : -1)}' || true)
        [ "$backlog" = 0 ] && break
        sleep 0.5
      done
      echo "   outbox: every delivery made $(( ($(date +%s%N) - start) / 1000000 )) ms after the load ended"
    fi
    kill $pid
    wait $pid 2>/dev/null || true
    if [ -n "${POSTGRES:-}" ]; then PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES" -c "DROP SCHEMA $schema CASCADE"; fi
  done
done
