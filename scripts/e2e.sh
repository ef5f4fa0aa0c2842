#!/usr/bin/env bash
# Browser end-to-end tests for the Jetway app (/), display (/display.html) and
# departures board (/board.html):
# headless Chromium (Debian's package) driven by playwright-core, against a real
# jetway server started by the tests themselves (tests/e2e/harness.js).
#
# Installs what is missing on a fresh Debian machine (as root): chromium via apt,
# node_modules via npm ci. Builds the server unless JETWAY_BIN is set, and the fake
# Stripe (tools/fake-stripe) next to it unless FAKE_STRIPE_BIN is set.
#
#   scripts/e2e.sh                 # all scenarios
#   scripts/e2e.sh flow.test.js    # selected files (relative to tests/e2e)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
e2e=$root/tests/e2e
export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ ! -x $CHROMIUM_PATH ]]; then
  echo "e2e: installing chromium (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq chromium >/dev/null
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e: installing nodejs and npm (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq nodejs npm >/dev/null
fi

# again whenever package-lock.json changed since the last install
if [[ ! -d $e2e/node_modules/playwright-core || $e2e/package-lock.json -nt $e2e/node_modules/.package-lock.json ]]; then
  echo "e2e: npm ci in tests/e2e" >&2
  (cd "$e2e" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [[ -z ${JETWAY_BIN:-} ]]; then
  echo "e2e: building jetway (cargo build --release --bin jetway)" >&2
  (cd "$root" && cargo build --release --bin jetway)
  target_dir=${CARGO_TARGET_DIR:-$root/target}
  export JETWAY_BIN=$target_dir/release/jetway
fi
# the fake Stripe of payment-action.test.js (3-D Secure), next to the server binary
if [[ -z ${FAKE_STRIPE_BIN:-} ]]; then
  bin_dir=$(dirname "$JETWAY_BIN")
  if [[ ! -x $bin_dir/fake-stripe ]]; then
    profile=release
    [[ $(basename "$bin_dir") == debug ]] && profile=dev
    echo "e2e: building fake-stripe (cargo build --profile $profile -p fake-stripe)" >&2
    (cd "$root" && cargo build --profile "$profile" -p fake-stripe --bin fake-stripe)
  fi
  export FAKE_STRIPE_BIN=$bin_dir/fake-stripe
fi
export JETWAY_STATIC_DIR=${JETWAY_STATIC_DIR:-$root/static}

cd "$e2e"
if [[ $# -gt 0 ]]; then files=("$@"); else files=(*.test.js); fi
echo "e2e: JETWAY_BIN=$JETWAY_BIN FAKE_STRIPE_BIN=$FAKE_STRIPE_BIN static=$JETWAY_STATIC_DIR chromium=$CHROMIUM_PATH" >&2
# One file at a time: each file runs its own server(s) and browser; the machine is small.
exec node --test --test-concurrency=1 --test-reporter=tap "${files[@]}"
