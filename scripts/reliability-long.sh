#!/usr/bin/env bash
# The long runs of the reliability tests (CI runs their short versions), whose
# figures go in docs/reliability.md. Each prints its figures; a failure names its
# seed. The soak is separate (scripts/soak.sh, 30 minutes).
# usage: scripts/reliability-long.sh [SEEDS]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${1:-200}"
cargo build --locked --workspace --tests

echo "== crash points: 100 SIGKILLs x 3 seeds, and every writer crash point"
scripts/crash-points.sh 100 3

echo "== deterministic simulation: $SEEDS seeds"
QPC_SIM_SEEDS="$SEEDS" cargo test --locked -p quicnprotochat-tests --test simulation -- --nocapture \
    | grep -vE "^seed [0-9]+ \(replay"

echo "== MLS interaction fuzz: $((SEEDS / 10)) seeds"
QPC_MLS_FUZZ_SEEDS="$((SEEDS / 10))" cargo test --locked -p quicnprotochat-tests --test mls_interaction \
    every_message -- --nocapture 2>&1 | grep -E "Counts|test result|panicked"

echo "== store model check with a dying disk (plain and torn writes): $SEEDS seeds"
for seed in $(seq 1 "$SEEDS"); do
    QPC_FAULT_SEED="$seed" cargo test -q --locked -p quicnprotochat-actors --test store_faults \
        -- --nocapture 2>&1 | grep -oE "seed [0-9]+ \(torn.*|panicked.*"
done | sed -E 's/^seed [0-9]+ //; s/disk died at op Some\([0-9]+\); //' | sort | uniq -c

echo "== supervision chaos: $((SEEDS / 4)) seeds"
for seed in $(seq 1 "$((SEEDS / 4))"); do
    QPC_CHAOS_SEED="$seed" cargo test -q --locked -p quicnprotochat-actors --test chaos \
        -- --nocapture 2>&1 | grep -oE "seed [0-9]+: .*restarts.*|panicked at .*chaos.rs.*"
done | sed -E 's/[0-9]+/N/g' | sort | uniq -c
