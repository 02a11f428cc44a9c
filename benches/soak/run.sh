#!/usr/bin/env bash
# Faults and load against a real PostgreSQL and the `sluice` binary, on loopback only; one
# line of figures per scenario (the last lines of the output).
#
#   bash benches/soak/run.sh                               # every scenario, about 4 minutes
#   SCENARIOS="rolling idle" IDLE=2000 bash benches/soak/run.sh
#   SLUICE_BIN=target/debug/sluice bash benches/soak/run.sh   # measure a given binary
#
# Scenarios, in this order by default:
#   rolling          pgbench -C through one data plane; a second one starts on the same port
#                    and the first gets SIGTERM, twice over (failed clients, exit codes)
#   backend_restart  pg_ctl restart -m fast under pgbench (failed clients, recovery time)
#   backend_pause    the backend's processes SIGSTOPped for 10 s under pgbench, then resumed
#   dp_kill          the data plane SIGKILLed under pgbench -C and started again (recovery)
#   audit            `sluice up` (SQLite store) stopped with SIGTERM, then SIGKILLed, each
#                    right after a pgbench burst: statements run vs audit records stored
#   slowread         a client asks for ~1 GB and never reads it: gateway RSS, others' TPS
#   slowloris        clients that send their startup packet a byte a second (startup timeout)
#   idle             IDLE (10000) idle logged-in clients: RSS per client, login rate, and
#                    pgbench select-only c=64 beside them vs without them
#   storm            1,000 bad tokens a second while pgbench -C logs good clients in
#   spool_full       after `audit`: the same SIGTERM with the audit spool on a 1 MiB tmpfs
#                    (needs root): records run vs stored, loss markers
#
# Needs PostgreSQL server binaries and pgbench, python3, cargo (unless SLUICE_BIN is given).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SCENARIOS=${SCENARIOS:-"rolling backend_restart backend_pause dp_kill audit spool_full slowread slowloris idle storm"}
IDLE=${IDLE:-10000}
SCALE=${SCALE:-5}
CLIENTS=${CLIENTS:-8}

. benches/pgbench/lib.sh
find_postgres
build_sluice
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/sluice-soak.XXXXXX)
chmod 755 "$work"
pids=()
MOUNTS=()
results=$work/results.txt
: >"$results"
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
    if [ -f "$work/data/postmaster.pid" ]; then
        kill -CONT "$(head -1 "$work/data/postmaster.pid")" 2>/dev/null || true
        for c in $(ps -o pid= --ppid "$(head -1 "$work/data/postmaster.pid")" 2>/dev/null); do kill -CONT "$c" 2>/dev/null || true; done
    fi
    stop_postgres "$work"
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

PG_PORT=$(free_port)
start_postgres "$work" "$PG_PORT" <<EOF
max_connections = 200
shared_buffers = 128MB
synchronous_commit = off
EOF
"$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -c "create database bench" >/dev/null
"$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1

TOKEN=soak-$RANDOM$RANDOM
# config PORT METRICS_PORT: a data plane on PORT in front of the cluster.
config() {
    cat <<EOF
listen: 127.0.0.1:$1
cores: 2
metrics_listen: 127.0.0.1:$2
limits: { startup_timeout: 5s, drain_timeout: 10s }
auth:
  static_tokens: [{ token: "$TOKEN", subject: bench, groups: [bench] }]
connections:
  - name: bench
    port: $PG_PORT
    database: bench
    pool: { mode: transaction, size: 20, timeout: 3s, connect_timeout: 2s }
    users: [{ name: pg, user: postgres }]
roles:
  - { name: bench, groups: [bench], connections: { bench: pg }, policy: pgbench }
policies:
  - name: pgbench
    classes: { allow: [read, write, transaction, session] }
    tables: { allow: ["public.pgbench_*"] }
EOF
}

# start_dp NAME PORT: starts a data plane (log in $work/NAME.log); sets DP_PID, DP_METRICS.
start_dp() {
    local name=$1 port=$2
    DP_METRICS=$(free_port)
    config "$port" "$DP_METRICS" >"$work/$name.yaml"
    SLUICE_LOG=info "$SLUICE" dataplane --config "$work/$name.yaml" >"$work/$name.log" 2>&1 &
    DP_PID=$!
    pids+=("$DP_PID")
    for _ in $(seq 100); do grep -q "data plane listening" "$work/$name.log" && return; sleep 0.1; done
    echo "data plane $name did not start:" >&2; tail -5 "$work/$name.log" >&2; exit 1
}

# metric PORT NAME: the sum of a metric over the cores.
metric() {
    python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(sys.argv[2] + "{") or l.startswith(sys.argv[2] + " "))))
EOF
}

# bench PORT ARGS...: pgbench through the gateway on PORT; prints "txns aborted_clients tps
# where", where says at which point the aborted clients were: inside a transaction (txn),
# at its first statement (begin: BEGIN of tpcb, the SELECT of -S) or connecting (connect).
bench() {
    local port=$1; shift
    local out
    out=$(PGPASSWORD=$TOKEN "$PGBENCH" -h 127.0.0.1 -p "$port" -U bench -n "$@" bench 2>&1 || true)
    echo "$out" >>"$work/pgbench.all"
    local txns aborted tps first=4
    case " $* " in *" -S "*) first=1 ;; esac
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    aborted=$(echo "$out" | grep -cE "client [0-9]+ (script [0-9]+ )?aborted" || true)
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
    local connect begin txn
    connect=$(echo "$out" | grep -cE "client [0-9]+ aborted while establishing" || true)
    begin=$(echo "$out" | grep -cE "aborted in command $first[ (]" || true)
    txn=$((aborted - connect - begin))
    echo "${txns:-0} $aborted ${tps:-0} txn:$txn,begin:$begin,connect:$connect"
}

# wait_exit PID SECONDS: sets EXIT to the exit code of a background child, or "running".
wait_exit() {
    local pid=$1 secs=$2
    EXIT=running
    for _ in $(seq $((secs * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then EXIT=0; wait "$pid" || EXIT=$?; return; fi
        sleep 0.1
    done
}

# until_ok PORT: seconds until a query through the gateway on PORT succeeds (max 60).
until_ok() {
    local t0; t0=$(date +%s.%N)
    for _ in $(seq 600); do
        PGPASSWORD=$TOKEN PGCONNECT_TIMEOUT=2 "$bindir/psql" -h 127.0.0.1 -p "$1" -U bench -qAtX -c "select 1 from pgbench_branches limit 1" bench >/dev/null 2>&1 && break
        sleep 0.1
    done
    python3 -c "import time; print(f'{time.time() - $t0:.1f}')"
}

line() { echo "$*" | tee -a "$results"; }

scenario_rolling() {
    local port; port=$(free_port)
    start_dp roll-a "$port"; local a=$DP_PID
    bench "$port" -C -c "$CLIENTS" -j 2 -T 24 >"$work/roll.out" &
    local bp=$!
    sleep 5
    start_dp roll-b "$port"; local b=$DP_PID
    local t0; t0=$(date +%s%N)
    kill -TERM "$a"
    wait_exit "$a" 20; local code_a=$EXIT
    local drain_a=$(( ($(date +%s%N) - t0) / 1000000 ))
    sleep 5
    start_dp roll-c "$port"; local c=$DP_PID
    kill -TERM "$b"
    wait_exit "$b" 20; local code_b=$EXIT
    wait "$bp" || true
    read -r txns aborted tps where <"$work/roll.out"
    kill -TERM "$c"; wait_exit "$c" 20; local code_c=$EXIT
    line "rolling: pgbench -C c=$CLIENTS 24s, two restarts: txns=$txns clients_aborted=$aborted/$CLIENTS($where) tps=$tps exit_codes=$code_a,$code_b,$code_c first_drain_ms=$drain_a"
}

scenario_backend_restart() {
    local port; port=$(free_port)
    start_dp restart "$port"; local dp=$DP_PID
    bench "$port" -c "$CLIENTS" -j 2 -T 15 >"$work/restart.out" &
    local bp=$!
    sleep 5
    local t0; t0=$(date +%s.%N)
    as_pg "$bindir/pg_ctl" -D "$work/data" -m fast -w restart -l "$work/run/pg.log" >/dev/null
    local rec; rec=$(until_ok "$port")
    wait "$bp" || true
    read -r txns aborted tps where <"$work/restart.out"
    local after; after=$(bench "$port" -c "$CLIENTS" -j 2 -T 3)
    line "backend_restart: pg_ctl restart -m fast under pgbench c=$CLIENTS: txns=$txns clients_aborted=$aborted/$CLIENTS($where) recovery_s=$rec (after pg_ctl returned) pgbench_after='$after'"
    kill -TERM "$dp"; wait_exit "$dp" 20
}

scenario_backend_pause() {
    local port; port=$(free_port)
    start_dp pause "$port"; local dp=$DP_PID m=$DP_METRICS
    bench "$port" -c "$CLIENTS" -j 2 -T 25 >"$work/pause.out" &
    local bp=$!
    sleep 5
    local pm; pm=$(head -1 "$work/data/postmaster.pid")
    local procs="$pm $(ps -o pid= --ppid "$pm" | tr '\n' ' ')"
    kill -STOP $procs
    sleep 10
    kill -CONT $procs
    local rec; rec=$(until_ok "$port")
    wait "$bp" || true
    read -r txns aborted tps where <"$work/pause.out"
    local timeouts; timeouts=$(metric "$m" sluice_pool_timeouts_total 2>/dev/null || echo "?")
    local after; after=$(bench "$port" -c "$CLIENTS" -j 2 -T 3)
    line "backend_pause: SIGSTOP 10s under pgbench c=$CLIENTS: txns=$txns clients_aborted=$aborted/$CLIENTS($where) pool_timeouts=$timeouts recovery_s=$rec (after SIGCONT) pgbench_after='$after'"
    kill -TERM "$dp"; wait_exit "$dp" 20
}

scenario_dp_kill() {
    local port; port=$(free_port)
    start_dp kill-a "$port"; local a=$DP_PID
    bench "$port" -C -c "$CLIENTS" -j 2 -T 12 >"$work/kill.out" &
    local bp=$!
    sleep 4
    kill -KILL "$a"
    local t0; t0=$(date +%s.%N)
    start_dp kill-b "$port"; local b=$DP_PID
    local rec; rec=$(until_ok "$port")
    wait "$bp" || true
    read -r txns aborted tps where <"$work/kill.out"
    local after; after=$(bench "$port" -c "$CLIENTS" -j 2 -T 3)
    line "dp_kill: SIGKILL under pgbench -C c=$CLIENTS, restarted: txns=$txns clients_aborted=$aborted/$CLIENTS($where) restart_to_first_query_s=$rec pgbench_after='$after' (audit: see RELIABILITY.md)"
    kill -TERM "$b"; wait_exit "$b" 20
}

scenario_slowread() {
    local port; port=$(free_port)
    start_dp slowread "$port"; local dp=$DP_PID
    bench "$port" -S -c "$CLIENTS" -j 2 -T 2 >/dev/null   # warm-up
    local base; base=$(bench "$port" -S -c "$CLIENTS" -j 2 -T 5)
    python3 benches/soak/pgclient.py slowread --port "$port" --token "$TOKEN" --pid "$dp" --secs 12 \
        --sql "select repeat(md5(aid::text), 60) from pgbench_accounts" >"$work/slowread.out" &
    local sp=$!
    sleep 2
    local beside; beside=$(bench "$port" -S -c "$CLIENTS" -j 2 -T 5)
    wait "$sp" || true
    line "slowread: one client never reads ~1GB: $(cat "$work/slowread.out") select-only c=$CLIENTS before='$base' beside='$beside' (txns aborted tps where)"
    kill -TERM "$dp"; wait_exit "$dp" 20
}

scenario_slowloris() {
    local port; port=$(free_port)
    start_dp slowloris "$port"; local dp=$DP_PID m=$DP_METRICS
    python3 benches/soak/pgclient.py slowloris --port "$port" --n 500 --secs 12 >"$work/slowloris.out" &
    local sp=$!
    sleep 2
    local beside; beside=$(bench "$port" -S -C -c "$CLIENTS" -j 2 -T 5)
    wait "$sp" || true
    line "slowloris: 500 clients, a byte a second, startup_timeout 5s: $(cat "$work/slowloris.out") startup_timeouts=$(metric "$m" sluice_startup_timeouts_total) good pgbench -C beside='$beside'"
    kill -TERM "$dp"; wait_exit "$dp" 20
}

scenario_idle() {
    local port; port=$(free_port)
    start_dp idle "$port"; local dp=$DP_PID
    local alone; alone=$(bench "$port" -S -c 64 -j 2 -T 8)
    touch "$work/hold"
    python3 benches/soak/pgclient.py idle --port "$port" --token "$TOKEN" --pid "$dp" --n "$IDLE" \
        --hold-file "$work/hold" --ready-file "$work/ready" >"$work/idle.out" &
    local ip=$!
    for _ in $(seq 1200); do [ -f "$work/ready" ] && break; sleep 0.1; done
    local beside; beside=$(bench "$port" -S -c 64 -j 2 -T 8)
    rm -f "$work/hold"
    wait "$ip" || true
    line "idle: $(cat "$work/idle.out") select-only c=64 alone='$alone' beside_idle='$beside' (txns aborted tps where)"
    kill -TERM "$dp"; wait_exit "$dp" 30
}

scenario_storm() {
    local port; port=$(free_port)
    start_dp storm "$port"; local dp=$DP_PID
    local lines0; lines0=$(wc -l <"$work/storm.log")
    python3 benches/soak/pgclient.py storm --port "$port" --rate 1000 --secs 10 >"$work/storm.out" &
    local sp=$!
    sleep 1
    local good; good=$(bench "$port" -S -C -c 4 -j 2 -T 8)
    wait "$sp" || true
    local lines=$(( $(wc -l <"$work/storm.log") - lines0 ))
    line "storm: $(cat "$work/storm.out") good pgbench -C c=4 beside='$good' (txns aborted tps where) log_lines=$lines"
    kill -TERM "$dp"; wait_exit "$dp" 20
}

# start_up NAME: `sluice up` with its store in $work/up (log in $work/NAME.log); sets UP_PID.
start_up() {
    SLUICE_LOG=info "$SLUICE" up --listen "127.0.0.1:$UP_API" --data-dir "$work/up" --config "$work/up.yaml" >"$work/$1.log" 2>&1 &
    UP_PID=$!
    pids+=("$UP_PID")
    for _ in $(seq 200); do grep -q "sluice data plane on" "$work/$1.log" && return; sleep 0.1; done
    echo "sluice up did not start:" >&2; tail -5 "$work/$1.log" >&2; exit 1
}

# stored_audit: audit records of pgbench's SELECT in the store, and how many repeat another
# (same session, millisecond, text and duration: pgbench may draw the same account twice).
stored_audit() {
    python3 - "$work/up/sluice.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
n, distinct = db.execute(
    "select count(*), count(distinct coalesce(session_id,'') || '/' || at_ms || '/' || statement || '/' || coalesce(duration_us,-1)) "
    "from audit_records where statement like '%abalance%'").fetchone()
print(n, n - distinct)
EOF
}

scenario_audit() {
    local port; port=$(free_port)
    UP_API=$(free_port)
    cat >"$work/up.yaml" <<EOF
listen: 127.0.0.1:$port
cores: 2
auth:
  static_tokens: [{ token: "$TOKEN", subject: bench, groups: [bench] }]
EOF
    cat >"$work/doc.yaml" <<EOF
connections:
  - name: bench
    host: 127.0.0.1
    port: $PG_PORT
    database: bench
    pool: { mode: transaction, size: 20, timeout: 3s }
    users: [{ name: pg, user: postgres }]
roles:
  - { name: bench, subjects: [bench], connections: { bench: pg }, policy: pgbench }
policies:
  - name: pgbench
    classes: { allow: [read, write, transaction, session] }
    tables: { allow: ["public.pgbench_*"] }
EOF
    start_up up-1
    SLUICE_SERVER=http://127.0.0.1:$UP_API SLUICE_TOKEN=$(cat "$work/up/admin.token") "$SLUICE" apply -f "$work/doc.yaml" >/dev/null
    until_ok "$port" >/dev/null
    # SIGTERM right after a burst: what the shipper holds must reach the store.
    local term; term=$(bench "$port" -S -c "$CLIENTS" -j 2 -T 5)
    kill -TERM "$UP_PID"; wait_exit "$UP_PID" 30; local code=$EXIT
    local spooled; spooled=$(sed 's/\x1b\[[0-9;]*m//g' "$work/up-1.log" | sed -n 's/.*audit shipper stopped.*spooled_batches=\([0-9]*\).*/\1/p')
    start_up up-2
    wait_spool_empty
    local stored1 dup1; read -r stored1 dup1 <<<"$(stored_audit)"
    # SIGKILL right after a burst: what the store acknowledged or the spool holds is there
    # once; what the data plane still held in memory is lost.
    local kill; kill=$(bench "$port" -S -c "$CLIENTS" -j 2 -T 5)
    kill -KILL "$UP_PID"; wait_exit "$UP_PID" 5
    start_up up-3
    wait_spool_empty
    local stored2 dup2; read -r stored2 dup2 <<<"$(stored_audit)"
    kill -TERM "$UP_PID"; wait_exit "$UP_PID" 30
    line "audit (sluice up, SQLite store): SIGTERM right after pgbench -S c=$CLIENTS 5s: statements=${term%% *} stored=$stored1 repeats=$dup1 exit=$code spooled_batches_at_exit=$spooled; SIGKILL right after another 5s: statements=${kill%% *} stored=$((stored2 - stored1)) repeats=$((dup2 - dup1))"
}

# wait_spool_empty: until the data plane's audit spool has sent every batch (max 120 s).
wait_spool_empty() {
    for _ in $(seq 1200); do
        [ -z "$(ls "$work/up/dataplane/audit-spool" 2>/dev/null | grep -v '^LOCK$')" ] && break
        sleep 0.1
    done
    sleep 2
}

# spool_full: as the SIGTERM half of `audit`, with the data plane's audit spool on a 1 MiB
# tmpfs (mounting needs root): what does not fit is dropped, counted and reported.
scenario_spool_full() {
    if [ "$(id -u)" -ne 0 ]; then line "spool_full: skipped (mounting a tmpfs needs root)"; return; fi
    local port; port=$(free_port)
    UP_API=$(free_port)
    rm -rf "$work/up"
    mkdir -p "$work/up/dataplane/audit-spool"
    mount -t tmpfs -o size=1m,mode=0700 tmpfs "$work/up/dataplane/audit-spool"
    MOUNTS+=("$work/up/dataplane/audit-spool")
    sed "s/^listen: .*/listen: 127.0.0.1:$port/" "$work/up.yaml" >"$work/up.yaml.new" && mv "$work/up.yaml.new" "$work/up.yaml"
    start_up spool-1
    SLUICE_SERVER=http://127.0.0.1:$UP_API SLUICE_TOKEN=$(cat "$work/up/admin.token") "$SLUICE" apply -f "$work/doc.yaml" >/dev/null
    until_ok "$port" >/dev/null
    local run; run=$(bench "$port" -S -c "$CLIENTS" -j 2 -T 5)
    kill -TERM "$UP_PID"; wait_exit "$UP_PID" 30; local code=$EXIT
    local stopped; stopped=$(sed 's/\x1b\[[0-9;]*m//g' "$work/spool-1.log" | grep -E "spool|dropped" | tail -3 | cut -c1-200 | tr '\n' ' ')
    start_up spool-2
    wait_spool_empty
    kill -TERM "$UP_PID"; wait_exit "$UP_PID" 30
    local stored; read -r stored _ <<<"$(stored_audit)"
    local markers; markers=$(python3 -c "import sqlite3; print(sqlite3.connect('$work/up/sluice.db').execute(\"select count(*), coalesce(sum(row_count),0) from audit_records where identity='sluice:audit'\").fetchone())")
    line "spool_full (1 MiB tmpfs spool, sluice up): statements=${run%% *} stored=$stored loss_markers(count,records)=$markers exit=$code log: $stopped"
}

for s in $SCENARIOS; do
    echo "--- $s" >&2
    "scenario_$s"
done

echo
echo "soak figures ($(nproc) cores, $(date -u +%FT%TZ), binary $SLUICE):"
cat "$results"
