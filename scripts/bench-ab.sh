#!/bin/bash
# Quiet-box A/B of two release builds, the scenarios of docs/benchmarks.md's "Where we
# stand" tables (booking, stampede and fan-out alternate base and new run by run; lone
# change and connections run base's block, then new's), with the NEW build's load tool for both.
#   scripts/bench-ab.sh BASE_DIR NEW_DIR OUT_DIR
# BASE_DIR holds `jetway`; NEW_DIR holds `jetway`, `jetway-load` and `bare-broadcast`
# (copies of target/release/ at the two commits). Writes one JSON per run and a log of
# the load average to OUT_DIR. Takes ~25 minutes; run it with nothing else on the box.
set -u
[ $# -eq 3 ] || { echo "usage: $0 BASE_DIR NEW_DIR OUT_DIR" >&2; exit 2; }
B=$(realpath -e "$1") && N=$(realpath -e "$2") || exit 1
for f in "$B/jetway" "$N/jetway" "$N/jetway-load" "$N/bare-broadcast"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done
mkdir -p "$3" && cd "$3" || exit 1
ulimit -n 20000 || { echo "needs an open-file limit of at least 20000" >&2; exit 1; }
L="$N/jetway-load"
bin() { [ "$1" = base ] && echo "$B/jetway" || echo "$N/jetway"; }
# each run's exit code goes to the log with the load average; its stderr to NAME.err
run() { local name=$1 t=$2; shift 2; timeout "$t" "$L" "$@" --quiet --json > "$name.json" 2> "$name.err"; echo "$name rc=$? load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)" >> log; }
note() { echo "$* load $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%T)" >> log; }
note start
for i in 1 2 3; do
  for v in base new; do
    S=$(bin $v)
    run booking-$v-$i 120 booking --spawn "$S" -c 500 -d 10
    run bookfast-$v-$i 120 booking --spawn "$S" -c 500 -d 10 --server-arg=--insecure-fast-hashing
    run stampede-$v-$i 200 stampede --spawn "$S" -n 10000
    run stampede-own-$v-$i 300 stampede --spawn "$S" -n 10000 --one-account-per-user --server-arg=--insecure-fast-hashing
    note "booking+stampede $v $i"
  done
done
for v in base new; do
  S=$(bin $v)
  run lone-$v 100 fanout --spawn "$S" -w 1 --writers 1 --rate 20 -d 5 --warmup 1
  run lone1k-$v 100 fanout --spawn "$S" -w 1000 --writers 1 --rate 20 -d 5 --warmup 1
  for r in 1 2; do
    run conn10k-$v-$r 200 connections --spawn "$S" -n 10000 --no-auth --flight largest
    run conn19k-$v-$r 200 connections --spawn "$S" -n 19000 --no-auth --flight largest
  done
  note "lone+connections $v"
done
for r in 1 2; do
  for v in base new; do
    S=$(bin $v)
    run fan1k-$v-$r 300 fanout --spawn "$S" -w 1000 --rate 200 -d 10 --reference "$N/bare-broadcast" --runs 3
    note "fan1k $v $r"
  done
done
for v in base new; do
  S=$(bin $v)
  run fan10k-$v 400 fanout --spawn "$S" -w 10000 --rate 50 -d 10 --reference "$N/bare-broadcast" --runs 3
  note "fan10k $v"
done
# the same with 16 writers: 4 writers, each waiting for its durable reply, cannot
# offer 50 changes/s to Jetway (see docs/benchmarks.md)
for v in base new; do
  S=$(bin $v)
  run fan10k16-$v 400 fanout --spawn "$S" -w 10000 --writers 16 --rate 50 -d 10 --reference "$N/bare-broadcast" --runs 3
  note "fan10k16 $v"
done
note end
