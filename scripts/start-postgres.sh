#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests of the PostgreSQL store and
# prints its URL on the last line of standard output.
#
#   QPC_TEST_STORE=$(scripts/start-postgres.sh | tail -1) cargo test ...
#
# Installs the distribution's `postgresql` package if no server is found (as
# root, with apt-get), then runs `initdb` and `pg_ctl` as an unprivileged user
# (PostgreSQL refuses to run as root): `postgres` when it exists, else the
# current user. The cluster lives under $QPC_PG_DIR (default
# /tmp/qpc-postgres), listens on 127.0.0.1:$QPC_PG_PORT (default 54329) only,
# and trusts local connections: it is for tests, never for data. Running the
# script again reuses a cluster that is already up. `scripts/stop-postgres.sh`
# stops it.
set -euo pipefail

PORT="${QPC_PG_PORT:-54329}"
DIR="${QPC_PG_DIR:-/tmp/qpc-postgres}"

find_bin() {
    local name=$1 found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$found" ] && [ -x "$found/$name" ]; then
        echo "$found/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    fi
}

if [ -z "$(find_bin initdb)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing postgresql from the distribution's packages" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib) >/dev/null
    else
        echo "error: no PostgreSQL server found; install the postgresql package" >&2
        exit 1
    fi
fi
INITDB=$(find_bin initdb)
PG_CTL=$(find_bin pg_ctl)
PG_ISREADY=$(find_bin pg_isready)

# PostgreSQL refuses to run as root.
if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home postgres
    fi
    AS=(runuser -u postgres --)
    OWNER=postgres
else
    AS=()
    OWNER=$(id -un)
fi

URL="postgres://${OWNER}@127.0.0.1:${PORT}/postgres"

if "$PG_ISREADY" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
    echo "$URL"
    exit 0
fi

mkdir -p "$DIR"
chown "$OWNER" "$DIR"
chmod 700 "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
    "${AS[@]}" "$INITDB" -D "$DIR/data" -U "$OWNER" --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
fi
# Sockets in $DIR (not /var/run/postgresql, which may not exist); TCP on
# loopback only. More connections than the default 100: every test node opens
# its own pool, and the suites run in parallel.
"${AS[@]}" "$PG_CTL" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=128MB" \
    >/dev/null || { tail -20 "$DIR/server.log" >&2; exit 1; }
echo "$URL"
