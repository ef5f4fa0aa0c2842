#!/bin/bash
# Quiet-box A/B of two release builds, the scenarios of docs/benchmarks.md's "Where we
# stand" tables, each alternating base and new, with the NEW build's load tool for both.
#   scripts/bench-ab.sh BASE_DIR NEW_DIR OUT_DIR
# BASE_DIR holds `jetway`; NEW_DIR holds `jetway`, `jetway-load` and `bare-broadcast`
# (copies of target/release/ at the two commits). Writes one JSON per run and a log of
# the load average to OUT_DIR. Takes ~20 minutes; run it with nothing else on the box.
set -u
B=$1 N=$2 OUT=$3
mkdir -p "$OUT" && cd "$OUT" || exit 1
ulimit -n "$(ulimit -Hn)"
L=$N/jetway-load
bin() { [ "$1" = base ] && echo "$B/jetway" || echo "$N/jetway"; }
note() { echo "$* load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)" >> log; }
note start
for i in 1 2 3; do
  for v in base new; do
    S=$(bin $v)
    timeout 120 $L booking --spawn "$S" -c 500 -d 10 --quiet --json > booking-$v-$i.json 2>/dev/null
    timeout 120 $L booking --spawn "$S" -c 500 -d 10 --quiet --json --server-arg=--insecure-fast-hashing > bookfast-$v-$i.json 2>/dev/null
    timeout 200 $L stampede --spawn "$S" -n 10000 --quiet --json > stampede-$v-$i.json 2>/dev/null
    timeout 300 $L stampede --spawn "$S" -n 10000 --one-account-per-user --server-arg=--insecure-fast-hashing --quiet --json > stampede-own-$v-$i.json 2>/dev/null
    note "booking+stampede $v $i"
  done
done
for v in base new; do
  S=$(bin $v)
  timeout 100 $L fanout --spawn "$S" -w 1 --writers 1 --rate 20 -d 5 --warmup 1 --quiet --json > lone-$v.json 2>/dev/null
  timeout 100 $L fanout --spawn "$S" -w 1000 --writers 1 --rate 20 -d 5 --warmup 1 --quiet --json > lone1k-$v.json 2>/dev/null
  for r in 1 2; do
    timeout 200 $L connections --spawn "$S" -n 10000 --no-auth --flight largest --quiet --json > conn10k-$v-$r.json 2>/dev/null
    timeout 200 $L connections --spawn "$S" -n 19000 --no-auth --flight largest --quiet --json > conn19k-$v-$r.json 2>/dev/null
  done
  note "lone+connections $v"
done
for r in 1 2; do
  for v in base new; do
    S=$(bin $v)
    timeout 300 $L fanout --spawn "$S" -w 1000 --rate 200 -d 10 --reference "$N/bare-broadcast" --runs 3 --quiet --json > fan1k-$v-$r.json 2>/dev/null
    note "fan1k $v $r"
  done
done
for v in base new; do
  S=$(bin $v)
  timeout 400 $L fanout --spawn "$S" -w 10000 --rate 50 -d 10 --reference "$N/bare-broadcast" --runs 3 --quiet --json > fan10k-$v.json 2>/dev/null
  note "fan10k $v"
done
note end
