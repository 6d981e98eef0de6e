//! Recording and the tamper-evident audit trail: replay, sessions list, write-ahead records,
//! `audit verify` detecting changed, deleted, reordered and truncated records, and sessions
//! left open by a crashed gateway.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{self, RawConn};
use sluice_e2e::*;
use std::time::Duration;

fn verify_ok(env: &Env) -> String {
    let out = env.sluice(&["audit", "verify"]);
    let so = ok(&out);
    assert!(so.contains("all chains intact"), "{so}");
    so
}

#[track_caller]
fn verify_broken(env: &Env, session: &str, seq: u64, problem: &str) {
    let out = env.sluice(&["audit", "verify"]);
    let se = failed(&out);
    let named = format!("session {session} record #{seq}: ");
    assert!(se.contains(&named), "expected {named:?} in:\n{se}");
    assert!(se.contains(problem), "expected {problem:?} in:\n{se}");
}

/// One row of `events`: (seq, at_ms, kind, body, prev_hash, hash, line_at,
/// line_len), as SQL literals.
/// A new psql session through the gateway selects `word` and gets it back.
#[track_caller]
fn echo_through_psql(env: &Env, token: &str, word: &str) {
    let out = env.psql(
        &env.url("agent-1", token, "appdb"),
        &["-c", &format!("select '{word}'")],
    );
    assert_eq!(ok(&out).trim(), word);
}

fn event_row(env: &Env, session: &str, seq: u64) -> String {
    env.sqlite(&format!(
        "SELECT quote(seq) || ',' || quote(at_ms) || ',' || quote(kind) || ',' || quote(body) \
         || ',' || quote(prev_hash) || ',' || quote(hash) || ',' || quote(line_at) \
         || ',' || quote(line_len) FROM events \
         WHERE session_id = '{session}' AND seq = {seq}"
    ))
    .trim()
    .to_string()
}

#[test]
fn replay_shows_commands_and_verify_detects_tampering() {
    let mut env = Env::start();
    let token = env.token("agent-7", &["agents", "oncall"], "10m");
    // The URL's user name is not the identity: the token's subject is.
    let url = env.url("someone-else", &token, "appdb");
    let out = env.psql(
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "select 42",
            "-c",
            "select name, email from customers order by id limit 3",
            "-c",
            "select 1/0",
            "-c",
            "select 'last-one'",
        ],
    );
    assert!(stdout(&out).contains("last-one"), "{}", stderr(&out));

    let sessions = env.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let s = &sessions[0];
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["subject"], "agent-7");
    assert_eq!(s["groups"], serde_json::json!(["agents", "oncall"]));
    assert_eq!(s["connection"], "appdb");
    assert_eq!(s["protocol"], "postgres");
    assert!(
        s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{s}"
    );
    assert_eq!(s["commands"], 4, "{s}");
    assert_eq!(s["end_reason"], "client terminated", "{s}");
    let (start, end) = (
        s["started_at_ms"].as_u64().unwrap(),
        s["ended_at_ms"].as_u64().unwrap(),
    );
    assert!(start > 1_600_000_000_000 && start <= end, "{s}");
    let table = ok(&env.sluice(&["sessions", "list"]));
    assert!(
        table.contains(&id) && table.contains("agent-7") && table.contains("appdb"),
        "{table}"
    );

    let replay = env.replay(&id);
    let expect = [
        format!("session {id} opened by agent-7 (groups: agents, oncall"),
        "on appdb [postgres] from 127.0.0.1:".to_string(),
        "[1] query: select 42".to_string(),
        "decision: allowed".to_string(),
        "[1] SELECT 1 — 1 rows".to_string(),
        "| 42".to_string(),
        "[2] query: select name, email from customers order by id limit 3".to_string(),
        "[2] SELECT 3 — 3 rows".to_string(),
        "| name | email".to_string(),
        "[3] query: select 1/0".to_string(),
        "[3] client saw error: 22012: division by zero".to_string(),
        "[4] query: select 'last-one'".to_string(),
        "| last-one".to_string(),
        "session ended: client terminated".to_string(),
    ];
    for e in &expect {
        assert!(replay.contains(e.as_str()), "replay lacks {e:?}:\n{replay}");
    }
    assert_eq!(replay.matches("decision: allowed").count(), 4, "{replay}");
    let first_customer = env.direct_sql("app", "select name from customers order by id limit 1");
    assert!(
        replay.contains(&format!("| {} |", first_customer.trim())),
        "sampled rows: {replay}"
    );
    // The transcript is in order.
    let positions: Vec<usize> = [
        "opened by",
        "[1] query",
        "[2] query",
        "[3] query",
        "[4] query",
        "session ended",
    ]
    .iter()
    .map(|p| replay.find(p).unwrap())
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{replay}");

    verify_ok(&env);
    let records: u64 = env
        .sqlite(&format!(
            "SELECT count(*) FROM events WHERE session_id = '{id}'"
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(
        records >= 10,
        "start + 4 × (decided, finished) + end: {records}"
    );

    // 1. A record pointed at another record's journal line (the index keeps
    // no bodies: they are read from the line it points at).
    let journal_text = std::fs::read_to_string(env.state_dir.join("journal.log")).unwrap();
    let seq: u64 = journal_text
        .lines()
        .find(|l| l.starts_with(&format!("{id}\t")) && l.contains("select 42"))
        .and_then(|l| l.split('\t').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("the decision on `select 42` is in the journal");
    let saved = event_row(&env, &id, seq);
    env.sqlite(&format!(
        "UPDATE events SET
             line_at = (SELECT line_at FROM events WHERE session_id = '{id}' AND seq = {seq} + 1),
             line_len = (SELECT line_len FROM events WHERE session_id = '{id}' AND seq = {seq} + 1)
         WHERE session_id = '{id}' AND seq = {seq}"
    ));
    verify_broken(&env, &id, seq, "is not this record");
    env.sqlite(&format!(
        "DELETE FROM events WHERE session_id = '{id}' AND seq = {seq};\n\
         INSERT INTO events VALUES ('{id}', {saved});"
    ));
    verify_ok(&env);

    // 2. A deleted record in the middle.
    let saved = event_row(&env, &id, 4);
    env.sqlite(&format!(
        "DELETE FROM events WHERE session_id = '{id}' AND seq = 4"
    ));
    verify_broken(&env, &id, 4, "missing");
    env.sqlite(&format!("INSERT INTO events VALUES ('{id}', {saved})"));
    verify_ok(&env);

    // 3. Two records swapped.
    env.sqlite(&format!(
        "UPDATE events SET seq = -1 WHERE session_id = '{id}' AND seq = 2;\n\
         UPDATE events SET seq = 2 WHERE session_id = '{id}' AND seq = 3;\n\
         UPDATE events SET seq = 3 WHERE session_id = '{id}' AND seq = -1;"
    ));
    verify_broken(&env, &id, 2, "");
    env.sqlite(&format!(
        "UPDATE events SET seq = -1 WHERE session_id = '{id}' AND seq = 2;\n\
         UPDATE events SET seq = 2 WHERE session_id = '{id}' AND seq = 3;\n\
         UPDATE events SET seq = 3 WHERE session_id = '{id}' AND seq = -1;"
    ));
    verify_ok(&env);

    // 4. The last record cut off (the session head still knows how many there were).
    let saved = event_row(&env, &id, records);
    env.sqlite(&format!(
        "DELETE FROM events WHERE session_id = '{id}' AND seq = {records}"
    ));
    verify_broken(&env, &id, records, "missing");
    env.sqlite(&format!("INSERT INTO events VALUES ('{id}', {saved})"));
    verify_ok(&env);

    // 5. A record's timestamp moved (in the index: the journal line it
    // points at no longer matches it).
    env.sqlite(&format!(
        "UPDATE events SET at_ms = at_ms + 1 WHERE session_id = '{id}' AND seq = 1"
    ));
    verify_broken(&env, &id, 1, "is not this record");
    env.sqlite(&format!(
        "UPDATE events SET at_ms = at_ms - 1 WHERE session_id = '{id}' AND seq = 1"
    ));
    verify_ok(&env);

    // The same attacks on the journal (the write-ahead copy), if the store keeps one.
    let journal = env.state_dir.join("journal.log");
    if !journal.exists() {
        return;
    }
    env.stop_gateway();
    let original = std::fs::read(&journal).unwrap();
    let lines: Vec<&[u8]> = original
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let line_of = |seq: u64| {
        lines
            .iter()
            .position(|l| l.starts_with(format!("{id}\t{seq}\t").as_bytes()))
            .unwrap_or_else(|| panic!("no journal line for record #{seq}"))
    };
    let write_lines = |lines: &[&[u8]]| {
        let mut out = lines.join(&b'\n');
        out.push(b'\n');
        std::fs::write(&journal, out).unwrap();
    };
    // One changed byte (same length).
    let mut changed = lines.clone();
    let edited = String::from_utf8(lines[line_of(seq)].to_vec())
        .unwrap()
        .replace("select 42", "select 43");
    changed[line_of(seq)] = edited.as_bytes();
    write_lines(&changed);
    verify_broken(&env, &id, seq, "content changed");
    std::fs::write(&journal, &original).unwrap();
    verify_ok(&env);
    // A line deleted: the next record no longer follows.
    let mut deleted = lines.clone();
    deleted.remove(line_of(4));
    write_lines(&deleted);
    // Detected either as a break in the chain or as a journal shorter than the index.
    let se = failed(&env.sluice(&["audit", "verify"]));
    assert!(
        se.contains(&format!("session {id} record #5: ")) || se.contains("journal is shorter"),
        "{se}"
    );
    std::fs::write(&journal, &original).unwrap();
    verify_ok(&env);
    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(line_of(2), line_of(3));
    write_lines(&swapped);
    verify_broken(&env, &id, 3, "does not follow");
    std::fs::write(&journal, &original).unwrap();
    verify_ok(&env);
}

#[test]
fn commands_are_recorded_before_they_run_and_crashes_are_closed() {
    let mut env = Env::start();
    let token = env.agent_token();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
    conn.send(&raw::query_message("select pg_sleep(3), 'write-ahead'"))
        .unwrap();
    // While the statement runs upstream, its decision is already in the store.
    wait_until(Duration::from_secs(10), "pg_sleep running upstream", || {
        (env.direct_sql(
            "postgres",
            "select count(*) from pg_stat_activity where state = 'active' \
                     and query like 'select pg_sleep(3)%'",
        )
        .trim()
            == "1")
            .then_some(())
    });
    // `sluice replay` reads the store as it is (journal included).
    let open = env.sessions();
    assert_eq!(open.len(), 1, "{open:?}");
    let id = open[0]["id"].as_str().unwrap().to_string();
    let during = env.replay(&id);
    assert!(
        during.contains("[1] query: select pg_sleep(3), 'write-ahead'"),
        "no write-ahead record while the command runs:\n{during}"
    );
    assert!(during.contains("decision: allowed"), "{during}");
    assert!(
        !during.contains("[1] SELECT"),
        "finished before it ran?\n{during}"
    );
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let msgs = conn.read_until_ready();
    assert_eq!(raw::rows(&msgs)[0][1].as_deref(), Some("write-ahead"));

    // A crash (SIGKILL) with the session open; the restarted gateway closes it.
    env.kill_gateway();
    let closed = conn.read_to_close(Duration::from_secs(5));
    assert!(closed.errors().is_empty() || closed.eof);
    let open = env.sessions();
    assert_eq!(open.len(), 1);
    assert!(open[0]["ended_at_ms"].is_null(), "{open:?}");
    env.start_gateway();
    let sessions = env.wait_sessions_ended(1);
    assert_eq!(
        sessions[0]["end_reason"], "gateway restarted",
        "{sessions:?}"
    );
    verify_ok(&env);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(
        replay.contains("session ended: gateway restarted"),
        "{replay}"
    );
    assert!(replay.contains("write-ahead"), "{replay}");

    // The restarted gateway serves, with the same signing key (old tokens still work).
    echo_through_psql(&env, &token, "back");
    // A graceful restart too.
    env.restart_gateway();
    echo_through_psql(&env, &token, "again");
    env.wait_sessions_ended(3);
    verify_ok(&env);
}

/// A client's single statement of megabytes (longer than the indexer reads
/// at a time) is recorded, indexed and replayed with what follows it, and a
/// gateway killed after it continues every chain; the server's statement log
/// (the oracle, on drop and below) shows it ran as judged.
#[test]
fn a_statement_of_megabytes_is_indexed_and_chains_survive_a_crash_after_it() {
    let mut env = Env::start();
    let token = env.agent_token();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let long = "x".repeat(9 << 20);
    conn.send(&raw::query_message(&format!("select length('{long}')")))
        .unwrap();
    let msgs = conn.read_until_ready();
    assert_eq!(raw::rows(&msgs)[0][0].as_deref(), Some("9437184"));
    conn.send(&raw::query_message("select 'after the long one'"))
        .unwrap();
    let msgs = conn.read_until_ready();
    assert_eq!(
        raw::rows(&msgs)[0][0].as_deref(),
        Some("after the long one")
    );
    // `sluice replay` reads the index: it must reach past the long record.
    let open = env.sessions();
    assert_eq!(open.len(), 1, "{open:?}");
    let replay = env.replay(open[0]["id"].as_str().unwrap());
    assert!(
        replay.contains("select length('xxxxxxxx"),
        "no long statement"
    );
    assert!(
        replay.contains("select 'after the long one'"),
        "the index stopped at the long record"
    );
    // A crash, then the restarted gateway appends on from the index's heads.
    env.kill_gateway();
    drop(conn);
    env.start_gateway();
    env.wait_sessions_ended(1);
    echo_through_psql(&env, &token, "after the crash");
    env.wait_sessions_ended(2);
    verify_ok(&env);
    env.assert_oracle();
}

fn parse_bind_execute(statement: &str, sql: &str, param: &str) -> Vec<u8> {
    let mut parse = format!("{statement}\0{sql}\0").into_bytes();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = format!("\0{statement}\0").into_bytes();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
    bind.extend_from_slice(param.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut out = raw::message(b'P', &parse);
    out.extend(raw::message(b'B', &bind));
    out.extend(raw::message(b'D', b"P\0"));
    out.extend(raw::message(b'E', &execute));
    out.extend(raw::message(b'S', &[]));
    out
}

#[test]
fn extended_protocol_commands_are_replayed() {
    let env = Env::start();
    let token = env.agent_token();
    let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
    conn.send(&parse_bind_execute(
        "s1",
        "select $1::int + 1 as answer",
        "41",
    ))
    .unwrap();
    let msgs = conn.read_until_ready();
    assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
    assert_eq!(raw::rows(&msgs), vec![vec![Some("42".to_string())]]);
    conn.send(&parse_bind_execute(
        "",
        "select $1::text as echo",
        "unnamed-param",
    ))
    .unwrap();
    let msgs = conn.read_until_ready();
    assert_eq!(
        raw::rows(&msgs),
        vec![vec![Some("unnamed-param".to_string())]]
    );
    conn.send(&parse_bind_execute("", "select 1 / $1::int", "0"))
        .unwrap();
    let msgs = conn.read_until_ready();
    assert_eq!(raw::errors(&msgs)[0].code(), "22012");
    conn.send(&raw::message(b'X', &[])).unwrap();
    conn.read_to_close(Duration::from_secs(5));

    let sessions = env.wait_sessions_ended(1);
    let id = sessions[0]["id"].as_str().unwrap();
    assert_eq!(sessions[0]["commands"], 3, "{sessions:?}");
    let replay = env.replay(id);
    for e in [
        "opened by agent-1",
        "[1] execute s1: select $1::int + 1 as answer",
        "[1] SELECT 1 — 1 rows",
        "| answer",
        "| 42",
        "[2] execute: select $1::text as echo",
        "| unnamed-param",
        "[3] execute: select 1 / $1::int",
        "[3] client saw error: 22012: division by zero",
        "session ended: client terminated",
    ] {
        assert!(replay.contains(e), "replay lacks {e:?}:\n{replay}");
    }
    assert_eq!(replay.matches("decision: allowed").count(), 3, "{replay}");
    verify_ok(&env);
}

/// Many sessions at once: every one is served, recorded with its own command count, and
/// every chain verifies (the store interleaves their writes).
#[test]
fn concurrent_sessions_are_each_recorded_intact() {
    let env = Env::start();
    let token = env.agent_token();
    let url = env.url("agent-1", &token, "appdb");
    const CLIENTS: usize = 24;
    const STATEMENTS: usize = 20;
    let results: Vec<(usize, std::process::Output)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (env, url) = (&env, &url);
                scope.spawn(move || {
                    let script: String = (0..STATEMENTS)
                        .map(|i| format!("select 'client-{c}-stmt-{i}';\n"))
                        .collect();
                    (c, env.psql_input(url, &["-f", "-"], Some(&script)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, out) in &results {
        let so = ok(out);
        assert_eq!(so.lines().count(), STATEMENTS, "client {c}: {so}");
        assert!(
            so.contains(&format!("client-{c}-stmt-{}", STATEMENTS - 1)),
            "{so}"
        );
    }
    let sessions = env.wait_sessions_ended(CLIENTS);
    assert_eq!(sessions.len(), CLIENTS);
    for s in &sessions {
        assert_eq!(s["commands"], STATEMENTS, "{s}");
        let replay = env.replay(s["id"].as_str().unwrap());
        // Each transcript holds exactly one client's statements.
        let client = replay
            .split("client-")
            .nth(1)
            .and_then(|t| t.split('-').next())
            .unwrap()
            .to_string();
        assert_eq!(
            replay
                .matches(&format!("query: select 'client-{client}-stmt-"))
                .count(),
            STATEMENTS,
            "{replay}"
        );
        assert_eq!(replay.matches("query: select 'client-").count(), STATEMENTS);
    }
    let so = verify_ok(&env);
    assert!(so.contains(&format!("{CLIENTS} sessions")), "{so}");
}
