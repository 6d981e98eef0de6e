//! Query cancellation through the gateway: psql's Ctrl-C, psycopg's cancel, raw
//! CancelRequests with right and wrong keys.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{self, RawConn};
use sluice_e2e::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Waits until the upstream shows `query` running.
fn wait_running(env: &Env, needle: &str) {
    let sql = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query like '{needle}%'"
    );
    wait_until(
        Duration::from_secs(10),
        &format!("upstream running {needle}"),
        || (env.direct_sql("postgres", &sql).trim() == "1").then_some(()),
    );
}

#[test]
fn psql_ctrl_c_cancels_the_running_query() {
    let env = Env::start();
    let url = env.agent_url();
    let mut cmd = env.psql_command(&url, &["-c", "select pg_sleep(30)"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(&env, "select pg_sleep(30)");
    let started = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_output(child, Duration::from_secs(15), "psql select pg_sleep(30)");
    let elapsed = started.elapsed();
    let se = failed(&out);
    assert!(
        se.contains("canceling statement due to user request"),
        "stderr: {se}\ngateway log:\n{}",
        env.gateway_log()
    );
    assert!(elapsed < Duration::from_secs(5), "cancel took {elapsed:?}");
    // The upstream backend is idle again: the statement really stopped there.
    assert_eq!(
        env.direct_sql(
            "postgres",
            "select count(*) from pg_stat_activity where query like 'select pg_sleep(30)%' \
             and state = 'active'"
        )
        .trim(),
        "0"
    );
}

#[test]
fn psycopg_cancel_and_cancel_safe_keep_the_session_usable() {
    let env = Env::start();
    let out = env.python("cancel.py", &[&env.agent_url()]);
    let so = stdout(&out);
    assert!(
        out.status.success() && so.lines().last() == Some("OK"),
        "cancel.py failed ({})\n--- stdout ---\n{so}\n--- stderr ---\n{}\n--- gateway log ---\n{}",
        out.status,
        stderr(&out),
        env.gateway_log()
    );
    assert!(so.contains("cancel: canceled after"), "{so}");
    assert!(so.contains("cancel_safe: canceled after"), "{so}");
}

#[test]
fn raw_cancel_requests_need_the_right_key() {
    let env = Env::start();
    let token = env.agent_token();
    let mut a = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
    let (pid, secret) = a.backend_key().expect("BackendKeyData during login");

    // The key the client got is the gateway's, not the upstream backend's.
    let upstream_pid = raw::rows(&a.query("select pg_backend_pid()"))[0][0]
        .clone()
        .unwrap();
    assert_ne!(pid.to_string(), upstream_pid, "the upstream's pid leaked");

    // Wrong keys (and a garbage-sized cancel packet) cancel nothing.
    a.send(&raw::query_message("select pg_sleep(2), 'survived'"))
        .unwrap();
    wait_running(&env, "select pg_sleep(2)");
    raw::send_cancel(env.addr(), pid, secret.wrapping_add(1));
    raw::send_cancel(env.addr(), pid ^ 1, secret);
    raw::send_cancel(env.addr(), upstream_pid.parse().unwrap(), secret);
    a.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let msgs = a.read_until_ready();
    assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
    assert_eq!(raw::rows(&msgs)[0][1].as_deref(), Some("survived"));

    // The right key cancels.
    a.send(&raw::query_message("select pg_sleep(30)")).unwrap();
    wait_running(&env, "select pg_sleep(30)");
    let started = Instant::now();
    raw::send_cancel(env.addr(), pid, secret);
    let msgs = a.read_until_ready();
    let errors = raw::errors(&msgs);
    assert_eq!(errors.len(), 1, "{msgs:?}");
    assert_eq!(errors[0].code(), "57014", "{}", errors[0]);
    assert!(
        errors[0]
            .message()
            .contains("canceling statement due to user request"),
        "{}",
        errors[0]
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Still usable.
    assert_eq!(
        raw::rows(&a.query("select 'still-here'"))[0][0].as_deref(),
        Some("still-here")
    );

    // After the session ends its key is forgotten: a late cancel with it is harmless, and
    // a new session's query is not hit by it.
    a.send(&raw::message(b'X', &[])).unwrap();
    let _ = a.read_to_close(Duration::from_secs(5));
    let mut b = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
    b.send(&raw::query_message("select pg_sleep(1), 'b-ok'"))
        .unwrap();
    raw::send_cancel(env.addr(), pid, secret);
    let msgs = b.read_until_ready();
    assert!(raw::errors(&msgs).is_empty(), "{:?}", raw::errors(&msgs));
}
