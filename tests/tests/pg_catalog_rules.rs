//! Rules follow the catalog: a statement is judged on what the views it
//! reads or writes and the user functions it calls do, looked up by the
//! gateway (an auto-updatable view writes its base table; a function's body
//! runs with the caller's statement).

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;

const RULES: &str = r#"
[[rules]]
name = "no-unbounded-writes"
match = { sql = ["write"], no_where = true }
action = "deny"

[[rules]]
name = "customers-read-only"
match = { sql = ["write"], tables = ["customers"] }
action = "deny"
"#;

#[test]
fn views_and_functions_are_judged_on_what_they_do() {
    let env = Env::builder().extra_toml(RULES).start();
    env.direct_sql(
        "app",
        "create view cust as select * from customers; \
         create function wipe() returns void language sql as 'delete from orders'; \
         create function wipe_pl() returns void language plpgsql as \
           $$ begin delete from orders; end $$; \
         create function order_count() returns bigint language sql stable as \
           'select count(*) from orders'; \
         create function public.lower(integer) returns void language sql as \
           'delete from orders'; \
         create function wipe_default() returns int language sql as \
           'delete from orders; select 1'; \
         create function defaulted(a int default wipe_default()) returns int \
           language sql as 'select $1'; \
         create function folded(int) returns int language plpgsql immutable as \
           $$ begin perform wipe(); return $1; end $$; \
         create function wipe_later() returns trigger language plpgsql as \
           $$ begin delete from orders; return null; end $$; \
         grant all on cust to app",
    );
    let url = env.agent_url();
    let orders = || env.direct_sql("app", "select count(*) from orders");
    let before = orders();
    for (sql, rule) in [
        (
            "update cust set name = 'x' where id = 1",
            "customers-read-only",
        ),
        ("select wipe()", "no-unbounded-writes"),
        ("select wipe_pl()", "no-unbounded-writes"),
        ("select 1 from (select wipe()) s", "no-unbounded-writes"),
        // A user function named like a built-in: the server calls it for
        // `lower(1)` (an exact match of its argument type).
        ("select lower(1)", "no-unbounded-writes"),
        // A parameter's default runs in the caller's statement.
        ("select defaulted()", "no-unbounded-writes"),
        // A trigger runs its function on later writes that do not name it:
        // attaching one is judged on what the function does.
        (
            "create trigger wipe after insert on orders for each statement \
             execute function wipe_later()",
            "no-unbounded-writes",
        ),
    ] {
        let out = env.psql(&url, &["-c", sql]);
        let err = failed(&out);
        assert!(err.contains(rule), "{sql}: {err}");
    }
    // An IMMUTABLE routine with constant arguments runs when the server
    // plans the statement (Bind), before its Execute is judged: the
    // statement is judged where it is parsed, on what the routine calls.
    let mut conn = env.raw_agent();
    let errors = conn.extended_errors("select folded(1)");
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("no-unbounded-writes")),
        "{errors:?}"
    );
    // A temporary function is named by the session's own schema, which the
    // catalog calls `pg_temp_N`.
    let out = env.psql(
        &url,
        &[
            "-c",
            "create function pg_temp.wipe_here() returns void language sql as \
             'delete from orders'",
            "-c",
            "select pg_temp.wipe_here()",
        ],
    );
    let err = failed(&out);
    assert!(err.contains("no-unbounded-writes"), "{err}");
    assert_eq!(orders(), before);
    assert_ne!(
        env.direct_sql("app", "select name from customers where id = 1")
            .trim(),
        "x"
    );
    // The built-in of that name, named as such, is served. (Unqualified,
    // `lower('A')` is judged on both: the gateway does not resolve types.)
    let out = ok(&env.psql(&url, &["-At", "-c", "select pg_catalog.lower('A')"]));
    assert_eq!(out.trim(), "a");
    // Reads through views and read-only functions are ordinary work.
    let out = ok(&env.psql(&url, &["-At", "-c", "select count(*) from cust"]));
    assert!(out.trim().parse::<i64>().unwrap() > 0, "{out}");
    let out = ok(&env.psql(&url, &["-At", "-c", "select order_count()"]));
    assert_eq!(out.trim(), before.trim());
}

/// DDL holds the statements after it until the server has answered it; a COPY in the same
/// message sends its data after the DDL has run, and the gateway lets it through.
#[test]
fn copy_from_stdin_after_ddl_in_one_message_completes() {
    let env = Env::builder().start();
    let out = env.psql_input(
        &env.agent_url(),
        &["-c", "create table pasted (a int); copy pasted from stdin"],
        Some("1\n2\n\\.\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.direct_sql("app", "select count(*) from pasted").trim(),
        "2"
    );
}

/// The server runs code for a table that no statement names: triggers,
/// rules, defaults, CHECK and domain constraints and index expressions when
/// it is written, row-level security policies when it is read. A statement
/// is judged with what they do, read from the catalog at the time.
#[test]
fn what_the_server_runs_for_a_table_is_judged_with_the_statement() {
    let env = Env::builder().extra_toml(RULES).start();
    env.direct_sql(
        "app",
        "create function wipe_on_write() returns trigger language plpgsql as \
           $$ begin return null; end $$; \
         alter function wipe_on_write() owner to app; \
         create function wipe_value() returns int language plpgsql as \
           $$ begin delete from orders; return 1; end $$; \
         create function wipe_check(int) returns boolean language plpgsql as \
           $$ begin delete from orders; return true; end $$; \
         create function wipe_immutable(int) returns int language plpgsql immutable as \
           $$ begin perform wipe_value(); return $1; end $$; \
         create table triggered (id int); \
         alter table triggered owner to app; \
         create trigger wipe after insert on triggered for each statement \
           execute function wipe_on_write(); \
         create table defaulted (id int, n int default wipe_value()); \
         create table ruled (id int); \
         create rule wipe as on insert to ruled do also delete from orders; \
         create table checked (id int check (wipe_check(id))); \
         create domain wiping_int as int check (wipe_check(value)); \
         create table domained (id wiping_int); \
         create table indexed (id int); \
         create index on indexed (wipe_immutable(id)); \
         create table guarded (id int); \
         insert into guarded values (1); \
         alter table guarded enable row level security; \
         create policy wipe on guarded using (wipe_check(id)); \
         create table unguarded (id int); \
         create policy wipe on unguarded using (wipe_check(id)); \
         create table parent (id int); \
         alter table customers inherit parent; \
         create view wv as select 1 as id; \
         create trigger wipe instead of insert on wv for each row \
           execute function wipe_on_write(); \
         create table whenever (id int); \
         create function noop() returns trigger language plpgsql as \
           $$ begin return null; end $$; \
         create trigger wipe after insert on whenever for each row \
           when (wipe_check(new.id)) execute function noop(); \
         create table keyed (id int) partition by list (wipe_immutable(id)); \
         create table keyed1 partition of keyed for values in (1); \
         create domain wiping_int2 as wiping_int; \
         create table nested (id wiping_int2, ids wiping_int[]); \
         create domain wiping_default as int default wipe_value(); \
         create table defaulted_domain (id int, n wiping_default); \
         grant all on all tables in schema public to app",
    );
    let url = env.agent_url();
    let orders = || env.direct_sql("app", "select count(*) from orders");
    let before = orders();
    // Attached while it did nothing. Replaced through the gateway, the new
    // body is judged as though it ran (it may already be attached).
    let replace = "create or replace function wipe_on_write() returns trigger \
                   language plpgsql as $$ begin delete from orders; return null; end $$";
    let err = failed(&env.psql(&url, &["-c", replace]));
    assert!(err.contains("no-unbounded-writes"), "{err}");
    // Replaced around the gateway: a write that fires it is judged on it.
    env.direct_sql("app", replace);
    for (sql, rule) in [
        ("insert into triggered values (1)", "no-unbounded-writes"),
        (
            "insert into defaulted (id) values (1)",
            "no-unbounded-writes",
        ),
        ("insert into ruled values (1)", "no-unbounded-writes"),
        ("insert into checked values (1)", "no-unbounded-writes"),
        ("insert into domained values (1)", "no-unbounded-writes"),
        ("insert into indexed values (1)", "no-unbounded-writes"),
        // An INSTEAD OF trigger on a view, a trigger's WHEN condition, a
        // partition key, a domain over a domain, an array of a domain, a
        // domain's default.
        ("insert into wv values (1)", "no-unbounded-writes"),
        ("insert into whenever values (1)", "no-unbounded-writes"),
        ("insert into keyed values (1)", "no-unbounded-writes"),
        ("insert into keyed1 values (1)", "no-unbounded-writes"),
        ("insert into nested (id) values (1)", "no-unbounded-writes"),
        (
            "insert into nested (ids) values ('{1}')",
            "no-unbounded-writes",
        ),
        (
            "insert into defaulted_domain (id) values (1)",
            "no-unbounded-writes",
        ),
        ("select * from guarded", "no-unbounded-writes"),
        // Security can be enabled in an open transaction, which the
        // gateway's catalog connection does not see: policies count anyway.
        ("select * from unguarded", "no-unbounded-writes"),
        // Through a view, a function or a CTE: the same tables are written.
        (
            "with t as (insert into triggered values (2) returning id) select * from t",
            "no-unbounded-writes",
        ),
        // Writing a parent writes the tables that inherit from it.
        ("delete from parent where id = 1", "customers-read-only"),
    ] {
        let out = env.psql(&url, &["-c", sql]);
        let err = failed(&out);
        assert!(err.contains(rule), "{sql}: {err}");
    }
    // The same over the raw extended protocol: refused where it is parsed.
    let mut agent = env.raw_agent();
    for sql in [
        "insert into triggered values (3)",
        "insert into keyed values (1)",
        "select * from guarded",
    ] {
        let errors = agent.extended_errors(sql);
        assert!(
            errors
                .iter()
                .any(|e| e.message().contains("no-unbounded-writes")),
            "{sql}: {errors:?}"
        );
    }
    assert_eq!(orders(), before);
    // Ordinary writes of tables with ordinary defaults, keys and checks.
    for sql in [
        "insert into orders (customer_id, amount, status) values (1, 9.5, 'new')",
        "alter table triggered add column note text",
        // Reads do not run what writes would.
        "select * from triggered",
        "select * from defaulted",
    ] {
        ok(&env.psql(&url, &["-c", sql]));
    }
}

/// A prepared statement is analysed again, and planned, at a later Bind when what it uses
/// changed: the server then runs the IMMUTABLE routines it folds. A statement judged where it
/// was parsed on definitions that changed since is judged again at its Bind.
#[test]
fn a_statement_bound_after_a_schema_change_is_judged_again() {
    let env = Env::builder().extra_toml(RULES).start();
    env.direct_sql(
        "app",
        "create function wipe_value() returns int language plpgsql as \
           $$ begin delete from orders; return 1; end $$; \
         create table stamps (id int); alter table stamps owner to app",
    );
    let orders = || env.direct_sql("app", "select count(*) from orders");
    let before = orders();
    let mut agent = env.raw_agent();
    let mut other = env.raw_agent();
    // Judged where it is parsed: the built-in count.
    let mut parse = b"s1\0select count('abc'::text) from stamps\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut batch = sluice_e2e::raw::message(b'P', &parse);
    batch.extend(sluice_e2e::raw::message(b'S', &[]));
    agent.send(&batch).unwrap();
    let answer = agent.read_until_ready();
    assert!(sluice_e2e::raw::errors(&answer).is_empty(), "{answer:?}");
    // Another session defines a count(text) that the server folds when it
    // plans, and changes the table, which makes the server analyse the
    // prepared statement again.
    for sql in [
        "create function public.count(text) returns bigint language plpgsql immutable as \
         $$ begin perform wipe_value(); return 0; end $$",
        "alter table stamps add column note text",
    ] {
        let answer = other.query(sql);
        assert!(
            sluice_e2e::raw::errors(&answer).is_empty(),
            "{sql}: {answer:?}"
        );
    }
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&[0; 6]);
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut batch = sluice_e2e::raw::message(b'B', &bind);
    batch.extend(sluice_e2e::raw::message(b'E', &execute));
    batch.extend(sluice_e2e::raw::message(b'S', &[]));
    agent.send(&batch).unwrap();
    let errors = sluice_e2e::raw::errors(&agent.read_until_ready());
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("no-unbounded-writes")),
        "{errors:?}"
    );
    assert_eq!(orders(), before);
}

/// A session that changed a view in its transaction holds the view's lock; statements of other
/// sessions that read it wait on the server while holding the gate. Its ROLLBACK publishes
/// nothing and is forwarded at once; its COMMIT publishes, and cannot wait for them.
#[test]
fn a_transaction_that_changed_a_view_ends_while_others_wait_on_it() {
    let env = Env::builder().extra_toml(RULES).start();
    env.direct_sql(
        "app",
        "create view recent as select id from orders; alter view recent owner to app",
    );
    let mut migrator = env.raw_agent();
    let mut reader = env.raw_agent();
    for sql in [
        "begin",
        "create or replace view recent as select id, status from orders",
    ] {
        let answer = migrator.query(sql);
        assert!(
            sluice_e2e::raw::errors(&answer).is_empty(),
            "{sql}: {answer:?}"
        );
    }
    // Waits on the server for the migrator's lock.
    reader
        .send(&sluice_e2e::raw::query_message(
            "select count(*) from recent",
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let answer = migrator.query("rollback");
    assert!(sluice_e2e::raw::errors(&answer).is_empty(), "{answer:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the rollback waited {:?}",
        started.elapsed()
    );
    let answer = reader.read_until_ready();
    assert!(sluice_e2e::raw::errors(&answer).is_empty(), "{answer:?}");
}

/// The server fixes a portal's plan at Bind. An Execute after definitions changed through the
/// gateway would be judged on what the plan does not run: it is refused, to be bound again.
#[test]
fn a_portal_bound_before_a_schema_change_is_not_executed() {
    let env = Env::builder().extra_toml(RULES).start();
    let mut agent = env.raw_agent();
    let mut other = env.raw_agent();
    let mut parse = b"\0select count(*) from orders\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = b"p1\0\0".to_vec();
    bind.extend_from_slice(&[0; 6]);
    let mut batch = sluice_e2e::raw::message(b'P', &parse);
    batch.extend(sluice_e2e::raw::message(b'B', &bind));
    batch.extend(sluice_e2e::raw::message(b'H', &[]));
    agent.send(&batch).unwrap();
    // ParseComplete and BindComplete.
    for _ in 0..2 {
        agent.read_msg().unwrap();
    }
    let answer = other.query("create view later as select 1 as one");
    assert!(sluice_e2e::raw::errors(&answer).is_empty(), "{answer:?}");
    let mut execute = b"p1\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut batch = sluice_e2e::raw::message(b'E', &execute);
    batch.extend(sluice_e2e::raw::message(b'S', &[]));
    agent.send(&batch).unwrap();
    let errors = sluice_e2e::raw::errors(&agent.read_until_ready());
    assert!(
        errors.iter().any(|e| e.message().contains("bind it again")),
        "{errors:?}"
    );
    // Bound again, it runs.
    let answer = agent.extended("select count(*) from orders");
    assert!(sluice_e2e::raw::errors(&answer).is_empty(), "{answer:?}");
}

/// A schema change keeps other sessions' statements out only for a while; one still running
/// after that (behind a slow statement of its message) is cancelled rather than published
/// while statements judged without it may run.
#[test]
fn a_schema_change_that_outlasts_its_hold_is_cancelled() {
    let env = Env::builder().extra_toml(RULES).start();
    let mut slow = env.raw_agent();
    slow.set_read_timeout(std::time::Duration::from_secs(30));
    let started = std::time::Instant::now();
    let answer = slow.query(
        "select pg_sleep(14); \
         create function public.late() returns int language sql as 'select 1'",
    );
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors.iter().any(|e| e.code() == "57014"),
        "not cancelled: {errors:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(14));
    assert_eq!(
        env.direct_sql("app", "select count(*) from pg_proc where proname = 'late'")
            .trim(),
        "0"
    );
}
