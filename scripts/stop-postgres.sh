#!/usr/bin/env bash
# Stops the throwaway cluster of scripts/start-postgres.sh (and with --wipe,
# deletes it).
set -euo pipefail
DIR="${QPC_PG_DIR:-/tmp/qpc-postgres}"
PG_CTL=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pg_ctl
[ -x "$PG_CTL" ] || PG_CTL=$(command -v pg_ctl)
if [ -f "$DIR/data/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$PG_CTL" -D "$DIR/data" -m fast -w stop >/dev/null
    else
        "$PG_CTL" -D "$DIR/data" -m fast -w stop >/dev/null
    fi
fi
if [ "${1:-}" = "--wipe" ]; then
    rm -rf "$DIR"
fi
