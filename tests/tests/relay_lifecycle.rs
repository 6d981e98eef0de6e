//! The statement and portal lifecycle as a hostile raw-protocol client can
//! drive it: what the server runs is what the gateway judged, rows never
//! leave before their columns are planned, and statements that change how
//! later text is read are answered before anything after them is forwarded.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{self, Msg, RawConn};
use sluice_e2e::*;

const CONFIG: &str = r#"
[[rules]]
name = "no-ddl"
match = { sql = ["ddl"] }
action = "deny"

[[rules]]
name = "no-unbounded-writes"
match = { sql = ["write"], no_where = true }
action = "deny"

[masking]
detectors = ["email", "credit_card", "us_ssn"]
style = "redact"

[[masking.columns]]
name = "national-ids"
columns = ["customers.national_id"]
style = "null"
"#;

fn env() -> Env {
    Env::builder().extra_toml(CONFIG).start()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend(0i16.to_be_bytes());
    raw::message(b'P', &body)
}

fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend(cstr(statement));
    body.extend(0i16.to_be_bytes()); // parameter formats
    body.extend(0i16.to_be_bytes()); // parameters
    body.extend(0i16.to_be_bytes()); // result formats
    raw::message(b'B', &body)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend(cstr(name));
    raw::message(b'D', &body)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstr(portal);
    body.extend(0i32.to_be_bytes());
    raw::message(b'E', &body)
}

fn sync() -> Vec<u8> {
    raw::message(b'S', &[])
}

fn send_all(conn: &mut RawConn, parts: &[Vec<u8>]) -> Vec<Msg> {
    conn.send(&parts.concat()).unwrap();
    conn.read_until_ready()
}

fn orders(env: &Env) -> String {
    env.direct_sql("app", "select count(*) from orders")
}

#[test]
fn rows_are_masked_without_a_describe() {
    let env = env();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    let msgs = send_all(
        &mut conn,
        &[
            parse(
                "",
                "select email, card_number, national_id from customers order by id limit 2",
            ),
            bind("", ""),
            execute(""),
            sync(),
        ],
    );
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    assert!(
        !msgs.iter().any(|m| m.tag == b'T'),
        "the gateway's own Describe is not passed on: {msgs:?}"
    );
    let rows = raw::rows(&msgs);
    assert_eq!(rows.len(), 2, "{msgs:?}");
    for row in &rows {
        let email = row[0].as_deref().unwrap();
        assert!(!email.contains("@example.com"), "email masked: {email}");
        assert_ne!(row[1].as_deref(), Some("4111111111111111"));
        assert_eq!(row[2], None, "national_id is nulled: {row:?}");
    }
    let leaked = msgs.iter().any(|m| {
        contains_bytes(&m.body, b"4111111111111111") || contains_bytes(&m.body, b"@example.com")
    });
    assert!(!leaked, "{msgs:?}");
}

#[test]
fn a_bound_portal_runs_the_text_it_was_bound_to() {
    let env = env();
    let before = orders(&env);
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    let msgs = send_all(
        &mut conn,
        &[
            parse("", "delete from orders"),
            bind("", ""),
            parse("", "select 1"),
            execute(""),
            sync(),
        ],
    );
    let errors = raw::errors(&msgs);
    assert_eq!(errors.len(), 1, "{msgs:?}");
    assert_eq!(errors[0].code(), "42501", "{errors:?}");
    assert!(
        errors[0].to_string().contains("no-unbounded-writes"),
        "{errors:?}"
    );
    assert_eq!(orders(&env), before, "the DELETE did not run");
    // The connection keeps working.
    assert_eq!(
        raw::rows(&conn.query("select 7"))[0][0].as_deref(),
        Some("7")
    );
}

#[test]
fn protocol_and_sql_statement_names_never_collide() {
    let env = env();
    let before = orders(&env);
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    // A protocol-level statement `s`…
    let msgs = send_all(&mut conn, &[parse("s", "select 2"), sync()]);
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    // …then a SQL PREPARE of the same name and EXECUTE: runs the SQL one.
    let msgs = conn.query("prepare s as select 1");
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    let msgs = conn.query("execute s");
    assert_eq!(
        raw::rows(&msgs),
        vec![vec![Some("1".to_string())]],
        "{msgs:?}"
    );
    // A failed PREPARE does not redefine what EXECUTE runs.
    let msgs = conn.query("prepare s as delete from orders where id = 1");
    assert_eq!(raw::errors(&msgs)[0].code(), "42P05", "{msgs:?}");
    let msgs = conn.query("execute s");
    assert_eq!(
        raw::rows(&msgs),
        vec![vec![Some("1".to_string())]],
        "{msgs:?}"
    );
    // The protocol statement still runs its own text.
    let msgs = send_all(&mut conn, &[bind("", "s"), execute(""), sync()]);
    assert_eq!(
        raw::rows(&msgs),
        vec![vec![Some("2".to_string())]],
        "{msgs:?}"
    );
    // A denied statement is refused where it is parsed.
    let msgs = send_all(
        &mut conn,
        &[
            parse("d", "delete from orders"),
            bind("", "d"),
            execute(""),
            sync(),
        ],
    );
    let errors = raw::errors(&msgs);
    assert_eq!(errors.len(), 1, "{msgs:?}");
    assert_eq!(errors[0].code(), "42501", "{msgs:?}");
    assert!(
        !msgs.iter().any(|m| m.tag == b'1'),
        "no ParseComplete: {msgs:?}"
    );
    assert_eq!(orders(&env), before);
    // A duplicate protocol name is an error, as on the server.
    let msgs = send_all(&mut conn, &[parse("s", "select 3"), sync()]);
    assert_eq!(raw::errors(&msgs)[0].code(), "42P05", "{msgs:?}");
}

#[test]
fn named_statements_are_reused_across_executions() {
    let env = env();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    let msgs = send_all(
        &mut conn,
        &[
            parse("get_order", "select id from orders order by id limit 1"),
            describe(b'S', "get_order"),
            sync(),
        ],
    );
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    for _ in 0..3 {
        let msgs = send_all(&mut conn, &[bind("", "get_order"), execute(""), sync()]);
        assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
        assert_eq!(raw::rows(&msgs).len(), 1, "{msgs:?}");
    }
    let mut close = vec![b'S'];
    close.extend(cstr("get_order"));
    let msgs = send_all(&mut conn, &[raw::message(b'C', &close), sync()]);
    assert!(
        msgs.iter().any(|m| m.tag == b'3'),
        "CloseComplete: {msgs:?}"
    );
    let msgs = send_all(&mut conn, &[bind("", "get_order"), execute(""), sync()]);
    assert_eq!(raw::errors(&msgs)[0].code(), "26000", "{msgs:?}");
}

#[test]
fn a_settings_change_is_answered_before_the_next_statement_is_judged() {
    let env = env();
    let before = orders(&env);
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    let first = raw::query_message(
        "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
    );
    let second = raw::query_message("select '\\'\n'; delete from orders; --'");
    conn.send(&[first, second].concat()).unwrap();
    let closed = conn.read_to_close(std::time::Duration::from_secs(20));
    let errors = closed.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("standard_conforming_strings")),
        "the session ends on the hazard: {errors:?}"
    );
    assert_eq!(orders(&env), before, "the hidden DELETE did not run");
}

#[test]
fn notification_payloads_go_through_the_detectors() {
    let env = env();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    let msgs = conn.query("listen leak");
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    let msgs = conn.query(
        "select pg_notify('leak', card_number || ' ' || email) from customers order by id limit 1",
    );
    assert!(raw::errors(&msgs).is_empty(), "{msgs:?}");
    let notes: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'A').collect();
    assert_eq!(notes.len(), 1, "{msgs:?}");
    assert!(
        !contains_bytes(&notes[0].body, b"4111111111111111"),
        "{msgs:?}"
    );
    assert!(!contains_bytes(&notes[0].body, b"@example.com"), "{msgs:?}");
}

#[test]
fn column_rules_follow_the_data_through_expressions() {
    let env = env();
    let url = env.agent_url();
    let secret = env.direct_sql(
        "app",
        "select national_id from customers order by id limit 1",
    );
    let secret = secret.trim();
    assert!(secret.len() > 5, "demo data has national ids: {secret:?}");
    let reversed: String = secret.chars().rev().collect();
    for sql in [
        "select reverse(national_id) from customers",
        "select national_id || '' from customers",
        "select substr(national_id, 1, 11) as x from customers",
        "select string_agg(national_id, ',') from customers",
        "select row_to_json(c) from customers c",
        "select c::text from customers c",
        "select x from (select lower(national_id) x from customers) s",
        "with t as (select national_id n from customers) select upper(n) from t",
        "select national_id from customers union all select 'x'",
    ] {
        let out = env.psql(&url, &["-At", "-c", sql]);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains(secret), "{sql}: {text}");
        assert!(!text.contains(&reversed), "{sql}: {text}");
    }
    // Ordinary work is untouched.
    let out = env.psql(
        &url,
        &[
            "-At",
            "-c",
            "select count(*), lower(name) from customers group by 2 order by 2 limit 1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("1|"), "{}", stdout(&out));
}

#[test]
fn masked_values_do_not_leave_through_errors_or_notifications() {
    let env = env();
    let url = env.agent_url();
    let secret = env.direct_sql(
        "app",
        "select national_id from customers order by id limit 1",
    );
    let secret = secret.trim().to_string();
    let out = env.psql(&url, &["-c", "select national_id::int from customers"]);
    let err = stderr(&out);
    assert!(!err.contains(&secret), "{err}");
    assert!(err.contains("withheld"), "{err}");
    let out = env.psql(
        &url,
        &["-c", "select pg_notify('c', national_id) from customers"],
    );
    let err = stderr(&out);
    assert!(err.contains("masked column"), "{err}");
    assert!(err.contains("42501") || err.contains("sluice"), "{err}");
}

#[test]
fn cursors_are_masked_by_their_query_and_ordinary_ones_work() {
    let env = env();
    let url = env.agent_url();
    let secret = env.direct_sql(
        "app",
        "select national_id from customers order by id limit 1",
    );
    let secret = secret.trim().to_string();
    let reversed: String = secret.chars().rev().collect();
    // psql's FETCH_COUNT reads through DECLARE … CURSOR and FETCH.
    let out = ok(&env.psql(
        &url,
        &[
            "-At",
            "-v",
            "FETCH_COUNT=2",
            "-c",
            "select count(*), lower(name) from customers group by 2 order by 2",
        ],
    ));
    assert!(out.lines().count() > 2, "{out}");
    let out = env.psql(
        &url,
        &[
            "-At",
            "-v",
            "FETCH_COUNT=2",
            "-c",
            "select reverse(national_id) from customers",
        ],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !text.contains(&reversed) && !text.contains(&secret),
        "{text}"
    );
}

#[test]
fn a_settings_change_inside_an_extended_batch_cannot_hide_a_delete() {
    let env = env();
    let before = orders(&env);
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &env.agent_token()).unwrap();
    // The server reports the new setting only before its next ReadyForQuery,
    // which this batch holds back behind the hidden DELETE.
    conn.send(
        &[
            parse(
                "s1",
                "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
            ),
            bind("", "s1"),
            execute(""),
            raw::query_message("select '\\'\n'; delete from orders; --'"),
            sync(),
        ]
        .concat(),
    )
    .unwrap();
    let closed = conn.read_to_close(std::time::Duration::from_secs(20));
    let errors = closed.errors();
    assert!(!errors.is_empty(), "refused or ended: {errors:?}");
    assert_eq!(orders(&env), before, "the hidden DELETE did not run");
    // The refusal is in the audit record, with the text that was refused.
    let sessions = env.wait_sessions_ended(1);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    if errors
        .iter()
        .any(|e| e.0.get(&'M').is_some_and(|m| m.contains("Sync")))
    {
        assert!(replay.contains("sluice:pipeline"), "{replay}");
        assert!(replay.contains("delete from orders"), "{replay}");
    }
}
