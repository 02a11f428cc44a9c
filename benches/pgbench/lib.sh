# Shared by the pgbench harnesses (run.sh, masking.sh): sourced, not run.

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
