#!/usr/bin/env python3
"""Raw PostgreSQL-protocol clients for the soak harness (python3 standard library only).

Each subcommand drives the gateway the way one fault scenario needs, and prints one line of
`key=value` figures:

  idle      --n N --hold-file F    log N clients in and hold them while F exists
  slowloris --n N --secs S         open N connections and send the startup packet a byte a second
  storm     --rate R --secs S      log in with bad tokens at R per second
  slowread  --secs S               ask for a large result and never read it

RSS figures are read from /proc/PID/status of the gateway process (--pid).
"""

import argparse
import os
import selectors
import socket
import struct
import sys
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def startup_packet(user, database):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def read_message(sock):
    head = recv_exact(sock, 5)
    if head is None:
        return None, None
    tag, length = head[:1], struct.unpack("!i", head[1:])[0]
    body = recv_exact(sock, length - 4)
    return tag, body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def sqlstate(body):
    for field in body.split(b"\0"):
        if field[:1] == b"C":
            return field[1:].decode()
    return "?"


def login(port, token, user="bench", database="bench", timeout=10):
    """A logged-in socket, or the SQLSTATE of the error that refused it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(startup_packet(user, database))
    while True:
        tag, body = read_message(s)
        if tag is None:
            s.close()
            return None, "closed"
        if tag == b"R":
            kind = struct.unpack("!i", body[:4])[0]
            if kind == 3:
                pw = token.encode() + b"\0"
                s.sendall(b"p" + struct.pack("!i", len(pw) + 4) + pw)
            elif kind != 0:
                s.close()
                return None, f"auth{kind}"
        elif tag == b"E":
            s.close()
            return None, sqlstate(body)
        elif tag == b"Z":
            return s, None


def query(sock, sql):
    q = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    err = None
    while True:
        tag, body = read_message(sock)
        if tag is None:
            return "closed"
        if tag == b"E":
            err = sqlstate(body)
        if tag == b"Z":
            return err


def idle(a):
    before = rss_kib(a.pid)
    held, failed = [], 0
    t0 = time.monotonic()
    for _ in range(a.n):
        try:
            s, err = login(a.port, a.token)
        except OSError:
            s, err = None, "oserror"
        if s is None:
            failed += 1
        else:
            held.append(s)
    elapsed = time.monotonic() - t0
    time.sleep(1)
    after = rss_kib(a.pid)
    open(a.ready_file, "w").close()
    while os.path.exists(a.hold_file):
        time.sleep(0.2)
    alive = sum(1 for s in held[:: max(1, len(held) // 20)] if query(s, "SELECT 1") is None)
    sampled = len(held[:: max(1, len(held) // 20)])
    for s in held:
        s.close()
    per = (after - before) / max(1, len(held))
    print(
        f"idle_clients={len(held)} failed={failed} logins_per_s={len(held) / elapsed:.0f} "
        f"rss_before_kib={before} rss_after_kib={after} rss_per_client_kib={per:.1f} "
        f"sampled_alive={alive}/{sampled}"
    )


def slowloris(a):
    sel = selectors.DefaultSelector()
    packet = startup_packet("bench", "bench")
    conns = {}
    t0 = time.monotonic()
    for i in range(a.n):
        s = socket.create_connection(("127.0.0.1", a.port))
        s.setblocking(False)
        conns[s] = [0, None]
        sel.register(s, selectors.EVENT_READ)
    closed_at = []
    next_byte = time.monotonic()
    while time.monotonic() - t0 < a.secs and len(closed_at) < a.n:
        if time.monotonic() >= next_byte:
            next_byte += 1
            for s, st in conns.items():
                if st[1] is None and st[0] < len(packet):
                    try:
                        s.send(packet[st[0] : st[0] + 1])
                        st[0] += 1
                    except OSError:
                        pass
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                conns[s][1] = time.monotonic() - t0
                closed_at.append(conns[s][1])
                sel.unregister(s)
    for s in conns:
        s.close()
    closed_at.sort()
    med = closed_at[len(closed_at) // 2] if closed_at else -1
    print(
        f"slowloris_clients={a.n} closed_by_gateway={len(closed_at)} "
        f"median_close_s={med:.1f} max_close_s={(closed_at[-1] if closed_at else -1):.1f}"
    )


def storm(a):
    counts = {}
    lock = threading.Lock()
    deadline = time.monotonic() + a.secs
    per_thread = a.rate / a.threads

    def run(i):
        n = 0
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            try:
                _, err = login(a.port, f"forged-token-{i}-{n}", timeout=5)
            except OSError:
                err = "oserror"
            with lock:
                counts[err] = counts.get(err, 0) + 1
            n += 1
            wait = t0 + n / per_thread - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts.values())
    outcome = ",".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=str))
    print(f"bad_logins={total} bad_logins_per_s={total / a.secs:.0f} outcomes={outcome}")


def slowread(a):
    s, err = login(a.port, a.token)
    if s is None:
        print(f"slowread_login_failed={err}")
        return
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    q = a.sql.encode() + b"\0"
    before = rss_kib(a.pid)
    s.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    peak = before
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.secs:
        peak = max(peak, rss_kib(a.pid))
        time.sleep(0.25)
    s.close()
    print(f"slowread_rss_before_kib={before} slowread_rss_peak_kib={peak} growth_kib={peak - before}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["idle", "slowloris", "storm", "slowread"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", default="")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--secs", type=float, default=10)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--hold-file", default="")
    p.add_argument("--ready-file", default="")
    p.add_argument("--sql", default="")
    a = p.parse_args()
    {"idle": idle, "slowloris": slowloris, "storm": storm, "slowread": slowread}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
