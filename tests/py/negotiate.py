"""A client that asks for a newer protocol minor version (libpq 18:
max_protocol_version=latest, i.e. 3.2) must be negotiated down to 3.0 and work,
including cancellation.

usage: negotiate.py URL
"""

import sys
import threading

import psycopg
from psycopg import errors


def main(url):
    if psycopg.pq.version() < 180000:
        print(f"SKIP: libpq {psycopg.pq.version()} has no max_protocol_version")
        print("OK")
        return
    sep = "&" if "?" in url else "?"
    with psycopg.connect(url + sep + "max_protocol_version=latest", autocommit=True) as c:
        assert c.execute("select 'negotiated'").fetchone()[0] == "negotiated"
        assert c.pgconn.protocol_version == 3, c.pgconn.protocol_version
        t = threading.Timer(0.5, c.cancel_safe)
        t.start()
        try:
            c.execute("select pg_sleep(20)")
            raise AssertionError("not canceled after protocol negotiation")
        except errors.QueryCanceled:
            pass
        t.join()
        assert c.execute("select 1").fetchone()[0] == 1
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
