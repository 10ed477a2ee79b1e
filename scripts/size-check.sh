#!/usr/bin/env bash
# The binary-size check (CI): builds the release binary and fails when it,
# stripped, is more than 10 % larger than the baseline recorded in
# packaging/binary-size.txt. After a growth that is worth it:
#   scripts/size-check.sh --record
# Test hooks: QPC_SIZE_BINARY (measure this file, build nothing) and
# QPC_SIZE_BASELINE (another baseline file).
set -euo pipefail
cd "$(dirname "$0")/.."

baseline_file=${QPC_SIZE_BASELINE:-packaging/binary-size.txt}
binary=${QPC_SIZE_BINARY:-}
if [ -z "$binary" ]; then
    # What ships is measured stripped, so CI builds it without the line
    # tables the release profile keeps for backtraces (a minute less on 2 cores).
    CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release --locked --bin quicnprotochat
    binary=target/release/quicnprotochat
fi
stripped=$(mktemp)
trap 'rm -f "$stripped"' EXIT
# Debug line tables come and go with paths and toolchains: what ships is
# measured without them.
strip -o "$stripped" "$binary" 2>/dev/null || cp "$binary" "$stripped"
size=$(stat -c %s "$stripped")

if [ "${1:-}" = "--record" ]; then
    {
        echo "$size"
        echo "# Bytes of the stripped release binary (scripts/size-check.sh --record), $(date -u +%Y-%m-%d)."
    } > "$baseline_file"
    echo "recorded the baseline: $size bytes"
    exit 0
fi

base=$(head -1 "$baseline_file" | tr -dc '0-9')
if [ -z "$base" ]; then
    echo "error: $baseline_file has no baseline on its first line" >&2
    exit 2
fi
limit=$((base + base / 10))
echo "binary size: $size bytes stripped; baseline $base, limit $limit (+10 %)"
if [ "$size" -gt "$limit" ]; then
    echo "error: the binary grew $(((size - base) * 100 / base)) % over the baseline ($size > $limit bytes); shrink it, or record a new baseline with scripts/size-check.sh --record and say why in the commit" >&2
    exit 1
fi
