#!/usr/bin/env bash
# Long runs of the fuzz targets (CI runs short ones): the Cap'n Proto requests
# and framed garbage against a real node, and the client-side formats.
# usage: scripts/fuzz.sh [CASES]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${1:-100000}"
export QPC_FUZZ_CASES="$CASES" PROPTEST_CASES="$CASES"
cargo test --release --locked -p quicnprotochat-tests --test fuzz_requests
cargo test --release --locked -p quicnprotochat-crypto --test fuzz_formats
cargo test --release --locked -p quicnprotochat --lib -- decoding_arbitrary_bytes_never_panics escaped_text
