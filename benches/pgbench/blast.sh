#!/usr/bin/env bash
# What a row limit on writes (`max_affected_rows`) costs the whole system: pgbench's TPC-B
# (three single-row UPDATEs, one INSERT and one SELECT per transaction) through one Sluice,
# as a role whose policy limits the rows an UPDATE may affect and as a role whose policy does
# not (same statements, same pool), interleaved, with the median ratio.
#
#   bash benches/pgbench/blast.sh                       # c = 1, 16; 3 reps of 8 s
#   DURATION=3 REPS=1 CLIENTS=16 bash benches/pgbench/blast.sh
#
# Needs PostgreSQL server binaries and pgbench (apt-get install postgresql), cargo.
# The last line is `ratio capped/plain c=16 simple: X`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DURATION=${DURATION:-8}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-"1 16"}
MODES=${MODES:-"simple extended"}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
THREADS=${THREADS:-2}

. benches/pgbench/lib.sh
find_postgres
build_sluice

work=$(mktemp -d /tmp/sluice-blastbench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_postgres "$work"
    rm -rf "$work"
}
trap cleanup EXIT

PG_PORT=$(free_port)
start_postgres "$work" "$PG_PORT" <<EOF
max_connections = 200
shared_buffers = 128MB
synchronous_commit = off
full_page_writes = off
EOF
"$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -c "create database bench" >/dev/null
"$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1

SLUICE_PORT=$(free_port)
CAPPED=capped-$RANDOM$RANDOM
PLAIN=plain-$RANDOM$RANDOM
cat >"$work/sluice.yaml" <<EOF
listen: 127.0.0.1:$SLUICE_PORT
cores: $THREADS
auth:
  static_tokens:
    - { token: "$CAPPED", subject: capped, groups: [capped] }
    - { token: "$PLAIN", subject: plain, groups: [plain] }
connections:
  - name: bench
    port: $PG_PORT
    database: bench
    pool: { mode: transaction, size: $POOL_SIZE }
    users: [{ name: pg, user: postgres }]
roles:
  - { name: capped, groups: [capped], connections: { bench: pg }, policy: capped }
  - { name: plain, groups: [plain], connections: { bench: pg }, policy: plain }
policies:
  - name: plain
    classes: { allow: [read, write, transaction, session] }
    tables: { allow: ["public.pgbench_*"] }
  # Every UPDATE is counted against the limit (each of TPC-B's touches one row).
  - name: capped
    classes: { allow: [read, write, transaction, session] }
    tables: { allow: ["public.pgbench_*"] }
    max_affected_rows: 10
EOF
SLUICE_LOG=warn "$SLUICE" dataplane --config "$work/sluice.yaml" &
pids+=($!)
wait_for_port "$SLUICE_PORT"

# The limit must really be in force for the capped role (else the comparison means nothing).
err=$(PGPASSWORD=$CAPPED "$bindir/psql" -h 127.0.0.1 -p "$SLUICE_PORT" -U capped -qAt -d bench \
    -c "UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid > 0" 2>&1 || true)
case $err in *max_affected_rows*) echo "capped role: $err" | head -1 >&2 ;; *) echo "the row limit is not in effect: $err" >&2; exit 1 ;; esac

results=$work/results.tsv
compare_roles plain "$PLAIN" capped "$CAPPED" -b tpcb-like

echo
echo "Median TPS over $REPS repetition(s), ${DURATION}s each, TPC-B scale $SCALE, $(nproc) cores:"
summarise_roles plain plain capped capped
