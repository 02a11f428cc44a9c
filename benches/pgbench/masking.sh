#!/usr/bin/env bash
# What column masking costs the whole system: pgbench with a custom script that selects a
# masked column, through one Sluice, as a role whose policy masks it and as a role whose
# policy does not (same statements, same pool), interleaved, with the median ratio.
#
#   bash benches/pgbench/masking.sh                       # c = 1, 16, 64; 3 reps of 8 s
#   DURATION=3 REPS=1 CLIENTS=16 bash benches/pgbench/masking.sh
#
# Needs PostgreSQL server binaries and pgbench (apt-get install postgresql), cargo.
# The last line is `ratio masked/unmasked c=16 simple: X`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DURATION=${DURATION:-8}
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-"1 16 64"}
MODES=${MODES:-"simple extended"}
ROWS=${ROWS:-100000}
POOL_SIZE=${POOL_SIZE:-20}
THREADS=${THREADS:-2}

. benches/pgbench/lib.sh
find_postgres
build_sluice

work=$(mktemp -d /tmp/sluice-maskbench.XXXXXX)
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
EOF
psql_pg() { "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt "$@"; }
psql_pg -c "create database bench" >/dev/null
psql_pg -d bench >/dev/null <<EOF
CREATE TABLE people (id int PRIMARY KEY, name text, email text, ssn text, card text,
                     city text, plan text, score int, created date, note text);
INSERT INTO people
SELECT g, 'Person ' || g, 'person' || g || '@example.com',
       lpad((100 + g % 800)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0') || '-' || lpad((1000 + g % 8999)::text, 4, '0'),
       '4111111111111111', 'City ' || g % 100, 'basic', g % 1000, date '2024-01-01' + g % 365, 'n'
FROM generate_series(1, $ROWS) g;
ANALYZE people;
EOF
cat >"$work/select.sql" <<EOF
\set id random(1, $ROWS)
SELECT id, name, email, ssn, card, city, plan, score, created, note FROM people WHERE id = :id;
EOF

SLUICE_PORT=$(free_port)
MASKED=masked-$RANDOM$RANDOM
PLAIN=plain-$RANDOM$RANDOM
cat >"$work/sluice.yaml" <<EOF
listen: 127.0.0.1:$SLUICE_PORT
cores: $THREADS
auth:
  static_tokens:
    - { token: "$MASKED", subject: masked, groups: [masked] }
    - { token: "$PLAIN", subject: plain, groups: [plain] }
connections:
  - name: bench
    port: $PG_PORT
    database: bench
    pool: { mode: transaction, size: $POOL_SIZE }
    users: [{ name: pg, user: postgres }]
roles:
  - { name: masked, groups: [masked], connections: { bench: pg }, policy: masked }
  - { name: plain, groups: [plain], connections: { bench: pg }, policy: plain }
policies:
  - name: plain
    classes: { allow: [read, transaction, session] }
  # One column of ten masked (same-length fill, rewritten in place), no detectors.
  - name: masked
    classes: { allow: [read, transaction, session] }
    masking:
      - columns: [public.people.ssn]
        strategy: { partial: { keep_last: 4 } }
EOF
SLUICE_LOG=warn "$SLUICE" dataplane --config "$work/sluice.yaml" &
pids+=($!)
wait_for_port "$SLUICE_PORT"

# The masked role must really get masked values (else the comparison means nothing).
got=$(PGPASSWORD=$MASKED "$bindir/psql" -h 127.0.0.1 -p "$SLUICE_PORT" -U masked -qAt -d bench -c "SELECT ssn FROM people WHERE id = 1")
clear=$(psql_pg -d bench -c "SELECT ssn FROM people WHERE id = 1")
[ "$got" != "$clear" ] && [ "${got: -4}" = "${clear: -4}" ] || { echo "masking is not in effect: got '$got' for '$clear'" >&2; exit 1; }
echo "masked role sees $got for $clear" >&2

results=$work/results.tsv
compare_roles plain "$PLAIN" masked "$MASKED" -f "$work/select.sql"

echo
echo "Median TPS over $REPS repetition(s), ${DURATION}s each, $ROWS rows, 1 of 10 columns masked, $(nproc) cores:"
summarise_roles plain unmasked masked masked
