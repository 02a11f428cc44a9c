# Shared by the pgbench harnesses (run.sh, masking.sh, blast.sh): sourced, not run.

# Sets `bindir` (PostgreSQL's server binaries) and `PGBENCH`, or exits saying what to install.
find_postgres() {
    bindir=$(pg_config --bindir 2>/dev/null || true)
    [ -x "$bindir/postgres" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$bindir/postgres" ] || { echo "no PostgreSQL server binaries: apt-get install -y postgresql" >&2; exit 1; }
    PGBENCH=$bindir/pgbench
    [ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench)
}

# Builds the release binary and sets `SLUICE` to it; `SLUICE_BIN=PATH` measures that binary
# instead (another build, e.g. an older commit's, in the same conditions).
build_sluice() {
    if [ -n "${SLUICE_BIN:-}" ]; then
        SLUICE=$SLUICE_BIN
        return
    fi
    echo "building sluice (release) ..." >&2
    cargo build --release --quiet
    SLUICE=$PWD/target/release/sluice
}

# The server refuses to run as root: run it as the postgres account when we are root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_postgres WORK PORT: a throwaway cluster in WORK/data on 127.0.0.1:PORT (trust auth,
# fsync off); further postgresql.conf lines come on stdin.
start_postgres() {
    local work=$1 port=$2
    mkdir -p "$work/data" "$work/run"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$work/data" "$work/run"
    as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >/dev/null
    {
        printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\n" "$port" "$work/run"
        cat
    } >>"$work/data/postgresql.conf"
    as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/run/pg.log" -w start >/dev/null
}

# stop_postgres WORK: stops the cluster start_postgres left in WORK, if it runs.
stop_postgres() {
    if [ -f "$1/data/postmaster.pid" ]; then as_pg "$bindir/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true; fi
}

# wait_for_port PORT: waits up to 5 s for something to accept on 127.0.0.1:PORT.
wait_for_port() {
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && break; sleep 0.1; done
}

# compare_roles BASE BASE_TOKEN ROLE ROLE_TOKEN PGBENCH_ARGS...: pgbench through the Sluice on
# $SLUICE_PORT (database bench) as role BASE and as role ROLE, alternated, for each of $REPS
# repetitions, $MODES and $CLIENTS ($DURATION s, up to $THREADS threads); progress on stderr,
# `role mode c rep tps` lines in the file $results. Stops on a failed run.
compare_roles() {
    local base=$1 base_token=$2 role=$3 role_token=$4 rep mode c j r token out tps
    shift 4
    : >"$results"
    printf '%-9s %-8s %4s %4s %12s\n' role mode c rep tps >&2
    for rep in $(seq "$REPS"); do
        for mode in $MODES; do
            for c in $CLIENTS; do
                j=$THREADS; [ "$c" -lt "$j" ] && j=$c
                for r in "$base" "$role"; do
                    token=$base_token; [ "$r" = "$role" ] && token=$role_token
                    out=$(PGPASSWORD=$token "$PGBENCH" -h 127.0.0.1 -p "$SLUICE_PORT" -U "$r" -n "$@" -M "$mode" -c "$c" -j "$j" -T "$DURATION" bench 2>&1) || {
                        echo "pgbench failed for $r $mode c=$c:" >&2; echo "$out" | tail -5 >&2; exit 1; }
                    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
                    printf '%-9s %-8s %4s %4s %12s\n' "$r" "$mode" "$c" "$rep" "$tps" >&2
                    printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$mode" "$c" "$rep" "$tps" >>"$results"
                done
            done
        done
    done
}

# summarise_roles BASE BASE_LABEL ROLE ROLE_LABEL: the median TPS per mode and client count
# from $results (as compare_roles wrote it) with the ratio ROLE/BASE, and a last line
# `ratio ROLE_LABEL/BASE_LABEL c=16 MODE: X` (the first mode; c=16 if measured).
summarise_roles() {
    python3 - "$results" "$MODES" "$CLIENTS" "$@" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
modes, clients = sys.argv[2].split(), sys.argv[3].split()
base, base_label, role, label = sys.argv[4:8]
tps = collections.defaultdict(list)
for r, m, c, rep, v in rows:
    tps[(r, m, c)].append(float(v))
med = lambda k: statistics.median(tps[k])
print(f"{'mode':<8} {'c':>4} {base_label:>10} {label:>10} {'ratio':>7}")
for m in modes:
    for c in clients:
        u, x = med((base, m, c)), med((role, m, c))
        print(f"{m:<8} {c:>4} {u:>10.0f} {x:>10.0f} {x/u:>7.2f}")
m, c = modes[0], ("16" if "16" in clients else clients[0])
print(f"ratio {label}/{base_label} c={c} {m}: {med((role, m, c)) / med((base, m, c)):.2f}")
PY
}
