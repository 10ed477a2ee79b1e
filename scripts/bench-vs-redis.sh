#!/usr/bin/env bash
# The yardstick: Redis 7 streams with every write fsynced (appendfsync always), the
# store a team would reach for, measured right before and right after our own
# `enqueue` scenario in one run, because the disk here swings by several times
# within an hour and only ratios taken together mean anything.
#
#   scripts/bench-vs-redis.sh [DURATION_SECONDS]
#
# Installs Debian's redis-server / redis-tools if missing; runs Redis on loopback
# in a temporary directory and stops it by pid afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
requests="${REDIS_REQUESTS:-200000}"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
fi

dir="$(mktemp -d)"
port="${REDIS_PORT:-6391}"
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync always --save '' --daemonize yes --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log"
cleanup() {
    if [ -f "$dir/redis.pid" ]; then
        pid="$(cat "$dir/redis.pid")"
        kill "$pid" 2>/dev/null || true
        # Wait until it is gone, so the next run finds the port free.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
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

cargo build --release --locked -q -p quicnprotochat-tests --bin loadtest
redis_before="$(redis_rps)"
store="$(target/release/loadtest --json --duration "$duration" store | grep -A1 '"messages_per_s"' | tail -1 | tr -d ' ,')"
ours="$(target/release/loadtest --json --duration "$duration" enqueue)"
redis_after="$(redis_rps)"

ours_rps="$(printf '%s\n' "$ours" | grep -A1 '"messages_per_s"' | tail -1 | tr -d ' ,')"
ours_cpu="$(printf '%s\n' "$ours" | grep -A1 '"node_cpu_us_per_message"' | tail -1 | tr -d ' ,')"
python3 - "$redis_before" "$redis_after" "$ours_rps" "$store" "$ours_cpu" <<'PY'
import sys
rb, ra, ours, store, cpu = map(float, sys.argv[1:])
redis = (rb + ra) / 2
print(f"redis streams (fsync always): {rb:,.0f}/s before, {ra:,.0f}/s after")
print(f"store scenario (no network):  {store:,.0f}/s")
print(f"quicnprotochat enqueue:       {ours:,.0f}/s  (node CPU {cpu:.1f} µs/message)")
print(f"ratio to redis: {ours / redis:.2f}x   ratio to store: {ours / store:.2f}x")
PY
