#!/usr/bin/env bash
# Whole-system benchmark: pgbench directly against PostgreSQL, through PgBouncer (transaction
# pooling) and through Sluice (transaction pooling), interleaved in one run, with ratios and
# each proxy's CPU time per transaction (utime+stime from /proc/PID/stat over the run ÷
# transactions). PgBouncer 1.18 has no named statements in transaction pooling: its
# `-M prepared` cells stay empty.
#
#   bash benches/pgbench/run.sh                 # full matrix (~10 min on 2 cores)
#   DURATION=3 REPS=1 CLIENTS="16 64" bash benches/pgbench/run.sh   # quick look
#
# Needs: PostgreSQL server binaries and pgbench (apt-get install postgresql), pgbouncer
# (apt-get install pgbouncer), cargo. Everything runs on 127.0.0.1 and is removed at exit.
# The last line is `ratio sluice/pgbouncer select-only c=64 simple: X`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DURATION=${DURATION:-8}
REPS=${REPS:-2}
CLIENTS=${CLIENTS:-"1 16 64 256"}
MODES=${MODES:-"simple extended prepared"}
SCRIPTS=${SCRIPTS:-"select-only tpcb"}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
THREADS=${THREADS:-2}

. benches/pgbench/lib.sh
find_postgres
command -v pgbouncer >/dev/null || { echo "no pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
build_sluice

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # runuser's child is pgbouncer itself: stop it by its pidfile.
    if [ -f "$work/pgbouncer.pid" ]; then kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true; fi
    stop_postgres "$work"
    rm -rf "$work"
}
trap cleanup EXIT

PG_PORT=$(free_port)
start_postgres "$work" "$PG_PORT" <<EOF
max_connections = 400
shared_buffers = 256MB
synchronous_commit = off
full_page_writes = off
EOF
"$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -c "create database bench" >/dev/null
"$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1

BOUNCER_PORT=$(free_port)
cat >"$work/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
EOF
echo '"bench" ""' >"$work/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$work"
as_pg pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

SLUICE_PORT=$(free_port)
TOKEN=bench-$RANDOM$RANDOM
cat >"$work/sluice.yaml" <<EOF
listen: 127.0.0.1:$SLUICE_PORT
cores: $THREADS
auth:
  static_tokens: [{ token: "$TOKEN", subject: bench, groups: [bench] }]
connections:
  - name: bench
    port: $PG_PORT
    database: bench
    pool: { mode: transaction, size: $POOL_SIZE }
    users: [{ name: pg, user: postgres }]
roles:
  - { name: bench, groups: [bench], connections: { bench: pg }, policy: pgbench }
policies:
  # Every statement is parsed and judged (verdicts cached per core by text).
  - name: pgbench
    classes: { allow: [read, write, transaction, session] }
    tables: { allow: ["public.pgbench_*"] }
EOF
SLUICE_LOG=warn "$SLUICE" dataplane --config "$work/sluice.yaml" &
pids+=($!)
SLUICE_PID=$!

for port in "$BOUNCER_PORT" "$SLUICE_PORT"; do
    wait_for_port "$port"
done

BOUNCER_PID=$(cat "$work/pgbouncer.pid")

# target name → the proxy's pid (none for direct)
proxy_pid() {
    case $1 in
        pgbouncer) echo "$BOUNCER_PID" ;;
        sluice) echo "$SLUICE_PID" ;;
    esac
}

# CPU clock ticks (user + system, all threads) a process has used; 0 without a process.
cpu_ticks() {
    if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi
}

# target name → connection options
conn() {
    case $1 in
        direct) echo "-h 127.0.0.1 -p $PG_PORT -U postgres bench" ;;
        pgbouncer) echo "-h 127.0.0.1 -p $BOUNCER_PORT -U bench bench" ;;
        sluice) echo "-h 127.0.0.1 -p $SLUICE_PORT -U bench bench" ;;
    esac
}

results=$work/results.tsv
: >"$results"
printf '%-10s %-11s %-8s %5s %4s %12s %10s %10s\n' target script mode c rep tps lat_ms cpu_us >&2
for rep in $(seq "$REPS"); do
    for script in $SCRIPTS; do
        sflag=""; [ "$script" = select-only ] && sflag="-S"
        for mode in $MODES; do
            for c in $CLIENTS; do
                j=$THREADS; [ "$c" -lt "$j" ] && j=$c
                for target in direct pgbouncer sluice; do
                    [ "$target" = pgbouncer ] && [ "$mode" = prepared ] && continue
                    pid=$(proxy_pid $target)
                    t0=$(cpu_ticks "$pid")
                    out=$(PGPASSWORD=$TOKEN "$PGBENCH" $(conn $target) $sflag -M "$mode" -c "$c" -j "$j" -T "$DURATION" -n 2>&1) || {
                        echo "pgbench failed for $target $script $mode c=$c:" >&2; echo "$out" | tail -5 >&2; exit 1; }
                    t1=$(cpu_ticks "$pid")
                    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
                    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
                    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
                    cpu=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$txns" 'BEGIN { printf "%.1f", (n > 0 ? d / hz * 1e6 / n : 0) }')
                    printf '%-10s %-11s %-8s %5s %4s %12s %10s %10s\n' "$target" "$script" "$mode" "$c" "$rep" "$tps" "$lat" "$cpu" >&2
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$script" "$mode" "$c" "$rep" "$tps" "$lat" "$cpu" >>"$results"
                done
            done
        done
    done
done

echo
echo "Medians over $REPS repetition(s), ${DURATION}s each, scale $SCALE, pool $POOL_SIZE, $(nproc) cores"
echo "(TPS; mean latency in ms; proxy CPU in µs per transaction; ratios of Sluice's TPS):"
python3 - "$results" "$SCRIPTS" "$MODES" "$CLIENTS" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
scripts, modes, clients = sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
tps, lat, cpu = (collections.defaultdict(list) for _ in range(3))
for t, s, m, c, r, v, l, u in rows:
    tps[(t, s, m, c)].append(float(v)); lat[(t, s, m, c)].append(float(l)); cpu[(t, s, m, c)].append(float(u))
def med(d, k):
    return statistics.median(d[k]) if k in d else None
def cell(v, fmt):
    return "—" if v is None else format(v, fmt)
def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b
print(f"{'script':<11} {'mode':<8} {'c':>4} {'direct':>8} {'pgbouncer':>9} {'sluice':>8} {'lat d/b/s':>17} "
      f"{'cpu b':>7} {'cpu s':>7} {'s/direct':>8} {'s/bouncer':>9}")
for s in scripts:
    for m in modes:
        for c in clients:
            d, b, x = (med(tps, (t, s, m, c)) for t in ("direct", "pgbouncer", "sluice"))
            ld, lb, lx = (med(lat, (t, s, m, c)) for t in ("direct", "pgbouncer", "sluice"))
            cb, cx = (med(cpu, (t, s, m, c)) for t in ("pgbouncer", "sluice"))
            lats = "/".join(cell(v, ".2f") for v in (ld, lb, lx))
            print(f"{s:<11} {m:<8} {c:>4} {cell(d, '.0f'):>8} {cell(b, '.0f'):>9} {cell(x, '.0f'):>8} {lats:>17} "
                  f"{cell(cb, '.0f'):>7} {cell(cx, '.0f'):>7} {cell(ratio(x, d), '.2f'):>8} {cell(ratio(x, b), '.2f'):>9}")
k = ("select-only", "simple", "64")
if all((t,) + k in tps for t in ("sluice", "pgbouncer")):
    print(f"ratio sluice/pgbouncer select-only c=64 simple: {med(tps, ('sluice',) + k) / med(tps, ('pgbouncer',) + k):.2f}")
EOF
