//! Just-in-time approval with real clients: psql waits on its live connection
//! while an approver uses `sluice approvals`; retry mode for short-timeout
//! agents; who may decide.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::pgwire::{exchange, Frontend};
use sluice_e2e::raw::RawConn;
use sluice_e2e::*;
use std::process::Output;
use std::thread;
use std::time::Duration;

const RULES: &str = r#"
[[rules]]
name = "reviewed-customer-writes"
match = { sql = ["write"], tables = ["customers"] }
action = "review"
approvers = ["dba"]
timeout = "60s"
message = "Changes to customers are reviewed by a DBA."

[[rules]]
name = "quick-review"
match = { sql = ["write"], tables = ["orders"], no_where = false }
groups = ["hurried"]
action = "review"
approvers = ["dba"]
timeout = "2s"

[[rules]]
name = "retry-review"
match = { sql = ["write"], tables = ["orders"] }
groups = ["batch"]
action = "review"
approvers = ["dba"]
mode = "retry"
timeout = "5m"
"#;

fn env() -> Env {
    let api = sluice_sandbox::free_port();
    Env::builder()
        .extra_toml(RULES)
        .gateway_env("SLUICE_LISTEN__API", &format!("127.0.0.1:{api}"))
        .start()
}

fn approvals(env: &Env, token: &str, args: &[&str]) -> Output {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--token", token]);
    env.sluice(&all)
}

/// Waits for one pending request visible to `token` and returns it.
fn pending(env: &Env, token: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(20), "a pending approval", || {
        let out = approvals(env, token, &["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().next()
    })
}

fn customer_name(env: &Env, id: i32) -> String {
    env.direct_sql(
        "app",
        &format!("select name from customers where id = {id}"),
    )
    .trim()
    .to_string()
}

#[test]
fn held_statement_runs_on_the_same_connection_after_approval() {
    let env = env();
    let url = env.agent_url();
    let dba = env.token("dana", &["dba"], "10m");
    let before = customer_name(&env, 1);
    let mut psql = env.psql_command(
        &url,
        &[
            "-c",
            "update customers set name = 'Approved Name' where id = 1 returning name",
        ],
    );
    let client = thread::spawn(move || run_with_timeout(&mut psql, None, Duration::from_secs(60)));
    let request = pending(&env, &dba);
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["subject"], "agent-1");
    assert_eq!(request["rule"], "reviewed-customer-writes");
    assert_eq!(
        customer_name(&env, 1),
        before,
        "nothing runs before approval"
    );

    // The requester may not approve, nor may someone outside the approver groups.
    let own = approvals(
        &env,
        &env.token("agent-1", &["agents", "dba"], "10m"),
        &["approve", &id],
    );
    assert!(
        !own.status.success() && stderr(&own).contains("own request"),
        "{}",
        stderr(&own)
    );
    let outsider = approvals(
        &env,
        &env.token("eve", &["agents"], "10m"),
        &["approve", &id],
    );
    assert!(!outsider.status.success(), "{}", stdout(&outsider));
    // A token the approver exchanged for an agent (narrowed to a connection)
    // keeps the groups, never the approver role.
    let narrowed = env.sluice(&[
        "token",
        "exchange",
        "--connection",
        "appdb",
        "--ttl",
        "5m",
        "--token",
        &env.token("dana", &["dba", "agents"], "10m"),
    ]);
    let narrowed = ok(&narrowed).trim().to_string();
    let refused = approvals(&env, &narrowed, &["approve", &id]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("narrowed to connections"),
        "{}",
        stderr(&refused)
    );

    let ok_out = approvals(&env, &dba, &["approve", &id, "--reason", "ticket OPS-42"]);
    assert!(ok_out.status.success(), "{}", stderr(&ok_out));
    let out = client.join().unwrap();
    let so = ok(&out);
    assert!(so.contains("Approved Name"), "{so}");
    let se = stderr(&out);
    assert!(
        se.contains(&id) && se.contains("sluice approvals approve"),
        "the client was told: {se}"
    );
    assert_eq!(customer_name(&env, 1), "Approved Name");

    let sessions = env.wait_sessions_ended(1);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(
        replay.contains(&format!(
            "approval {id} requested by rule reviewed-customer-writes"
        )),
        "{replay}"
    );
    assert!(
        replay.contains(&format!("approval {id} approved by dana: ticket OPS-42")),
        "{replay}"
    );
}

#[test]
fn held_statement_denied_or_timed_out_is_refused() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let before = customer_name(&env, 2);
    let mut psql = env.psql_command(
        &env.agent_url(),
        &["-c", "update customers set name = 'nope' where id = 2"],
    );
    let client = thread::spawn(move || run_with_timeout(&mut psql, None, Duration::from_secs(60)));
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    let out = approvals(&env, &dba, &["deny", &id, "--reason", "use the migration"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = client.join().unwrap();
    let se = failed(&out);
    assert!(se.contains("denied by dana: use the migration"), "{se}");
    assert_eq!(customer_name(&env, 2), before);

    // Nobody answers within the rule's 2 s: refused, nothing ran.
    let hurried = env.url(
        "agent-2",
        &env.token("agent-2", &["agents", "hurried"], "10m"),
        "appdb",
    );
    let out = env.psql(
        &hurried,
        &["-c", "update orders set status = 'late' where id = 3"],
    );
    assert!(
        failed(&out).contains("not decided within"),
        "{}",
        stderr(&out)
    );
    assert_ne!(
        env.direct_sql("app", "select status from orders where id = 3")
            .trim(),
        "late"
    );
}

#[test]
fn retry_mode_refuses_now_and_runs_the_approved_statement_once() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let batch = env.url(
        "batch-agent",
        &env.token("batch-agent", &["agents", "batch"], "10m"),
        "appdb",
    );
    let sql = "update orders set status = 'retried' where id = 4";
    let first = env.psql(&batch, &["-c", sql]);
    let se = failed(&first);
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    assert!(se.contains(&id), "the refusal names the approval: {se}");
    assert!(approvals(&env, &dba, &["approve", &id]).status.success());
    ok(&env.psql(&batch, &["-c", sql]));
    assert_eq!(
        env.direct_sql("app", "select status from orders where id = 4")
            .trim(),
        "retried"
    );
    // The approval was for one run.
    env.direct_sql("app", "update orders set status = 'reset' where id = 4");
    let again = env.psql(&batch, &["-c", sql]);
    assert!(!again.status.success());
    assert_eq!(
        env.direct_sql("app", "select status from orders where id = 4")
            .trim(),
        "reset"
    );
}

/// A retry grant is for the statement as sent. Moving the end of a `--`
/// comment (a newline) makes another statement — here one that updates
/// every row — which the grant must not cover; the table is the oracle.
#[test]
fn a_retry_grant_does_not_cover_a_statement_whose_comment_ends_elsewhere() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let batch = env.url(
        "batch-agent",
        &env.token("batch-agent", &["agents", "batch"], "10m"),
        "appdb",
    );
    let granted = |env: &Env| {
        env.direct_sql(
            "app",
            "select count(*) from orders where status = 'granted'",
        )
        .trim()
        .to_string()
    };
    let approved = "update orders set status = 'granted' where id = 5 -- or true";
    failed(&env.psql(&batch, &["-c", approved]));
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    assert!(approvals(&env, &dba, &["approve", &id]).status.success());
    let every_row = "update orders set status = 'granted' where id = 5 --\nor true";
    let out = env.psql(&batch, &["-c", every_row]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert_eq!(granted(&env), "0", "the grant ran another statement");
    // The approved statement itself still runs, once.
    ok(&env.psql(&batch, &["-c", approved]));
    assert_eq!(granted(&env), "1");
}

/// A retry grant for a statement with bound parameters is for those values.
/// A raw-protocol client is granted `… where id = $1` with 6, then sends
/// the same text bound to 7: refused, and a new approval; the table and the
/// server's statement log (the oracle) show that only row 6 changed.
#[test]
fn a_retry_grant_for_bound_parameters_does_not_cover_other_values() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let token = env.token("batch-agent", &["agents", "batch"], "10m");
    let mut conn = RawConn::login(env.addr(), "batch-agent", "appdb", &token)
        .unwrap_or_else(|e| panic!("login refused: {e:?}"));
    let sql = "update orders set status = 'bound' where id = $1";
    let mut run = |id: &str| {
        exchange(
            &mut conn,
            &[
                Frontend::parse("", sql),
                Frontend::bind("", "", &[id]),
                Frontend::execute(""),
                Frontend::Sync,
            ],
            Duration::from_secs(10),
        )
    };
    let bound = |env: &Env| {
        env.direct_sql(
            "app",
            "select coalesce(string_agg(id::text, ',' order by id), '') from orders where status = 'bound'",
        )
        .trim()
        .to_string()
    };
    let first = run("6");
    assert!(!first.errors().is_empty(), "{:?}", first.tags());
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    assert!(approvals(&env, &dba, &["approve", &id]).status.success());
    // The same text with another value: not what was approved.
    let other = run("7");
    assert!(!other.errors().is_empty(), "{:?}", other.tags());
    assert!(
        !other.tags().iter().any(|t| t.starts_with("UPDATE")),
        "{:?}",
        other.tags()
    );
    assert_eq!(bound(&env), "", "a grant for 6 updated another row");
    // The approved values run, once.
    let approved = run("6");
    assert!(
        approved.tags().iter().any(|t| t == "UPDATE 1"),
        "{:?}",
        approved.errors()
    );
    assert_eq!(bound(&env), "6");
    let again = run("6");
    assert!(!again.errors().is_empty(), "{:?}", again.tags());
    // The server's own log: the statement ran once, and was judged first.
    let report = env.assert_oracle();
    let runs = report
        .executed
        .iter()
        .filter(|s| s.text.contains("status = 'bound'"))
        .count();
    assert_eq!(runs, 1, "{report:?}");
}

#[test]
fn a_client_that_leaves_takes_its_held_statement_with_it() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let before = customer_name(&env, 3);
    let mut child = env
        .psql_command(
            &env.agent_url(),
            &["-c", "update customers set name = 'ghost' where id = 3"],
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    // The approver sees the request whole before deciding.
    let shown = approvals(&env, &dba, &["show", &id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        stdout(&shown).contains("  | update customers set name = 'ghost' where id = 3"),
        "{}",
        stdout(&shown)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The request is withdrawn; approving it now runs nothing.
    let state = wait_until(Duration::from_secs(15), "the request withdrawn", || {
        let out = approvals(&env, &dba, &["list", "--json", "--all"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
        let r = list.into_iter().find(|r| r["id"] == id.as_str())?;
        (r["state"] != "pending").then(|| r["state"].as_str().unwrap_or_default().to_string())
    });
    assert_eq!(state, "expired");
    let late = approvals(&env, &dba, &["approve", &id]);
    assert!(!late.status.success(), "{}", stdout(&late));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(customer_name(&env, 3), before);
    // The statement nobody decided is on record all the same.
    let sessions = env.wait_sessions_ended(1);
    let transcript: String = sessions
        .iter()
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    assert!(
        transcript.contains("held: update customers set name = 'ghost' where id = 3"),
        "{transcript}"
    );
}

#[test]
fn a_cancel_while_held_withdraws_the_statement() {
    let env = env();
    let dba = env.token("dana", &["dba"], "10m");
    let before = customer_name(&env, 4);
    let mut psql = env.psql_command(
        &env.agent_url(),
        &["-c", "update customers set name = 'canceled' where id = 4"],
    );
    psql.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = psql.spawn().unwrap();
    let pid = child.id().to_string();
    let id = pending(&env, &dba)["id"].as_str().unwrap().to_string();
    // Ctrl-C: psql sends a CancelRequest on a new connection.
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(20), "psql after cancel");
    assert!(
        failed(&out).contains("canceled by the client"),
        "{}",
        stderr(&out)
    );
    let late = approvals(&env, &dba, &["approve", &id]);
    assert!(!late.status.success(), "{}", stdout(&late));
    assert_eq!(customer_name(&env, 4), before);
}

/// An IMMUTABLE routine with constant arguments runs when the server plans the statement (at
/// Bind), before any review of its Execute could be asked: such a statement that needs a review
/// is refused where it is parsed, and nothing it calls runs.
#[test]
fn a_reviewed_write_inside_an_immutable_routine_cannot_run_at_bind() {
    let env = env();
    env.direct_sql(
        "app",
        "create function rename_first() returns void language sql as \
           'update customers set name = ''renamed'' where id = 1'; \
         create function folded(int) returns int language plpgsql immutable as \
           $$ begin perform rename_first(); return $1; end $$",
    );
    let before = customer_name(&env, 1);
    let mut conn = env.raw_agent();
    let errors = conn.extended_errors("select folded(1)");
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("needs a review")),
        "{errors:?}"
    );
    assert_eq!(customer_name(&env, 1), before, "the write ran at Bind");
}
