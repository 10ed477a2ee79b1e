# Sourced by the benchmark scripts (bench-vs-redis.sh, profile-enqueue.sh): a
# release node started as its own process on loopback, with the limits a load
# test must not trip over (it measures the store and the wire, not the abuse
# protections), as `loadtest` sets them for its in-process node.
#
#   start_bench_node DIR PORT   fresh data in DIR/node; sets node_pid; exits if
#                               the node does not come up
#   stop_bench_node             stops it and waits until it is gone
#   stop_pid PID                the same for any process

node_pid=""

stop_pid() {
    kill "$1" 2>/dev/null || true
    # Wait until it is gone, so the next run finds the port free.
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
}

start_bench_node() {
    local dir="$1" port="$2"
    rm -rf "$dir/node"
    mkdir -p "$dir/node"
    cat > "$dir/node.toml" <<TOML
queue_limit = 10000000
[rate_limits]
enqueue_per_sec_per_session = 10000000
enqueue_per_sec_per_address = 10000000
logins_per_min_per_address = 10000000
claims_per_min_per_requester = 10000000
claims_per_min_per_target = 10000000
[limits]
# deliver's one sender offers tens of thousands a second: past 128 calls in
# flight (the default) a commit's pause would refuse some.
calls_per_connection = 4096
TOML
    target/release/quicnprotochat server --config "$dir/node.toml" --data-dir "$dir/node" \
        --listen "127.0.0.1:$port" > "$dir/node.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 200); do grep -q "listening on" "$dir/node.log" && return; sleep 0.05; done
    echo "the node did not start: $(cat "$dir/node.log")" >&2
    exit 1
}

stop_bench_node() {
    if [ -n "$node_pid" ]; then
        stop_pid "$node_pid"
        node_pid=""
    fi
}
