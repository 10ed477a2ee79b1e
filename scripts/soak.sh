#!/usr/bin/env bash
# Soak (CI runs one minute of four groups): the node binary under steady mixed
# load for SECS seconds, every promise checked at the end, no call may fail; prints
# the node's RSS and its slope (tests/soak.rs).
# usage: scripts/soak.sh [SECS] [GROUPS] [PACE_MS]   (default 1800, 8 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
export QPC_SOAK_SECS="${1:-1800}" QPC_SOAK_GROUPS="${2:-8}" QPC_SOAK_PACE_MS="${3:-5}"
cargo test --locked -p quicnprotochat --test soak -- --nocapture | grep -E "soak|test result"
