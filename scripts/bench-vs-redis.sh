#!/usr/bin/env bash
# The yardstick: Redis 7 streams with every write fsynced (appendfsync always), the
# store a team would reach for, measured right before and right after our own
# `enqueue` scenario in one run, because the disk here swings by several times
# within an hour and only ratios taken together mean anything.
#
#   scripts/bench-vs-redis.sh [DURATION_SECONDS] [RUNS]
#
# Each run: Redis, the `store` scenario (the node's store alone, no network), a
# fresh node started as its own process (release `quicnprotochat server`) with
# `loadtest --server` driving `enqueue` against it (the generator in its own
# process, as redis-benchmark is; the node's CPU is read from /proc), Redis again,
# the disk's fdatasync latency, then `deliver` at half the enqueue rate just
# measured. Prints the two ratios and the deliver goal per run.
#
# Installs Debian's redis-server / redis-tools if missing; runs Redis and the node
# on loopback in a temporary directory and stops them by pid afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
runs="${2:-1}"
requests="${REDIS_REQUESTS:-200000}"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
fi

dir="$(mktemp -d)"
port="${REDIS_PORT:-6391}"
node_port="${NODE_PORT:-7491}"
. scripts/bench-node.sh
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync always --save '' --daemonize yes --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log"
cleanup() {
    stop_bench_node
    [ -f "$dir/redis.pid" ] && stop_pid "$(cat "$dir/redis.pid")"
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" ping >/dev/null || { echo "redis did not start: $(cat "$dir/redis.log")" >&2; exit 1; }

value="$(head -c 1024 /dev/zero | tr '\0' 'x')"
redis_rps() {
    # XADD of a 1 KiB field into 1,000 stream keys from 64 clients.
    redis-cli -p "$port" flushall >/dev/null
    timeout 300 redis-benchmark -p "$port" -c 64 -n "$requests" -r 1000 --csv \
        XADD "stream:__rand_int__" '*' f "$value" | tail -1 | cut -d, -f2 | tr -d '"'
}
# Figure or latency percentile KEY of the loadtest JSON report on stdin.
json_figure() {
    python3 -c 'import json,sys; r=json.load(sys.stdin); k=sys.argv[1]; f=dict(r["figures"])
print(f[k] if k in f else r["latency"][k])' "$1"
}

cargo build --release --locked -q -p quicnprotochat-tests --bin loadtest \
    -p quicnprotochat --bin quicnprotochat
loadtest=(target/release/loadtest --json --duration "$duration")
for run in $(seq "$runs"); do
    redis_before="$(redis_rps)"
    store="$("${loadtest[@]}" store | json_figure messages_per_s)"
    start_bench_node "$dir" "$node_port"
    against_node=(--server "127.0.0.1:$node_port" --ca-cert "$dir/node/server-cert.der")
    ours="$("${loadtest[@]}" "${against_node[@]}" --node-pid "$node_pid" enqueue)"
    redis_after="$(redis_rps)"
    disk="$("${loadtest[@]}" disk --dir "$dir")"
    ours_rps="$(printf '%s' "$ours" | json_figure messages_per_s)"
    ours_cpu="$(printf '%s' "$ours" | json_figure node_cpu_us_per_message)"
    rate="$(python3 -c "print(int($ours_rps / 2))")"
    deliver="$("${loadtest[@]}" "${against_node[@]}" deliver --rate "$rate")"
    stop_bench_node
    python3 - "$run" "$redis_before" "$redis_after" "$ours_rps" "$store" "$ours_cpu" \
        "$(printf '%s' "$disk" | json_figure p99_us)" \
        "$(printf '%s' "$deliver" | json_figure p50_us)" \
        "$(printf '%s' "$deliver" | json_figure p99_us)" "$rate" <<'PY'
import sys
run = sys.argv[1]
rb, ra, ours, store, cpu, sync99, d50, d99, rate = map(float, sys.argv[2:])
redis = (rb + ra) / 2
goal = 2 * sync99 / 1000 + 1
print(f"run {run}")
print(f"  redis streams (fsync always): {rb:,.0f}/s before, {ra:,.0f}/s after")
print(f"  store scenario (no network):  {store:,.0f}/s")
print(f"  quicnprotochat enqueue:       {ours:,.0f}/s  (node process CPU {cpu:.1f} µs/message)")
print(f"  ratio to redis: {ours / redis:.2f}x   ratio to store: {ours / store:.2f}x")
print(f"  fdatasync p99 {sync99 / 1000:.2f} ms; deliver at {rate:,.0f}/s: "
      f"p50 {d50 / 1000:.1f} ms, p99 {d99 / 1000:.1f} ms (goal <= {goal:.1f} ms)")
PY
done
