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
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$SLUICE_PORT) 2>/dev/null && break; sleep 0.1; done

# The masked role must really get masked values (else the comparison means nothing).
got=$(PGPASSWORD=$MASKED "$bindir/psql" -h 127.0.0.1 -p "$SLUICE_PORT" -U masked -qAt -d bench -c "SELECT ssn FROM people WHERE id = 1")
clear=$(psql_pg -d bench -c "SELECT ssn FROM people WHERE id = 1")
[ "$got" != "$clear" ] && [ "${got: -4}" = "${clear: -4}" ] || { echo "masking is not in effect: got '$got' for '$clear'" >&2; exit 1; }
echo "masked role sees $got for $clear" >&2

results=$work/results.tsv
: >"$results"
printf '%-9s %-8s %4s %4s %12s\n' role mode c rep tps >&2
for rep in $(seq "$REPS"); do
    for mode in $MODES; do
        for c in $CLIENTS; do
            j=$THREADS; [ "$c" -lt "$j" ] && j=$c
            for role in plain masked; do
                token=$PLAIN; [ "$role" = masked ] && token=$MASKED
                out=$(PGPASSWORD=$token "$PGBENCH" -h 127.0.0.1 -p "$SLUICE_PORT" -U "$role" -n -f "$work/select.sql" -M "$mode" -c "$c" -j "$j" -T "$DURATION" bench 2>&1) || {
                    echo "pgbench failed for $role $mode c=$c:" >&2; echo "$out" | tail -5 >&2; exit 1; }
                tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
                printf '%-9s %-8s %4s %4s %12s\n' "$role" "$mode" "$c" "$rep" "$tps" >&2
                printf '%s\t%s\t%s\t%s\t%s\n' "$role" "$mode" "$c" "$rep" "$tps" >>"$results"
            done
        done
    done
done

echo
echo "Median TPS over $REPS repetition(s), ${DURATION}s each, $ROWS rows, 1 of 10 columns masked, $(nproc) cores:"
python3 - "$results" "$MODES" "$CLIENTS" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
modes, clients = sys.argv[2].split(), sys.argv[3].split()
tps = collections.defaultdict(list)
for r, m, c, rep, v in rows:
    tps[(r, m, c)].append(float(v))
med = lambda k: statistics.median(tps[k])
print(f"{'mode':<8} {'c':>4} {'unmasked':>10} {'masked':>10} {'ratio':>7}")
for m in modes:
    for c in clients:
        u, x = med(("plain", m, c)), med(("masked", m, c))
        print(f"{m:<8} {c:>4} {u:>10.0f} {x:>10.0f} {x/u:>7.2f}")
m, c = modes[0], ("16" if "16" in clients else clients[0])
print(f"ratio masked/unmasked c={c} {m}: {med(('masked', m, c)) / med(('plain', m, c)):.2f}")
EOF
