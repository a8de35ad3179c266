#!/usr/bin/env bash
# CPU per linearizable read on three members (docs/PERFORMANCE.md "Next"): a fresh 3-member
# cluster of `cairn` (or etcd) on 127.0.0.3x, 5,000 puts over 1,000 keys, then 10 s of
# `range --conns 16 --clients 64` spread over the three endpoints; prints the reads, each
# member's CPU ticks (10 ms) over the read phase and the members' CPU microseconds per read.
# Loopback only; every process it starts is stopped.
#   bench/three-member-reads.sh [BINARY [FLAG...]]
# BINARY defaults to target/release/cairn (an etcd binary works); FLAGs go to every member
# (for example --experimental-lease-reads).
# Needs a release cairn-bench (cargo build --release --bin cairn-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/cairn}")
shift || true
BENCH=$(realpath target/release/cairn-bench)
d=$(mktemp -d /tmp/three-member-reads.XXXX)
cluster="m1=http://127.0.0.31:2380,m2=http://127.0.0.32:2380,m3=http://127.0.0.33:2380"
pids=()
stop() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$d"
}
trap stop EXIT
for i in 1 2 3; do
  "$BIN" --name "m$i" --data-dir "$d/m$i" --listen-client-urls "http://127.0.0.3$i:2379" \
    --advertise-client-urls "http://127.0.0.3$i:2379" --listen-peer-urls "http://127.0.0.3$i:2380" \
    --initial-advertise-peer-urls "http://127.0.0.3$i:2380" --initial-cluster "$cluster" \
    --initial-cluster-state new "$@" >"$d/m$i.log" 2>&1 &
  pids+=($!)
  disown
done
eps=127.0.0.31:2379,127.0.0.32:2379,127.0.0.33:2379
sleep 3
"$BENCH" put --endpoints "$eps" --conns 4 --clients 16 --total 5000 --key-space-size 1000 --no-progress >/dev/null
ticks() { for p in "${pids[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
before=($(ticks))
out=$("$BENCH" range --endpoints "$eps" --conns 16 --clients 64 --duration 10 --key-space-size 1000 --no-progress | grep "ops in")
after=($(ticks))
reads=$(sed -E 's/.*: ([0-9]+) ops.*/\1/' <<<"$out")
total=0
each=""
for i in 0 1 2; do
  t=$((after[i] - before[i]))
  total=$((total + t))
  each="$each $t"
done
echo "$out"
echo "member CPU ticks:$each (total $total); CPU per read: $((total * 10000 / reads)) us"
