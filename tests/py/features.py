"""psycopg 3 through the gateway: server-side prepared statements, binary results,
pipeline mode, transactions, COPY both ways, errors mid-transaction, server-side
cursors, notices and LISTEN/NOTIFY.

usage: features.py URL

Every check is an assert with a message; prints "OK" at the end.
"""

import datetime
import decimal
import sys
import uuid

import psycopg
from psycopg import errors, sql


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def prepared_statements(conn):
    conn.prepare_threshold = 0
    with conn.cursor() as cur:
        for i in range(5):
            cur.execute("select %s::int + 1, %s::text", (i, f"v{i}"), prepare=True)
            check(cur.fetchone() == (i + 1, f"v{i}"), f"prepared run {i}")
        for i in range(3):
            cur.execute("select count(*) from customers where id <= %s", (i + 10,))
            check(cur.fetchone()[0] == i + 10, "threshold 0 prepares everything")
        # The statements really are prepared on the upstream backend.
        cur.execute(
            "select count(*) from pg_prepared_statements where statement like %s",
            ("select $1::int + 1%",),
            prepare=False,
        )
        check(cur.fetchone()[0] == 1, "server-side prepared statement exists upstream")
        cur.execute("select count(*) from pg_prepared_statements", prepare=False)
        check(cur.fetchone()[0] >= 2, "several prepared statements upstream")
    conn.prepare_threshold = 5
    conn.commit()


def binary_results(conn):
    with conn.cursor(binary=True) as cur:
        cur.execute(
            """select 42::int4, 12345678901::int8, 3.5::float8, true, 'héllo'::text,
                      '2024-01-02'::date, '12.34'::numeric, '\\x00ff10'::bytea,
                      array[1, 2, 3]::int4[], null::int4,
                      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
                      '{"k": [1, 2]}'::jsonb"""
        )
        row = cur.fetchone()
        expected = (
            42,
            12345678901,
            3.5,
            True,
            "héllo",
            datetime.date(2024, 1, 2),
            decimal.Decimal("12.34"),
            b"\x00\xff\x10",
            [1, 2, 3],
            None,
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            {"k": [1, 2]},
        )
        check(row == expected, f"binary row {row!r}")
        check(
            all(c.type_code for c in cur.description),
            "column descriptions present",
        )
        # The result really was binary on the wire.
        check(cur.pgresult.fformat(0) == 1, "binary format")
        cur.execute("select id, name, email from customers order by id limit 3")
        rows = cur.fetchall()
        check([r[0] for r in rows] == [1, 2, 3], f"binary customer ids {rows!r}")
        check(all(isinstance(r[1], str) and "@" in r[2] for r in rows), "binary text")
        # Binary parameters too.
        cur.execute("select %b::bytea = %b::bytea", (b"\x01\x02", b"\x01\x02"))
        check(cur.fetchone()[0] is True, "binary params")
    conn.commit()


def pipeline_mode(conn):
    conn.execute("create temp table pl (id int primary key, v text)")
    conn.commit()
    with conn.pipeline():
        cursors = []
        for i in range(10):
            c = conn.cursor()
            c.execute("insert into pl values (%s, %s) returning id * 10", (i, f"p{i}"))
            cursors.append(c)
        q = conn.cursor()
        q.execute("select count(*), sum(id) from pl")
        many = conn.cursor()
        many.executemany(
            "insert into pl values (%s, %s)", [(100 + i, "m") for i in range(20)]
        )
    check([c.fetchone()[0] for c in cursors] == [i * 10 for i in range(10)], "returning")
    check(q.fetchone() == (10, 45), "pipeline results in order")
    conn.commit()
    check(conn.execute("select count(*) from pl").fetchone()[0] == 30, "pipeline inserts")

    # An error inside a pipeline: later statements are not run, the connection recovers.
    try:
        with conn.pipeline():
            conn.execute("insert into pl values (1000, 'x')")
            conn.execute("select 1/0")
            conn.execute("insert into pl values (1001, 'y')")
        raise AssertionError("pipeline error not raised")
    except errors.DivisionByZero:
        pass
    conn.rollback()
    n = conn.execute("select count(*) from pl where id >= 1000").fetchone()[0]
    check(n == 0, f"failed pipeline rolled back, found {n}")
    conn.commit()


def transactions(conn):
    conn.execute("create temp table tx (x int)")
    conn.commit()
    with conn.transaction():
        conn.execute("insert into tx values (1)")
    try:
        with conn.transaction():
            conn.execute("insert into tx values (2)")
            raise RuntimeError("roll me back")
    except RuntimeError:
        pass
    with conn.transaction():
        conn.execute("insert into tx values (3)")
        try:
            with conn.transaction():  # a savepoint
                conn.execute("insert into tx values (4)")
                conn.execute("select 1/0")
        except errors.DivisionByZero:
            pass
        conn.execute("insert into tx values (5)")
    got = [r[0] for r in conn.execute("select x from tx order by x")]
    check(got == [1, 3, 5], f"transactions {got}")
    conn.commit()


def copy_both_ways(conn):
    conn.execute("create temp table cp (id int, name text, data bytea)")
    with conn.cursor() as cur:
        with cur.copy("COPY cp (id, name, data) FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, f"name\t{i}\n", bytes([i % 256]) * 3))
        check(cur.rowcount == 2000, f"copy in rowcount {cur.rowcount}")
        with cur.copy("COPY (select id, name, data from cp order by id) TO STDOUT") as copy:
            rows = list(copy.rows())
        check(len(rows) == 2000, f"copy out {len(rows)} rows")
        check(rows[7] == ("7", "name\t7\n", "\\x070707"), f"copy out row {rows[7]!r}")
        # Binary COPY, both ways.
        with cur.copy("COPY cp (id, name, data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            for i in range(2000, 2500):
                copy.write_row((i, "bin", b"\x00\x01"))
        with cur.copy(
            "COPY (select id, name, data from cp where id >= 2000 order by id) "
            "TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "bytea"])
            rows = list(copy.rows())
        check(len(rows) == 500, f"binary copy out {len(rows)}")
        check(rows[0] == (2000, "bin", b"\x00\x01"), f"binary copy row {rows[0]!r}")
        # A COPY FROM STDIN the client aborts (CopyFail) leaves the session usable.
        try:
            with cur.copy("COPY cp (id) FROM STDIN") as copy:
                copy.write_row((9999,))
                raise RuntimeError("abort the copy")
        except RuntimeError:
            pass
        except errors.QueryCanceled:
            pass
        conn.rollback()
        cur.execute("select 'after-copy-fail'")
        check(cur.fetchone()[0] == "after-copy-fail", "session usable after CopyFail")
    conn.commit()


def error_mid_transaction(conn):
    conn.execute("create temp table et (x int)")
    conn.commit()
    conn.execute("insert into et values (1)")
    try:
        conn.execute("select 1/0")
        raise AssertionError("no error")
    except errors.DivisionByZero as e:
        check(e.sqlstate == "22012", e.sqlstate)
    try:
        conn.execute("select 1")
        raise AssertionError("statement accepted in an aborted transaction")
    except errors.InFailedSqlTransaction:
        pass
    conn.rollback()
    check(conn.execute("select count(*) from et").fetchone()[0] == 0, "rolled back")
    # Errors with parameters in the extended protocol.
    try:
        conn.execute("select %s::int", ("not-a-number",))
        raise AssertionError("no error")
    except errors.InvalidTextRepresentation:
        pass
    conn.rollback()
    check(conn.execute("select %s::int * 2", (21,)).fetchone()[0] == 42, "recovered")
    conn.commit()


def server_side_cursor(conn):
    with conn.cursor(name="named_cur") as cur:
        cur.itersize = 7
        cur.execute("select g from generate_series(1, 100) g")
        total = sum(r[0] for r in cur)
    check(total == 5050, f"named cursor sum {total}")
    conn.commit()


def big_parameters(conn):
    big = "z" * (4 * 1024 * 1024)
    got = conn.execute("select length(%s::text), md5(%s::text) = md5(repeat('z', 4194304))",
                       (big, big)).fetchone()
    check(got == (len(big), True), f"4 MiB parameter {got!r}")
    conn.commit()


def notices_and_notifications(conn):
    seen = []
    conn.add_notice_handler(lambda d: seen.append(d.message_primary))
    conn.execute("DO $$ BEGIN RAISE NOTICE 'py-notice'; END $$")
    check(seen == ["py-notice"], f"notices {seen}")
    conn.commit()
    conn.autocommit = True
    conn.execute("LISTEN e2e_channel")
    conn.execute("NOTIFY e2e_channel, 'payload-1'")
    got = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    check(got == ["payload-1"], f"notifications {got}")
    conn.autocommit = False


def identifiers(conn):
    q = sql.SQL("select {} from {} order by id limit 1").format(
        sql.Identifier("name"), sql.Identifier("customers")
    )
    name = conn.execute(q).fetchone()[0]
    check(isinstance(name, str) and " " in name, f"sql composition {name!r}")
    conn.commit()


def connection_negotiation(url):
    """Direct TLS (sslnegotiation=direct, libpq 17+) and plaintext on loopback."""
    sep = "&" if "?" in url else "?"
    if psycopg.pq.version() >= 170000:
        with psycopg.connect(url + sep + "sslmode=require&sslnegotiation=direct") as c:
            check(c.pgconn.ssl_in_use, "direct TLS in use")
            check(c.execute("select 'direct'").fetchone()[0] == "direct", "direct TLS query")
        print("  direct TLS: ok")
    plain = url + sep + "sslmode=disable"
    with psycopg.connect(plain) as c:
        check(not c.pgconn.ssl_in_use, "plaintext on loopback")


def main(url):
    with psycopg.connect(url) as conn:
        check(conn.info.parameter_status("server_version"), "server_version reported")
        check(conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "idle")
        for step in (
            prepared_statements,
            binary_results,
            pipeline_mode,
            transactions,
            copy_both_ways,
            error_mid_transaction,
            server_side_cursor,
            big_parameters,
            notices_and_notifications,
            identifiers,
        ):
            step(conn)
            print(f"{step.__name__}: ok")
    connection_negotiation(url)
    print("connection_negotiation: ok")
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
