#!/usr/bin/env bash
# The H2 probe (third security round): connections that stop reading, each with
# 16 sessions x 8 long-polls, woken by 4 x ~1 MiB to every inbox, against the
# release node as its own process. For each number of frozen connections, a
# fresh node; prints one line:
#   connections peak_rss_mib ping_p50_us ping_p99_us refused
# Usage: scripts/frozen-readers.sh [SECONDS] [CONNECTIONS...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift $(( $# > 0 ? 1 : 0 ))
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 4 16)
cargo build --release --locked -p quicnprotochat --bin quicnprotochat -p quicnprotochat-tests --bin loadtest >&2
port=47391
for n in "${sizes[@]}"; do
    dir=$(mktemp -d)
    target/release/quicnprotochat server --listen "127.0.0.1:$port" --data-dir "$dir" >"$dir/node.log" 2>&1 &
    node=$!
    for _ in $(seq 50); do [ -f "$dir/server-cert.der" ] && break; sleep 0.1; done
    sleep 0.5
    report=$(target/release/loadtest --json --server "127.0.0.1:$port" --ca-cert "$dir/server-cert.der" \
        --node-pid "$node" --duration "$secs" stall --storm frozen --size "$n" 2>/dev/null || true)
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$node/status")
    kill "$node"; wait "$node" 2>/dev/null || true
    rm -rf "$dir"
    echo "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin); f = dict(r["figures"]); l = r["latency"]
print(sys.argv[1], sys.argv[2], l["p50_us"], l["p99_us"], int(f.get("storm_calls_refused", 0)), flush=True)' "$n" "$hwm"
done
