#!/usr/bin/env bash
# How long the client's reads take with the node down, alone and through a
# daemon (docs/performance.md, "Reads with the node down"). Builds the binary
# (release unless QPC_PROFILE=debug), starts a node, registers two profiles in a
# group with one message, stops the node, then times each read five times.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${QPC_PROFILE:-release}
if [ "$profile" = release ]; then
    cargo build --release --locked --bin quicnprotochat
else
    cargo build --locked --bin quicnprotochat
fi
bin=$PWD/target/$profile/quicnprotochat
work=$(mktemp -d)
trap 'kill "${daemon:-}" "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

"$bin" server --listen 127.0.0.1:0 --data-dir data > server.out 2>/dev/null &
server=$!
for _ in $(seq 50); do grep -q listening server.out 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' server.out)
c=(--server "$addr" --ca-cert data/server-cert.der)
export QPC_PASSWORD=pw
"$bin" register-user --username alice "${c[@]}" --state a > /dev/null
"$bin" register-user --username bob "${c[@]}" --state b > /dev/null
"$bin" create-group g "${c[@]}" --state a > /dev/null
"$bin" invite --group g bob "${c[@]}" --state a > /dev/null
"$bin" join "${c[@]}" --state b > /dev/null
"$bin" send --group g hello "${c[@]}" --state a > /dev/null
"$bin" recv "${c[@]}" --state b > /dev/null
kill "$server"; wait "$server" 2>/dev/null || true; server=

time_reads() {
    local label=$1
    for cmd in "history --group g" "groups" "members --group g" "whoami" "devices"; do
        local best=999 worst=0
        for _ in 1 2 3 4 5; do
            local start end ms
            start=$(date +%s%N)
            # shellcheck disable=SC2086
            "$bin" $cmd "${c[@]}" --state b > /dev/null 2>&1
            end=$(date +%s%N)
            ms=$(((end - start) / 1000000))
            [ "$ms" -lt "$best" ] && best=$ms
            [ "$ms" -gt "$worst" ] && worst=$ms
        done
        printf '%-8s %-20s best %4d ms, worst %4d ms (5 runs)\n' "$label" "$cmd" "$best" "$worst"
    done
}

time_reads alone
"$bin" daemon "${c[@]}" --state b > daemon.out 2>&1 &
daemon=$!
for _ in $(seq 50); do grep -q "daemon serving" daemon.out 2>/dev/null && break; sleep 0.1; done
time_reads daemon
