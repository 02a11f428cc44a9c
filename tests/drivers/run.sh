#!/usr/bin/env bash
# Runs a PostgreSQL driver's own test suite straight at PostgreSQL or through Sluice.
#
#   bash tests/drivers/run.sh SUITE [direct|session|transaction]
#
# SUITE: asyncpg | pg8000 | tokio-postgres (versions below), or probes (tests/drivers/probes.py:
# a few checks of our own for behaviours the suites do not exercise). The last line printed is
# `N passed, M failed, K skipped` (errors count as failed). Per-test results go to
# $DRIVERS_RESULTS (default /tmp/sluice-drivers-results): SUITE-MODE.failed lists the failing
# test ids, SUITE-MODE.log the suite's output, SUITE-MODE.gateway.log the gateway's log.
#
# Not part of CI: slow (minutes per suite), and it needs the network once to fetch the suites
# from their registries (PyPI, crates.io) into $DRIVERS_CACHE (default
# /tmp/sluice-drivers-cache; nothing is written into the repository). Each run starts its own
# PostgreSQL cluster (initdb in a temp dir, 127.0.0.1, a free port; as the postgres account when
# run as root) and, unless `direct`, its own gateway (SLUICE_BIN, else a release build) with
# client TLS (a self-signed certificate), a static token, and a role whose policy allows every
# statement class. Everything is stopped and removed at exit.
#
# Environment: SLUICE_BIN (gateway binary), DRIVERS_CACHE, DRIVERS_RESULTS, SUITE_TIMEOUT
# (seconds for the whole suite, default 2400), TEST_TIMEOUT (seconds per test, default 120),
# PYTEST_ARGS (extra arguments for the Python suites, e.g. `-k test_copy`), CORES (gateway
# worker threads, default 2), POOL_SIZE (default 40).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

ASYNCPG_VERSION=0.30.0
PG8000_VERSION=1.31.6
TOKIO_POSTGRES_VERSION=0.7.18

SUITE=${1:?usage: run.sh SUITE [direct|session|transaction]}
MODE=${2:-direct}
case $MODE in direct | session | transaction) ;; *) echo "mode: direct, session or transaction" >&2; exit 2 ;; esac
CACHE=${DRIVERS_CACHE:-/tmp/sluice-drivers-cache}
RESULTS=${DRIVERS_RESULTS:-/tmp/sluice-drivers-results}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-2400}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
CORES=${CORES:-2}
POOL_SIZE=${POOL_SIZE:-40}
mkdir -p "$CACHE" "$RESULTS"
out=$RESULTS/$SUITE-$MODE

. benches/pgbench/lib.sh
bindir=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ -x "$bindir/postgres" ] || find_postgres

# ---------------------------------------------------------------- suites: fetch (cached)

# The Python suites come as sdists (they carry the tests); the driver itself is the wheel of the
# same version, so the tests exercise what users install.
pip_suite() { # NAME VERSION → $CACHE/NAME-VERSION (unpacked sdist)
    local name=$1 version=$2
    if [ ! -d "$CACHE/$name-$version" ]; then
        python3 -m pip download -q --no-binary :all: --no-deps --no-build-isolation \
            -d "$CACHE/dl" "$name==$version" >&2 || true   # metadata errors after the download are harmless
        tar xzf "$CACHE/dl/$name-$version.tar.gz" -C "$CACHE"
    fi
    python3 -c "import $name, sys; sys.exit(0 if getattr($name, '__version__', '$version') == '$version' else 1)" 2>/dev/null ||
        python3 -m pip install -q "$name==$version" >&2
}

prepare_asyncpg() {
    pip_suite asyncpg "$ASYNCPG_VERSION"
    python3 -c "import pytest, pytest_timeout, distro" 2>/dev/null || python3 -m pip install -q pytest pytest-timeout "distro~=1.9.0" >&2
    # Only the tests: the sdist's asyncpg/ (uncompiled) must not shadow the installed wheel.
    suite_dir=$CACHE/asyncpg-tests-$ASYNCPG_VERSION
    if [ ! -d "$suite_dir" ]; then
        mkdir -p "$suite_dir"
        cp -r "$CACHE/asyncpg-$ASYNCPG_VERSION/tests" "$suite_dir/"
    fi
}

prepare_pg8000() {
    pip_suite pg8000 "$PG8000_VERSION"
    python3 -c "import pytest, pytest_timeout, pytest_mock, pytest_benchmark, pytz" 2>/dev/null ||
        python3 -m pip install -q pytest pytest-timeout pytest-mock pytest-benchmark pytz >&2
    suite_dir=$CACHE/pg8000-tests-$PG8000_VERSION
    if [ ! -d "$suite_dir" ]; then
        mkdir -p "$suite_dir"
        cp -r "$CACHE/pg8000-$PG8000_VERSION/test" "$suite_dir/"
    fi
    # test_readme.py runs the README's examples.
    [ -f "$suite_dir/README.md" ] || cp "$CACHE/pg8000-$PG8000_VERSION/README.md" "$suite_dir/"
}

# tokio-postgres: the crates.io package carries tests/test/. A throwaway cargo project (in the
# cache) depends on the published crate and compiles those test files, with the fixed
# connection strings (`host=localhost port=5433 user=postgres`) replaced by the environment's
# DRIVERS_CONNSTR at run time (read by a `connect` shim).
prepare_tokio-postgres() {
    suite_dir=$CACHE/tokio-postgres-suite-$TOKIO_POSTGRES_VERSION
    if [ ! -f "$suite_dir/.built" ]; then
        bash "$repo/tests/drivers/tokio_postgres_project.sh" "$suite_dir" "$TOKIO_POSTGRES_VERSION" >&2
        touch "$suite_dir/.built"
    fi
}

prepare_probes() {
    python3 -c "import psycopg, pytest, pytest_timeout" 2>/dev/null || python3 -m pip install -q "psycopg[binary]" pytest pytest-timeout >&2
    suite_dir=$repo/tests/drivers
}

"prepare_$SUITE"

# ---------------------------------------------------------------- PostgreSQL and the gateway

work=$(mktemp -d /tmp/sluice-drivers.XXXXXX)
chmod 755 "$work"
gateway_pid=
cleanup() {
    # What the suite left on the backend (sessions idle in a transaction, ...), before stopping.
    if [ -f "$work/data/postmaster.pid" ]; then
        "$bindir/psql" -h "$work/run" -p "$PG_PORT" -U postgres -d postgres -AtX -F ' | ' -c \
            "select state, coalesce(application_name, ''), count(*) from pg_stat_activity
             where backend_type = 'client backend' and pid <> pg_backend_pid() group by 1, 2 order by 1, 2" \
            >"$out.activity" 2>&1 || true
    fi
    if [ -n "$gateway_pid" ]; then kill "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true; fi
    [ -f "$work/sluice.log" ] && cp "$work/sluice.log" "$out.gateway.log"
    [ -f "$work/run/pg.log" ] && cp "$work/run/pg.log" "$out.postgres.log"
    stop_postgres "$work"
    rm -rf "$work"
}
trap cleanup EXIT

# One self-signed certificate serves both PostgreSQL (ssl = on, as the drivers' CI runs it) and
# the gateway's client TLS.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1
chmod 600 "$work/tls.key"
PG_PASSWORD=pg-$(openssl rand -hex 12)
PG_PORT=$(free_port)
mkdir -p "$work/data" "$work/run"
cp "$work/tls.crt" "$work/tls.key" "$work/run/"
printf '%s\n' "$PG_PASSWORD" >"$work/run/pwfile"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$work/data" "$work/run"
as_pg "$bindir/initdb" -D "$work/data" -U postgres --pwfile="$work/run/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C >/dev/null
rm -f "$work/run/pwfile"
cat >>"$work/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$work/run'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
max_prepared_transactions = 20
jit = off
ssl = on
ssl_cert_file = '$work/run/tls.crt'
ssl_key_file = '$work/run/tls.key'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
# What the suites' own CI sets up (rust-postgres's docker/sql_setup.sh): roles for each
# backend password method, and the extensions the type tests use.
cat >"$work/data/pg_hba.conf" <<EOF
local all all trust
host all pass_user 127.0.0.1/32 password
host all md5_user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
EOF
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/run/pg.log" -w start >/dev/null
psql_admin() { "$bindir/psql" -h "$work/run" -p "$PG_PORT" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres >/dev/null <<'EOF'
SET password_encryption = 'md5';
CREATE ROLE md5_user PASSWORD 'password' LOGIN;
SET password_encryption = 'scram-sha-256';
CREATE ROLE pass_user PASSWORD 'password' LOGIN;
CREATE ROLE scram_user PASSWORD 'password' LOGIN;
EOF
# (asyncpg's tests create citext themselves, and fail if it exists.)
[ "$SUITE" = tokio-postgres ] && psql_admin -d postgres >/dev/null \
    -c "CREATE EXTENSION hstore" -c "CREATE EXTENSION citext" -c "CREATE EXTENSION ltree"
[ "$SUITE" = pg8000 ] && psql_admin -d postgres >/dev/null -c "CREATE EXTENSION hstore"

if [ "$MODE" = direct ]; then
    HOST=127.0.0.1 PORT=$PG_PORT PASSWORD=$PG_PASSWORD
else
    if [ -n "${SLUICE_BIN:-}" ]; then
        SLUICE=$SLUICE_BIN
    else
        echo "building sluice (release) ..." >&2
        cargo build --release --quiet --bin sluice
        SLUICE=$repo/target/release/sluice
    fi
    GW_PORT=$(free_port)
    TOKEN=drivers-$(openssl rand -hex 16)
    export SLUICE_DRIVERS_PG_PASSWORD=$PG_PASSWORD
    # Every database name a suite connects to must be a connection (dbname names one): the
    # suites' own databases too (created by the tests, then connected to).
    dbs="postgres template1 testdb asyncpg_intro_test pg8000_scram_sha_256"
    conns="" grants=""
    for db in $dbs; do
        grants+="$db: su, "
        conns+="
  - name: $db
    host: 127.0.0.1
    port: $PG_PORT
    database: $db
    tls: disable
    pool: { mode: $MODE, size: $POOL_SIZE, timeout: 30s, connect_timeout: 5s }
    users: [{ name: su, user: postgres, password: \${SLUICE_DRIVERS_PG_PASSWORD} }]"
    done
    grants=${grants%, }
    cat >"$work/sluice.yaml" <<EOF
listen: 127.0.0.1:$GW_PORT
cores: $CORES
tls:
  cert: $work/tls.crt
  key: $work/tls.key
auth:
  static_tokens: [{ token: "$TOKEN", subject: driver-suite, groups: [drivers] }]
connections:$conns
roles:
  - { name: drivers, groups: [drivers], connections: { $grants }, policy: everything }
policies:
  # Every statement class and every flag; no masking. Of the built-in function list, only
  # pg_terminate_backend is lifted (as an operator's role would): the suites end their own
  # connections with it.
  - name: everything
    classes: { allow: [read, write, ddl, dcl, admin, copy, transaction, session] }
    functions: { allow_builtin_denied: [pg_terminate_backend] }
    require_where: false
    allow_copy_program: true
    allow_copy_file: true
    allow_set_role: true
    allow_set_search_path: true
    allow_data_modifying_cte: true
    allow_explain_analyze_write: true
    allow_do_blocks: true
    allow_code_definitions: true
    allow_unparsed: true
EOF
    "$SLUICE" check-config "$work/sluice.yaml" >/dev/null
    NO_COLOR=1 SLUICE_LOG=${SLUICE_LOG:-info} "$SLUICE" dataplane --config "$work/sluice.yaml" >"$work/sluice.log" 2>&1 &
    gateway_pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && break; sleep 0.1; done
    HOST=127.0.0.1 PORT=$GW_PORT PASSWORD=$TOKEN
fi

# ---------------------------------------------------------------- run

# Summarises a JUnit XML report: writes $out.failed and prints the count line.
junit_summary() {
    python3 - "$1" "$out.failed" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print(f"no report ({e})", file=sys.stderr); open(sys.argv[2], "w").close()
    print("0 passed, 1 failed, 0 skipped"); sys.exit()
passed = failed = skipped = 0
bad = []
for tc in root.iter("testcase"):
    name = f"{tc.get('classname')}::{tc.get('name')}"
    kinds = {c.tag for c in tc}
    if kinds & {"failure", "error"}:
        failed += 1
        el = next(c for c in tc if c.tag in ("failure", "error"))
        msg = (el.get("message") or "").replace("\n", " ")[:300]
        bad.append(f"{name}\t{msg}")
    elif "skipped" in kinds:
        skipped += 1
    else:
        passed += 1
open(sys.argv[2], "w").write("".join(b + "\n" for b in sorted(bad)))
print(f"{passed} passed, {failed} failed, {skipped} skipped")
EOF
}

rc=0
case $SUITE in
asyncpg)
    # asyncpg's test base uses an existing server when PGHOST is set (asyncpg/_testbase).
    (cd "$suite_dir" && PGHOST=$HOST PGPORT=$PORT PGUSER=postgres PGPASSWORD=$PASSWORD PGDATABASE=postgres \
        PGSSLMODE=prefer PGBIN=$bindir \
        timeout -k 10 "$SUITE_TIMEOUT" python3 -m pytest -p no:cacheprovider -q -rN \
        --timeout="$TEST_TIMEOUT" --junitxml="$work/report.xml" --ignore=tests/test__sourcecode.py ${PYTEST_ARGS:-} tests) >"$out.log" 2>&1 || rc=$?
    junit_summary "$work/report.xml"
    ;;
pg8000)
    # pg8000's conftests read PGHOST/PGPORT/PGPASSWORD; user and database are `postgres`. Left
    # out: auth/ (each needs its own pg_hba.conf line and database) and the benchmarks.
    (cd "$suite_dir" && PGHOST=$HOST PGPORT=$PORT PGPASSWORD=$PASSWORD \
        timeout -k 10 "$SUITE_TIMEOUT" python3 -m pytest -p no:cacheprovider -q -rN \
        --timeout="$TEST_TIMEOUT" --junitxml="$work/report.xml" \
        --ignore=test/native/auth --ignore=test/dbapi/auth --ignore=test/legacy/auth \
        --ignore=test/native/test_benchmarks.py --ignore=test/dbapi/test_benchmarks.py \
        --ignore=test/legacy/test_benchmarks.py --ignore=test/legacy/stress.py \
        ${PYTEST_ARGS:-} test) >"$out.log" 2>&1 || rc=$?
    junit_summary "$work/report.xml"
    ;;
tokio-postgres)
    connstr="host=$HOST port=$PORT user=postgres password=$PASSWORD dbname=postgres"
    (cd "$suite_dir" && DRIVERS_CONNSTR=$connstr DRIVERS_HOST=$HOST DRIVERS_PORT=$PORT DRIVERS_PASSWORD=$PASSWORD \
        timeout -k 10 "$SUITE_TIMEOUT" ./test-binary --test-threads=4 ${TEST_FILTER:-}) >"$out.log" 2>&1 || rc=$?
    python3 - "$out.log" "$out.failed" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
res = re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", text, re.M)
bad = sorted(n for n, r in res if r == "FAILED")
# the first line of each failure's panic message
msgs = {}
for m in re.finditer(r"^---- (\S+) stdout ----\n(.*?)(?:\n\n|\Z)", text, re.M | re.S):
    body = " ".join(l for l in m.group(2).splitlines() if "panicked" not in l)[:300]
    msgs[m.group(1)] = body
open(sys.argv[2], "w").write("".join(f"{n}\t{msgs.get(n, '')}\n" for n in bad))
p = sum(r == "ok" for _, r in res); s = sum(r == "ignored" for _, r in res)
f = len(bad)
if not res:
    f = 1
print(f"{p} passed, {f} failed, {s} skipped")
EOF
    ;;
probes)
    # Our own checks (tests/drivers/probes.py) of behaviours the suites do not exercise.
    (cd "$work" && PGHOST=$HOST PGPORT=$PORT PGPASSWORD=$PASSWORD DRIVERS_MODE=$MODE \
        ADMIN_HOST=$work/run ADMIN_PORT=$PG_PORT GATEWAY_LOG=$([ "$MODE" = direct ] || echo "$work/sluice.log") \
        timeout -k 10 "$SUITE_TIMEOUT" python3 -m pytest -p no:cacheprovider -q -rN \
        --timeout="$TEST_TIMEOUT" --junitxml="$work/report.xml" ${PYTEST_ARGS:-} "$suite_dir/probes.py") >"$out.log" 2>&1 || rc=$?
    junit_summary "$work/report.xml"
    ;;
*) echo "unknown suite $SUITE (asyncpg, pg8000, tokio-postgres, probes)" >&2; exit 2 ;;
esac 2>&1 | tee "$out.summary" | tail -1
