#!/usr/bin/env bash
# Smoke run of every jetway-load scenario with tiny numbers against a spawned Jetway
# (debug build), so the load tool never rots. Fails if a scenario errors, loses or
# reorders a push, oversells, or leaves seats unsold. The real benchmarks are in
# docs/benchmarks.md. Takes well under two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p jetway -p jetway-load -p bare-broadcast --bins --features jetway/etcd
T="${CARGO_TARGET_DIR:-target}/debug"
L="$T/jetway-load"
# the server and the tool each hold one descriptor per connection
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

common=(--spawn "$T/jetway" --quiet --timeout 120)
failed=0
run() {
    local name=$1
    shift
    echo "== bench-smoke: $name"
    if ! "$L" "$@"; then
        echo "bench-smoke: $name FAILED"
        failed=1
    fi
}

run connections connections "${common[@]}" -n 300 --accounts 4 --hold 1
run fanout fanout "${common[@]}" -w 50 --writers 2 --rate 40 -d 2 --warmup 0.5 \
    --reference "$T/bare-broadcast"
run booking booking "${common[@]}" -c 8 -d 2
# a connection over the server's request rate waits and sends again (no hold is left
# unpaid, which would end in the open-holds cap); the run must have been throttled
echo "== bench-smoke: booking-throttled"
if ! "$L" booking "${common[@]}" -c 4 -d 3 --server-arg=--rate-limit=5 \
    --server-arg=--rate-burst=2 --json |
    python3 -c 'import json, sys; r = json.load(sys.stdin); print(r); sys.exit(0 if r.get("ok") and r.get("throttled", 0) > 0 and not r.get("errors") else 1)'; then
    echo "bench-smoke: booking-throttled FAILED"
    failed=1
fi
run booking-bare booking --spawn-bare "$T/bare-broadcast" --quiet --timeout 120 -c 8 -d 2
run stampede stampede "${common[@]}" -n 400 --accounts 48
run stampede-own-accounts stampede "${common[@]}" -n 400 --one-account-per-user \
    --server-arg=--insecure-fast-hashing --losers-stay
run login-storm login-storm "${common[@]}" -w 50 --writers 2 --rate 40 -l 8 -d 2 --warmup 0.5

if [ "$failed" -ne 0 ]; then
    echo "bench-smoke: FAILED"
    exit 1
fi
echo "bench-smoke: all scenarios passed"
