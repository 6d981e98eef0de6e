"""Cancel a running query through the gateway, then keep using the session.

usage: cancel.py URL

Exercises both psycopg cancel paths: conn.cancel() (libpq PQcancel, a plaintext
CancelRequest) and conn.cancel_safe() (libpq's PQcancelCreate, which negotiates
TLS for the cancel connection like the main one). Prints "OK" at the end.
"""

import sys
import threading
import time

import psycopg
from psycopg import errors


def cancel_after(conn, how, delay):
    def run():
        time.sleep(delay)
        getattr(conn, how)()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main(url):
    with psycopg.connect(url, autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        for how in ("cancel", "cancel_safe"):
            t = cancel_after(conn, how, 1.0)
            started = time.monotonic()
            try:
                conn.execute("select pg_sleep(30)")
            except errors.QueryCanceled as e:
                elapsed = time.monotonic() - started
                assert e.sqlstate == "57014", e.sqlstate
                assert "canceling statement due to user request" in str(e), str(e)
                assert elapsed < 10, f"{how}: canceled only after {elapsed:.1f}s"
                print(f"{how}: canceled after {elapsed:.1f}s: {e}")
            else:
                raise AssertionError(f"{how}: pg_sleep(30) was not canceled")
            t.join()
            # The same session (same upstream backend) is still usable.
            assert conn.execute("select 41 + 1").fetchone()[0] == 42
            assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid

        # Inside a transaction the cancel aborts the transaction; rollback recovers it.
        conn.autocommit = False
        conn.execute("select 1")
        t = cancel_after(conn, "cancel_safe", 0.5)
        try:
            conn.execute("select pg_sleep(30)")
            raise AssertionError("not canceled in a transaction")
        except errors.QueryCanceled:
            pass
        t.join()
        try:
            conn.execute("select 1")
            raise AssertionError("the aborted transaction accepted a statement")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        assert conn.execute("select 'recovered'").fetchone()[0] == "recovered"
        conn.rollback()
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
