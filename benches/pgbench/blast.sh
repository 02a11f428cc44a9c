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
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$SLUICE_PORT) 2>/dev/null && break; sleep 0.1; done

# The limit must really be in force for the capped role (else the comparison means nothing).
err=$(PGPASSWORD=$CAPPED "$bindir/psql" -h 127.0.0.1 -p "$SLUICE_PORT" -U capped -qAt -d bench \
    -c "UPDATE pgbench_tellers SET tbalance = tbalance WHERE tid > 0" 2>&1 || true)
case $err in *max_affected_rows*) echo "capped role: $err" | head -1 >&2 ;; *) echo "the row limit is not in effect: $err" >&2; exit 1 ;; esac

results=$work/results.tsv
: >"$results"
printf '%-7s %-8s %4s %4s %12s\n' role mode c rep tps >&2
for rep in $(seq "$REPS"); do
    for mode in $MODES; do
        for c in $CLIENTS; do
            j=$THREADS; [ "$c" -lt "$j" ] && j=$c
            for role in plain capped; do
                token=$PLAIN; [ "$role" = capped ] && token=$CAPPED
                out=$(PGPASSWORD=$token "$PGBENCH" -h 127.0.0.1 -p "$SLUICE_PORT" -U "$role" -n -b tpcb-like -M "$mode" -c "$c" -j "$j" -T "$DURATION" bench 2>&1) || {
                    echo "pgbench failed for $role $mode c=$c:" >&2; echo "$out" | tail -5 >&2; exit 1; }
                tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
                printf '%-7s %-8s %4s %4s %12s\n' "$role" "$mode" "$c" "$rep" "$tps" >&2
                printf '%s\t%s\t%s\t%s\t%s\n' "$role" "$mode" "$c" "$rep" "$tps" >>"$results"
            done
        done
    done
done

echo
echo "Median TPS over $REPS repetition(s), ${DURATION}s each, TPC-B scale $SCALE, $(nproc) cores:"
python3 - "$results" "$MODES" "$CLIENTS" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
modes, clients = sys.argv[2].split(), sys.argv[3].split()
tps = collections.defaultdict(list)
for r, m, c, rep, v in rows:
    tps[(r, m, c)].append(float(v))
med = lambda k: statistics.median(tps[k])
print(f"{'mode':<8} {'c':>4} {'plain':>10} {'capped':>10} {'ratio':>7}")
for m in modes:
    for c in clients:
        u, x = med(("plain", m, c)), med(("capped", m, c))
        print(f"{m:<8} {c:>4} {u:>10.0f} {x:>10.0f} {x/u:>7.2f}")
m, c = modes[0], ("16" if "16" in clients else clients[0])
print(f"ratio capped/plain c={c} {m}: {med(('capped', m, c)) / med(('plain', m, c)):.2f}")
EOF
