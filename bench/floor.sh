#!/usr/bin/env bash
# The gRPC transport's floor beside etcd and Cairn (docs/PERFORMANCE.md, "The transport's
# floor"): the same loads against `cairn-bench floor` (a server that stores nothing and
# answers at once), etcd 3.5.1 and Cairn, one fresh server at a time, alternating, and
# for each run the server's CPU per operation over the measured window (user + system,
# from /proc: cairn-bench --server-pids) and the mean time its WAL appends took to become
# durable (etcd_disk_wal_fsync_duration_seconds from its /metrics; "-" for the floor).
# The watch-latency load runs against etcd and Cairn only (the floor server has no watch
# service); its p50 is from a put to its event at the watcher.
#
#   bench/floor.sh [ROUNDS]        (default 3; needs release builds: cargo build --release)
#   ONLY="put, 1" bench/floor.sh   (only the loads whose name contains ONLY)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BENCH=target/release/cairn-bench
CAIRN=target/release/cairn
ETCD=${ETCD_BIN:-$(./scripts/etcd35)/etcd}
for b in "$BENCH" "$CAIRN" "$ETCD"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release --bin cairn --bin cairn-bench)" >&2; exit 1; }
done
PORT=23790
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

start() { # start SERVER: the server's pid on stdout once it answers
  local d="$WORK/data.$RANDOM"
  case $1 in
    floor) "$BENCH" floor --listen 127.0.0.1:$PORT --val-size 256 >"$WORK/log" 2>&1 & ;;
    cairn | etcd)
      local bin=$CAIRN
      [ "$1" = etcd ] && bin=$ETCD
      "$bin" --data-dir "$d" --listen-client-urls http://127.0.0.1:$PORT \
        --advertise-client-urls http://127.0.0.1:$PORT --listen-peer-urls http://127.0.0.1:$((PORT + 10)) \
        --initial-advertise-peer-urls http://127.0.0.1:$((PORT + 10)) \
        --initial-cluster default=http://127.0.0.1:$((PORT + 10)) >"$WORK/log" 2>&1 &
      ;;
  esac
  local pid=$!
  for _ in $(seq 100); do
    if "$BENCH" --endpoints 127.0.0.1:$PORT --no-progress --total 1 put >/dev/null 2>&1; then
      echo "$pid"
      return
    fi
    sleep 0.1
  done
  echo "$1 did not start:" >&2
  cat "$WORK/log" >&2
  kill "$pid"
  exit 1
}

LOADS=(
  "lease keepalive, 64 clients|--conns 16 --clients 64 --total 200000 lease-keepalive"
  "range serializable, 64 clients|--conns 16 --clients 64 --total 100000 --val-size 256 --key-space-size 100 range --consistency s"
  "put, 64 clients|--conns 16 --clients 64 --total 50000 --val-size 256 --key-space-size 100000 put"
  "put, 1 client|--conns 1 --clients 1 --total 5000 --val-size 256 --key-space-size 100000 put"
  "watch latency, 1 watcher at 100 puts/s|--total 1000 watch-latency"
)
echo "| load | server | round | ops/s | p50 ms | server CPU us/op | WAL sync mean ms |"
echo "|---|---|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  for load in "${LOADS[@]}"; do
    name=${load%%|*}
    [[ $name == *"${ONLY:-}"* ]] || continue
    read -r -a args <<<"${load#*|}"
    for server in floor etcd cairn; do
      # The floor server has no watch service.
      [[ $server == floor && $name == watch* ]] && continue
      pid=$(start $server)
      out=$("$BENCH" --endpoints 127.0.0.1:$PORT --no-progress --json --server-pids "$pid" "${args[@]}")
      # The mean time to make a WAL append durable, from the server's own metrics.
      sync=$({ curl -s "http://127.0.0.1:$PORT/metrics" || true; } | awk '/^etcd_disk_wal_fsync_duration_seconds_sum/ {s=$2}
        /^etcd_disk_wal_fsync_duration_seconds_count/ {c=$2} END {if (c > 0) printf "%.3f", s / c * 1000; else print "-"}')
      kill "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
      rm -rf "$WORK"/data.*
      python3 - "$name" "$server" "$r" "$out" "$sync" <<'EOF'
import json, sys
name, server, r, out, sync = sys.argv[1:]
rep = json.loads(out)
lat = rep['latency_ms']['p50']
print(f"| {name} | {server} | {r} | {rep['throughput']:.0f} | {lat:.3f} | {rep['extra']['server_cpu_us_per_op']:.1f} | {sync} |")
EOF
    done
  done
done
