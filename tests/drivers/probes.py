"""Small checks of behaviours no driver suite here exercises, run by `run.sh probes MODE`.

Each test compares what a client sees through the target (PGHOST/PGPORT/PGPASSWORD: the
gateway, or PostgreSQL itself in `direct` mode) with what PostgreSQL does, using psycopg 3
(libpq). ADMIN_HOST/ADMIN_PORT reach PostgreSQL directly (a Unix socket, trust) to look at
pg_stat_activity. GATEWAY_LOG is the gateway's log file (empty in direct mode).
"""

import os
import socket
import ssl
import threading
import time

import psycopg
import pytest

MODE = os.environ["DRIVERS_MODE"]
through_gateway = MODE != "direct"


def connect(**kw):
    args = dict(
        host=os.environ["PGHOST"],
        port=os.environ["PGPORT"],
        user="postgres",
        password=os.environ["PGPASSWORD"],
        dbname="postgres",
        autocommit=True,
    )
    args.update(kw)
    return psycopg.connect(**args)


def admin():
    return psycopg.connect(
        host=os.environ["ADMIN_HOST"], port=os.environ["ADMIN_PORT"], user="postgres",
        dbname="postgres", autocommit=True,
    )


def test_parameter_status_mirrors_backend():
    """The ParameterStatus values a client gets at startup are the backend's."""
    names = [
        "server_version", "server_encoding", "client_encoding", "DateStyle", "IntervalStyle",
        "TimeZone", "integer_datetimes", "standard_conforming_strings", "is_superuser",
        "session_authorization", "default_transaction_read_only",
        "in_hot_standby", "scram_iterations",
    ]
    with connect() as c:
        seen = {n: (c.pgconn.parameter_status(n.encode()) or b"").decode() or None for n in names}
        actual = {n: c.execute("select current_setting(%s, true)", (n,)).fetchone()[0] for n in names}
    # PostgreSQL 15 reports in_hot_standby only from 14 on, scram_iterations only from 16 on.
    expected = {n: v for n, v in actual.items() if v is not None and n != "scram_iterations"}
    missing = sorted(n for n in expected if seen[n] is None)
    differ = {n: (seen[n], expected[n]) for n in expected if seen[n] is not None and seen[n] != expected[n]}
    assert not missing and not differ, f"missing: {missing}; differ (reported, actual): {differ}"


def test_application_name_not_overridden():
    """A client that sets no application_name sees the server default (empty), not the gateway's."""
    with connect() as c:
        reported = (c.pgconn.parameter_status(b"application_name") or b"").decode()
        actual = c.execute("show application_name").fetchone()[0]
    assert (reported, actual) == ("", ""), (reported, actual)


def test_latin1_client_encoding():
    """client_encoding=LATIN1 with non-ASCII text works as it does against PostgreSQL."""
    with connect(client_encoding="LATIN1") as c:
        assert c.execute("select 'caf\u00e9'::text").fetchone()[0] == "caf\u00e9"


def test_disconnect_mid_transaction_leaves_no_open_transaction():
    """A client that disconnects inside a transaction leaves no backend `idle in transaction`."""
    c = connect(application_name="probe-disconnect")
    c.execute("begin")
    c.execute("create temp table probe_t(x int)")
    c.pgconn.finish()  # no ROLLBACK, no Terminate handshake beyond libpq's own
    time.sleep(2)
    with admin() as a:
        rows = a.execute(
            "select pid, state, application_name from pg_stat_activity "
            "where state like 'idle in transaction%' and backend_type = 'client backend'"
        ).fetchall()
    assert rows == [], rows


def test_abrupt_close_leaves_no_open_transaction():
    """The same with the TCP connection reset (no Terminate message at all)."""
    c = connect(application_name="probe-reset")
    c.execute("begin")
    c.execute("select 1")
    s = socket.socket(fileno=os.dup(c.pgconn.socket))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    os.close(c.pgconn.socket)
    time.sleep(2)
    with admin() as a:
        rows = a.execute(
            "select pid, state, application_name from pg_stat_activity "
            "where state like 'idle in transaction%' and backend_type = 'client backend'"
        ).fetchall()
    assert rows == [], rows


def test_cancel_over_tls():
    """Cancelling a query of a TLS client works."""
    with connect(sslmode="require") as c:
        threading.Timer(0.5, c.cancel_safe).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select pg_sleep(20)")


def test_notification_pid_is_backend_key_pid():
    """A notification's pid is the sending session's pid as its BackendKeyData announced it."""
    with connect() as listener, connect() as sender:
        listener.execute("listen probe_chan")
        sender.execute("notify probe_chan, 'x'")
        listener.execute("select 1")
        got = list(listener.notifies(timeout=2, stop_after=1))
        assert got, "no notification"
        assert got[0].pid == sender.info.backend_pid, (got[0].pid, sender.info.backend_pid)


def test_listen_survives_between_transactions():
    """LISTEN, then NOTIFY from another session after the LISTEN's transaction ended."""
    with connect() as listener, connect() as sender:
        listener.execute("listen probe_chan2")
        time.sleep(0.2)
        sender.execute("notify probe_chan2, 'y'")
        got = list(listener.notifies(timeout=2, stop_after=1))
        assert [n.payload for n in got] == ["y"]


def test_session_settings_do_not_leak_to_other_clients():
    """A session-level SET by one client is not seen by another client."""
    with connect() as a:
        a.execute("set timezone = 'Asia/Kathmandu'")
        a.execute("set statement_timeout = '4321ms'")
    for _ in range(6):
        with connect() as b:
            tz, st = b.execute("select current_setting('TimeZone'), current_setting('statement_timeout')").fetchone()
            assert (tz, st) != ("Asia/Kathmandu", "4321ms") and tz != "Asia/Kathmandu" and st != "4321ms", (tz, st)


def test_scram_offered():
    """The server asks for SCRAM-SHA-256 (libpq's require_auth=scram-sha-256 accepts it)."""
    with connect(require_auth="scram-sha-256") as c:
        assert c.execute("select 1").fetchone()[0] == 1


def test_quick_disconnect_not_logged_as_oversized():
    """A client that connects and closes at once is not reported as a too-large startup packet."""
    for _ in range(3):
        socket.create_connection((os.environ["PGHOST"], int(os.environ["PGPORT"]))).close()
    time.sleep(0.5)
    log = os.environ.get("GATEWAY_LOG", "")
    text = open(log, errors="replace").read() if log and os.path.exists(log) else ""
    assert "too large" not in text, [l for l in text.splitlines() if "too large" in l][:3]


def test_advisory_lock_held_across_transactions():
    """A session advisory lock stays held by its session after the statement's transaction."""
    with connect() as a, connect() as b:
        a.execute("select pg_advisory_lock(4242)")
        assert b.execute("select pg_try_advisory_lock(4242)").fetchone()[0] is False
        a.execute("select pg_advisory_unlock(4242)")


def test_with_hold_cursor_across_transactions():
    """A WITH HOLD cursor outlives its transaction."""
    with connect() as c:
        c.execute("declare probe_cur cursor with hold for select generate_series(1, 3)")
        for _ in range(3):
            c.execute("select 1")
        assert c.execute("fetch all from probe_cur").fetchall() == [(1,), (2,), (3,)]
