//! SQL guardrails against the ways they get bypassed (REFERENCES.md): every
//! case is sent through the gateway with a real client, then the table's real
//! state is checked directly on the upstream.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;

const RULES: &str = r#"
[[rules]]
name = "no-ddl"
match = { sql = ["ddl"] }
action = "deny"
message = "Schema changes go through migrations."

[[rules]]
name = "no-unbounded-writes"
match = { sql = ["write"], no_where = true }
action = "deny"
message = "UPDATE and DELETE need a WHERE clause."

[[rules]]
name = "customers-read-only"
match = { sql = ["write"], tables = ["customers"] }
action = "deny"
message = "customers is read-only for agents."

[[rules]]
name = "no-server-side-effects"
match = { sql = ["admin"] }
action = "deny"
message = "Server administration and file access are not allowed."
"#;

fn env() -> Env {
    Env::builder().extra_toml(RULES).start()
}

fn count(env: &Env, table: &str) -> i64 {
    env.direct_sql("app", &format!("select count(*) from {table}"))
        .trim()
        .parse()
        .unwrap()
}

fn table_exists(env: &Env, table: &str) -> bool {
    env.direct_sql(
        "app",
        &format!("select to_regclass('public.{table}') is not null"),
    )
    .trim()
        == "t"
}

/// Runs `sql` with psql and asserts the gateway refused it by `rule`.
fn assert_denied(env: &Env, url: &str, sql: &str, rule: &str) {
    let out = env.psql(url, &["-c", sql]);
    let se = stderr(&out);
    assert!(
        !out.status.success(),
        "not refused: {sql}\n{}",
        stdout(&out)
    );
    assert!(
        se.contains("sluice: command denied") && se.contains(rule),
        "{sql}: expected a refusal by {rule}, got:\n{se}"
    );
}

fn assert_allowed(env: &Env, url: &str, sql: &str) -> String {
    let out = env.psql(url, &["-c", sql]);
    assert!(
        out.status.success(),
        "refused: {sql}\n{}\n{}",
        stderr(&out),
        env.gateway_log()
    );
    stdout(&out)
}

#[test]
fn ddl_writes_and_side_effects_are_refused_however_they_are_spelled() {
    let env = env();
    let url = env.agent_url();
    let customers = count(&env, "customers");
    let orders = count(&env, "orders");

    for (sql, rule) in [
        ("DROP TABLE orders", "no-ddl"),
        ("/* harmless */ dRoP /* really */ TaBlE \"orders\"", "no-ddl"),
        ("select 1; drop table orders", "no-ddl"),
        ("select 1;\n-- comment\ndrop table orders;", "no-ddl"),
        ("create table stolen as select * from customers", "no-ddl"),
        ("select * into stolen2 from customers", "no-ddl"),
        ("alter table customers add column pwned int", "no-ddl"),
        ("delete from orders", "no-unbounded-writes"),
        ("UPDATE orders SET status = 'void'", "no-unbounded-writes"),
        (
            "with d as (delete from orders returning *) select count(*) from d",
            "no-unbounded-writes",
        ),
        ("delete from customers where id = 1", "customers-read-only"),
        ("DELETE FROM \"customers\" WHERE id = 1", "customers-read-only"),
        ("delete from public.customers where id = 1", "customers-read-only"),
        (
            "explain analyze delete from customers where id = 1",
            "customers-read-only",
        ),
        (
            "with x as (update customers set name = 'x' where id = 2 returning 1) select * from x",
            "customers-read-only",
        ),
        (
            "insert into orders (customer_id, amount, status) values (1, 1, 'a'); delete from customers where id = 3",
            "customers-read-only",
        ),
        ("copy (select 1) to program 'touch /tmp/sluice-pwned'", "no-server-side-effects"),
        ("select pg_read_file('/etc/passwd')", "no-server-side-effects"),
        ("select lower(pg_read_file('/etc/hostname'))", "no-server-side-effects"),
        (
            "select 1 from customers where exists (select pg_terminate_backend(pg_backend_pid()))",
            "no-server-side-effects",
        ),
        ("do $$ begin delete from orders; end $$", "no-ddl"),
        // E'' moves the statement boundary the way the server sees it.
        ("select E'\\''; drop table orders; --'", "no-ddl"),
    ] {
        assert_denied(&env, &url, sql, rule);
    }
    assert!(!std::path::Path::new("/tmp/sluice-pwned").exists());
    assert!(table_exists(&env, "orders"));
    assert!(!table_exists(&env, "stolen") && !table_exists(&env, "stolen2"));
    assert_eq!(count(&env, "customers"), customers);
    assert_eq!(
        count(&env, "orders"),
        orders,
        "the refused multi-statement ran nothing"
    );
}

#[test]
fn what_policy_allows_still_works() {
    let env = env();
    let url = env.agent_url();
    assert_eq!(
        assert_allowed(&env, &url, "select count(*) from customers").trim(),
        "50"
    );
    assert_allowed(
        &env,
        &url,
        "update orders set status = 'checked' where id = 1",
    );
    assert_eq!(
        env.direct_sql("app", "select status from orders where id = 1")
            .trim(),
        "checked"
    );
    // A dollar-quoted string that looks like DDL is just a string.
    assert_eq!(
        assert_allowed(&env, &url, "select $$; drop table orders; $$").trim(),
        "; drop table orders;"
    );
    // EXPLAIN without ANALYZE executes nothing.
    assert_allowed(&env, &url, "explain delete from customers where id = 1");
    assert!(table_exists(&env, "orders"));
    assert_eq!(count(&env, "customers"), 50);
}

#[test]
fn prepared_statements_are_judged_by_what_they_run() {
    let env = env();
    let url = env.agent_url();
    let customers = count(&env, "customers");
    // SQL-level PREPARE of a refused statement is refused at PREPARE …
    assert_denied(
        &env,
        &url,
        "prepare p as delete from customers where id = 1",
        "customers-read-only",
    );
    // … and in one message with its EXECUTE.
    assert_denied(
        &env,
        &url,
        "prepare p2 as delete from customers where id = 1; execute p2",
        "customers-read-only",
    );
    // An allowed PREPARE/EXECUTE runs.
    assert_eq!(
        assert_allowed(
            &env,
            &url,
            "prepare q as select count(*) from orders; execute q"
        )
        .trim(),
        "100"
    );
    // EXECUTE of a name the gateway never saw prepared cannot be judged: refused.
    let out = env.psql(&url, &["-c", "execute never_prepared"]);
    assert!(
        stderr(&out).contains("sluice: command denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&env, "customers"), customers);
}

/// Issue 12, item 4: a statement wrapping an EXECUTE keeps its own classes,
/// and `no_where` means "no predicate that bounds the rows".
#[test]
fn wrapped_executes_and_unbounded_writes_are_refused() {
    let env = env();
    let url = env.agent_url();
    assert_denied(
        &env,
        &url,
        "prepare s as select 1; create table pwned as execute s",
        "no-ddl",
    );
    assert!(!table_exists(&env, "pwned"));
    let orders = count(&env, "orders");
    for sql in [
        "truncate orders",
        "delete from orders where true",
        "delete from orders where 1 = 1",
        "delete from orders where id = id",
        "delete from orders where id = 5 or true",
        "delete from orders where not false",
        "update orders set status = 'x' where 'a' = 'a'",
        "delete from orders where id in (select id from orders)",
        "with d as (delete from orders where id is not null or true returning 1) select count(*) from d",
        "merge into orders o using orders s on true when matched then delete",
    ] {
        assert_denied(&env, &url, sql, "no-unbounded-writes");
    }
    assert_eq!(count(&env, "orders"), orders);
    // Bounded writes still run.
    assert_allowed(
        &env,
        &url,
        "update orders set status = 'b' where id in (select id from orders where id < 3)",
    );
    assert_allowed(
        &env,
        &url,
        "delete from orders where id = 99 and status = 'no such status'",
    );
    assert_eq!(count(&env, "orders"), orders);
    assert_eq!(
        env.direct_sql("app", "select count(*) from orders where status = 'b'")
            .trim(),
        "2"
    );
}

/// Issue 12, item 4 (rules follow the catalog): a write through a view is
/// judged on its base table, a user function on what its body does. Needs
/// the relay to pass `sql::resolve::catalog_context` into the judged
/// command's context.
#[test]
fn views_and_functions_are_judged_on_what_they_do() {
    let env = env();
    env.direct_sql(
        "app",
        "create view customer_list as select id, email from customers;\n\
         grant select, update, delete on customer_list to app;\n\
         create function purge_orders() returns void language plpgsql as \
         $$ begin delete from orders; end $$;\n\
         create function order_count() returns bigint language sql stable as \
         'select count(*) from orders';\n\
         grant execute on function purge_orders(), order_count() to app;\n",
    );
    let url = env.agent_url();
    let (customers, orders) = (count(&env, "customers"), count(&env, "orders"));
    assert_denied(
        &env,
        &url,
        "delete from customer_list where id = 1",
        "customers-read-only",
    );
    assert_denied(&env, &url, "select purge_orders()", "no-unbounded-writes");
    assert_eq!(count(&env, "customers"), customers);
    assert_eq!(count(&env, "orders"), orders);
    // Reads through the view and a reading function still work.
    assert_eq!(
        assert_allowed(&env, &url, "select count(*) from customer_list").trim(),
        customers.to_string()
    );
    assert_eq!(
        assert_allowed(&env, &url, "select order_count()").trim(),
        orders.to_string()
    );
}

#[test]
fn unparseable_sql_is_refused_not_passed_through() {
    let env = env();
    let url = env.agent_url();
    let out = env.psql(&url, &["-c", "selec 1 frm"]);
    let se = stderr(&out);
    assert!(
        se.contains("sluice: command denied") && se.contains("cannot parse"),
        "{se}"
    );
}

#[test]
fn extended_protocol_refusals_from_psycopg() {
    let env = env();
    let url = env.agent_url();
    let script = r#"
import sys, psycopg
from psycopg import errors
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    # A refused statement in the extended protocol: clear error, connection usable.
    try:
        c.execute("delete from customers where id = %s", (1,))
        raise AssertionError("not refused")
    except errors.InsufficientPrivilege as e:
        assert "customers-read-only" in str(e), str(e)
        assert e.diag.sqlstate == "42501"
    # Server-side prepared statement, refused at every execution.
    for _ in range(3):
        try:
            c.execute("delete from customers where id = %s", (2,), prepare=True)
            raise AssertionError("not refused")
        except errors.InsufficientPrivilege:
            pass
    assert c.execute("select count(*) from customers").fetchone()[0] == 50
    # Pipeline: allowed, refused, then allowed again after the sync.
    with c.pipeline() as p:
        c.execute("update orders set status = 'p1' where id = 5")
        try:
            c.execute("delete from customers where id = 4")
            p.sync()
            raise AssertionError("not refused")
        except errors.InsufficientPrivilege:
            pass
    assert c.execute("select status from orders where id = 5").fetchone()[0] == "p1"
    assert c.execute("select count(*) from customers").fetchone()[0] == 50
print("OK")
"#;
    let mut py = std::process::Command::new("python3");
    py.args(["-c", script, &url]);
    let out = run_with_timeout(&mut py, None, std::time::Duration::from_secs(60));
    assert!(
        out.status.success() && stdout(&out).contains("OK"),
        "{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        env.gateway_log()
    );
    assert_eq!(count(&env, "customers"), 50);
}

#[test]
fn refusals_are_recorded_with_their_rule() {
    let env = env();
    let url = env.agent_url();
    assert_denied(&env, &url, "drop table orders", "no-ddl");
    let sessions = env.wait_sessions_ended(1);
    let id = sessions[0]["id"].as_str().unwrap();
    let replay = env.replay(id);
    assert!(replay.contains("drop table orders"), "{replay}");
    assert!(replay.contains("deny (rule no-ddl)"), "{replay}");
    assert!(
        replay.contains("client saw error: sluice: command denied by rule \"no-ddl\""),
        "{replay}"
    );
}

const READ_ONLY_CONNECTION: &str = r#"
[[connections]]
name = "reports"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
default_action = "deny"

[[rules]]
name = "reports-may-read"
connections = ["reports"]
match = { sql = ["read"] }
action = "allow"
"#;

/// An allow-list (default deny, allow reads) judges every statement of a
/// message: an allowed read never carries a write or DDL piggybacked on it.
#[test]
fn an_allow_rule_never_carries_another_statement() {
    let env = Env::builder().extra_toml(READ_ONLY_CONNECTION).start();
    let url = env.url("agent", &env.agent_token(), "reports");
    assert_allowed(&env, &url, "select 1; select 2");
    assert_allowed(&env, &url, "with x as (select 1 as n) select n from x");
    let orders = count(&env, "orders");
    for sql in [
        "select 1; drop table orders",
        "SELECT 1;DELETE FROM orders WHERE true",
        "select 1 /* ; */; delete from orders where id > 0",
        "with gone as (delete from orders returning *) select count(*) from gone",
        "select 1; create table piggyback(x int)",
    ] {
        let out = env.psql(&url, &["-c", sql]);
        assert!(!out.status.success(), "{sql} ran: {}", stdout(&out));
        assert!(
            stderr(&out).contains("sluice: command denied"),
            "{sql}: {}",
            stderr(&out)
        );
    }
    assert!(table_exists(&env, "orders"));
    assert_eq!(count(&env, "orders"), orders);
    assert!(!table_exists(&env, "piggyback"));
}
