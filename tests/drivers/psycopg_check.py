"""psycopg 3 through Sluice: parameters, server-side prepared statements across transactions,
COPY in and out. Prints one line of results that the Rust test compares. Usage:
    python3 psycopg_check.py 'postgresql://agent:TOKEN@127.0.0.1:PORT/appdb'
"""
import sys

import psycopg

url = sys.argv[1]
out = []
with psycopg.connect(url, autocommit=True) as conn:
    with conn.cursor() as cur:
        cur.execute("select %s::int + %s::int, %s::text", (40, 2, "forty-two"))
        out.append(cur.fetchone())
        # prepare=True makes psycopg use a named server-side statement; in transaction
        # pooling each execution may land on another server connection.
        total = 0
        for i in range(20):
            cur.execute("select %s::int * 2", (i,), prepare=True)
            total += cur.fetchone()[0]
        out.append(total)
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute("create temp table driver_copy(x int, s text) on commit drop")
            with cur.copy("copy driver_copy from stdin") as cp:
                for i in range(1000):
                    cp.write_row((i, f"row-{i}"))
            cur.execute("select count(*), sum(x) from driver_copy")
            out.append(cur.fetchone())
            with cur.copy("copy (select x from driver_copy where x < 3 order by x) to stdout") as cp:
                out.append([r[0] for r in cp.rows()])
print(repr(out))
