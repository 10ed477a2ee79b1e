#!/usr/bin/env bash
# Crash consistency at scale (CI runs 5 kills and each writer crash point once):
# the node binary is killed with SIGKILL at MOMENTS random moments of a mixed load,
# then dies once at each named crash point of its writer for every seed; after the
# last restart every inbox is read back and checked (tests/crash_points.rs).
# usage: scripts/crash-points.sh [MOMENTS] [SEEDS]   (default 100 and 3)
# A failure prints its seed; replay it with QPC_CRASH_SEED=<seed>.
set -euo pipefail
cd "$(dirname "$0")/.."
MOMENTS="${1:-100}"
SEEDS="${2:-3}"
cargo build --locked -p quicnprotochat --tests
for seed in $(seq 1 "$SEEDS"); do
    QPC_CRASH_MOMENTS="$MOMENTS" QPC_CRASH_SEED="$seed" \
        cargo test --locked -p quicnprotochat --test crash_points -- --nocapture --test-threads 1 \
        | grep -E "seed|kills|test result"
done
