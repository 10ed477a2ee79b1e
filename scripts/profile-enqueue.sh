#!/usr/bin/env bash
# Where the node's CPU goes under `loadtest enqueue`: the node runs as its own
# process (release build, line tables), the generator drives it from another,
# `perf` samples the node only, and inferno draws the flame graph.
#
#   scripts/profile-enqueue.sh [OUT_SVG] [SECONDS]
#
# Writes OUT_SVG (default docs/enqueue-flamegraph.svg) and prints the share of
# each thread and of the frames that matter; with KEEP_FOLDED=1 also keeps the
# folded stacks (several MB, for grep) as OUT_SVG.folded. Installs Debian's perf
# and crates.io's inferno if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/enqueue-flamegraph.svg}"
seconds="${2:-8}"

if ! command -v perf >/dev/null; then
    apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install --locked -q inferno
fi
cargo build --release --locked -q -p quicnprotochat-tests --bin loadtest \
    -p quicnprotochat --bin quicnprotochat

dir="$(mktemp -d)"
. scripts/bench-node.sh
cleanup() {
    stop_bench_node
    rm -rf "$dir"
}
trap cleanup EXIT
start_bench_node "$dir" 7493

target/release/loadtest --server 127.0.0.1:7493 --ca-cert "$dir/node/server-cert.der" \
    --node-pid "$node_pid" --duration $((seconds + 4)) enqueue > "$dir/enqueue.txt" 2>&1 &
load_pid=$!
sleep 2
# DWARF unwinding (release builds keep no frame pointers) at a low rate, so the
# profiler's own cost stays small next to the node's.
perf record -q -F 199 --call-graph dwarf,32768 -p "$node_pid" -o "$dir/perf.data" \
    -- sleep "$seconds" 2>/dev/null
wait "$load_pid"
cat "$dir/enqueue.txt"
folded="$dir/stacks.folded"
perf script -i "$dir/perf.data" 2>/dev/null | inferno-collapse-perf --all > "$folded"
# Frames narrower than a pixel are left out: the file stays small enough to keep
# in the book.
inferno-flamegraph --title "node under loadtest enqueue (1 KiB, 1,000 inboxes, 256 in flight)" \
    --width 1600 --minwidth 1 < "$folded" > "$out"
echo "flame graph: $out"
if [ "${KEEP_FOLDED:-0}" = 1 ]; then cp "$folded" "$out.folded"; fi
python3 - "$folded" <<'PY'
import sys, collections
total = 0
by_thread = collections.Counter()
frames = collections.Counter()
marks = {
    "redb commit (page write-out, fsyncs)": "WriteTransaction::commit",
    "redb inserts": "WriteBatch::append",
    "pwrite (redb pages to the page cache)": "pwrite",
    "fdatasync": "fdatasync",
    "writer replies / wakes": "Outcome",
    "capnp-rpc": "capnp_rpc",
    "quinn (QUIC)": "quinn",
    "rustls / aead": "ring::aead",
    "inbox actor": "inbox::",
    "malloc/free": "malloc",
}
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    by_thread[stack.split(";", 1)[0].rstrip("0123456789-")] += n
    for name, needle in marks.items():
        if needle in stack:
            frames[name] += n
print("by thread:")
for t, n in by_thread.most_common():
    print(f"  {t:<24} {100 * n / total:5.1f} %")
print("stacks containing:")
for name, n in frames.most_common():
    print(f"  {name:<40} {100 * n / total:5.1f} %")
PY
