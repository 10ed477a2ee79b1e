#!/usr/bin/env bash
# Delivery latency with push (Session.subscribe) against long-poll (fetchWait):
# `loadtest deliver` at each rate, both ways, RUNS times (default 3), interleaved
# so that both see the same machine. Prints one line per run:
#   run rate mode p50_us p99_us p999_us delivered/offered errors
# (a run with errors still prints: the offered load was more than the node took)
# Usage: scripts/push-latency.sh [RUNS] [SECONDS] [RATES...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-6}
shift $(( $# > 2 ? 2 : $# ))
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(1000 5000 10000)
cargo build --release --locked -p quicnprotochat-tests --bin loadtest >&2
for run in $(seq "$runs"); do
    for rate in "${rates[@]}"; do
        for mode in long-poll push; do
            flag=""
            [ "$mode" = push ] && flag="--push"
            { target/release/loadtest --json --duration "$secs" deliver --rate "$rate" $flag 2>/dev/null || true; } |
                python3 -c '
import json, sys
r = json.load(sys.stdin)
f = dict(r["figures"]); l = r["latency"]
print(sys.argv[1], sys.argv[2], sys.argv[3], l["p50_us"], l["p99_us"], l["p999_us"],
      "%d/%d" % (f["delivered"], f["offered"]), r.get("errors", 0), flush=True)' "$run" "$rate" "$mode"
        done
    done
done
