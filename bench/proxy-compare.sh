#!/usr/bin/env bash
# One round of the gRPC proxy comparison (docs/PERFORMANCE.md "gRPC proxy"): an etcd 3.5.1
# member as the upstream, then `cairn grpc-proxy start` or `etcd grpc-proxy start` in front
# of it, then one cairn-bench workload through the proxy; prints the bench's JSON and the
# proxy's peak RSS and CPU ticks. Loopback only; every process it starts is stopped.
#   bench/proxy-compare.sh cairn|etcd <cairn-bench workload and flags>
#   e.g. bench/proxy-compare.sh cairn watch --watchers 1000 --streams 100 --conns 10 \
#          --clients 16 --total 2000 --key-space-size 1000 --val-size 16
# Needs release builds (cargo build --release --bin cairn --bin cairn-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$1; shift
etcd_dir="${ETCD35_DIR:-$(./scripts/etcd35)}"
ETCD="$etcd_dir/etcd"
CAIRN=target/release/cairn
BENCH=target/release/cairn-bench
d=$(mktemp -d /tmp/proxy-compare.XXXX)
"$ETCD" --name up --data-dir "$d/up" --listen-client-urls http://127.0.0.1:32379 \
  --advertise-client-urls http://127.0.0.1:32379 --listen-peer-urls http://127.0.0.1:32380 \
  --initial-advertise-peer-urls http://127.0.0.1:32380 --initial-cluster up=http://127.0.0.1:32380 \
  > "$d/up.log" 2>&1 &
up=$!
trap 'kill $up ${px:-} 2>/dev/null; rm -rf "$d"' EXIT
sleep 2
case "$kind" in
  etcd) "$ETCD" grpc-proxy start --endpoints=127.0.0.1:32379 --listen-addr=127.0.0.1:33379 > "$d/proxy.log" 2>&1 & ;;
  cairn) "$CAIRN" grpc-proxy start --endpoints=127.0.0.1:32379 --listen-addr=127.0.0.1:33379 > "$d/proxy.log" 2>&1 & ;;
  *) echo "usage: $0 cairn|etcd <workload> [flags]" >&2; exit 2 ;;
esac
px=$!
sleep 1.5
timeout 300 "$BENCH" "$@" --endpoints 127.0.0.1:33379 --json --no-progress
echo "proxy_peak_rss_kb $(awk '/VmHWM/ {print $2}' /proc/$px/status) proxy_cpu_ticks $(awk '{print $14+$15}' /proc/$px/stat)"
