#!/usr/bin/env bash
# The kill -9 soak at full length: tests/chaos.rs (the test CI runs short) on a
# release build, with payments through the fake Stripe and its faults. Prints one
# line per cycle and a summary (writes per cycle, gateway charges and refunds
# checked, duration, load); the whole output goes to target/soak.log.
#
#   scripts/soak.sh [CYCLES]      default 100; CHAOS_SEED=N picks another run
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cycles=${1:-${JETWAY_SOAK_CYCLES:-100}}
log=${CARGO_TARGET_DIR:-$root/target}/soak.log
mkdir -p "$(dirname "$log")"
echo "== building (release)" >&2
nice cargo test --release --test chaos --no-run 2>&1 | tail -1 >&2
echo "== soak: $cycles kill -9 cycles, log in $log" >&2
set +e
JETWAY_SOAK_CYCLES=$cycles nice cargo test --release --test chaos -- --nocapture >"$log" 2>&1
status=$?
set -e
grep -E '^(chaos cycle|soak summary)' "$log" || true
if [[ $status -ne 0 ]]; then
  grep -E -A40 '^thread .* panicked' "$log" >&2 || tail -40 "$log" >&2
  echo "== soak FAILED (see $log)" >&2
fi
exit $status
