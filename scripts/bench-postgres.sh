#!/usr/bin/env bash
# Enqueue throughput on PostgreSQL beside redb and beside PostgreSQL's own rate
# for the same inserts, in one run (docs/performance.md, "PostgreSQL store").
#
#   scripts/bench-postgres.sh [SECONDS]
#
# 1. `loadtest store` on redb: the node's store alone (inbox actors + writer,
#    no network), durable commits.
# 2. The same on PostgreSQL (a throwaway cluster from scripts/start-postgres.sh).
# 3. pgbench running the writer's own two statements for one message (seq from
#    the inbox's row, then the message) as one transaction per message, with as
#    many clients as the store scenario has writes in flight.
# 4. `loadtest enqueue` (QUIC + Cap'n Proto + store) on each backend.
# Every step prints its figures; nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
INFLIGHT=64
INBOXES=1000
PAYLOAD=1024

URL=$(scripts/start-postgres.sh | tail -1)
BASE="${URL%/*}"
PSQL=(psql -X -q -v ON_ERROR_STOP=1)
fresh() {
    "${PSQL[@]}" "$URL" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
    echo "$BASE/$1"
}

cargo build --release --locked -p quicnprotochat-tests --bin loadtest >/dev/null
LOADTEST=target/release/loadtest

echo "== store, redb (durable) =="
"$LOADTEST" --duration "$SECS" store --in-flight "$INFLIGHT" --inboxes "$INBOXES" --payload "$PAYLOAD"

echo "== store, PostgreSQL =="
DB=$(fresh qpc_bench_store)
"$LOADTEST" --duration "$SECS" --store "$DB" store --in-flight "$INFLIGHT" --inboxes "$INBOXES" --payload "$PAYLOAD"
"${PSQL[@]}" "$DB" -At -c "SELECT 'database size: ' || pg_size_pretty(pg_database_size(current_database())) || ', messages: ' || (SELECT count(*) FROM messages)"

echo "== pgbench: the same inserts, one transaction per message =="
DB=$(fresh qpc_bench_pgbench)
# The node's schema, from its migration.
"${PSQL[@]}" "$DB" -f actors/migrations/V1__initial.sql >/dev/null
SCRIPT=$(mktemp)
chmod 644 "$SCRIPT" # read by pgbench as the postgres user
cat >"$SCRIPT" <<SQL
\set k random(1, $INBOXES)
BEGIN;
WITH m AS (INSERT INTO inbox_meta AS t (inbox, last_seq, acked)
             VALUES (decode(lpad(to_hex(:k), 64, '0'), 'hex'), 1, 0)
           ON CONFLICT (inbox) DO UPDATE SET last_seq = t.last_seq + 1 RETURNING last_seq)
INSERT INTO messages (inbox, seq, kind, data)
  SELECT decode(lpad(to_hex(:k), 64, '0'), 'hex'), last_seq, 0, convert_to(repeat('x', $PAYLOAD), 'UTF8') FROM m;
END;
SQL
PGBENCH_AS=()
[ "$(id -u)" = 0 ] && PGBENCH_AS=(runuser -u postgres --)
"${PGBENCH_AS[@]}" pgbench -n -h 127.0.0.1 -p "${QPC_PG_PORT:-54329}" -U postgres \
    -c "$INFLIGHT" -j 2 -T "$SECS" -f "$SCRIPT" "${DB##*/}" | grep -E "tps|latency average|transactions actually"
rm -f "$SCRIPT"

echo "== enqueue over QUIC, redb =="
"$LOADTEST" --duration "$SECS" enqueue
echo "== enqueue over QUIC, PostgreSQL =="
DB=$(fresh qpc_bench_enqueue)
"$LOADTEST" --duration "$SECS" --store "$DB" enqueue
