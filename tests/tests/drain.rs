//! Graceful shutdown: on SIGTERM the gateway stops accepting, lets live
//! statements finish up to `listen.drain_timeout`, then ends what is left with
//! a clear message; every statement the server ran has its audit record (the
//! oracle checks the server's statement log against the journal on drop).

#![allow(clippy::expect_used)]

use sluice_e2e::{wait_output, wait_until, Env};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sends SIGTERM to the gateway without waiting for it.
fn sigterm(env: &Env) {
    let pid = env.gateway_pid().expect("the gateway runs");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
}

/// Waits until the backend runs `pg_sleep` (so the statement is in flight).
fn wait_sleeping(env: &Env) {
    wait_until(Duration::from_secs(15), "pg_sleep running upstream", || {
        let n = env.direct_sql(
            "postgres",
            "select count(*) from pg_stat_activity where query like 'select pg_sleep%'",
        );
        (n.trim() != "0").then_some(())
    });
}

/// psql running `sql` (a `select pg_sleep…`) through the gateway, once the
/// statement is in flight upstream.
fn start_sleeping(env: &Env, url: &str, sql: &str) -> Child {
    let running = env
        .psql_command(url, &["-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning psql");
    wait_sleeping(env);
    running
}

/// Cancels the backends still sleeping, so the oracle's log is complete.
fn cancel_sleeping(env: &Env) {
    env.direct_sql(
        "postgres",
        "select pg_cancel_backend(pid) from pg_stat_activity where query like 'select pg_sleep%'",
    );
}

fn wait_exit(env: &mut Env, within: Duration) -> Duration {
    let start = Instant::now();
    wait_until(within, "the gateway to exit by itself", || {
        (!env.gateway_alive()).then_some(())
    });
    start.elapsed()
}

#[test]
fn sigterm_lets_live_statements_finish_and_refuses_new_clients() {
    let mut env = Env::builder().drain_timeout("30s").start();
    let url = env.agent_url();
    let late_url = env.agent_url();
    let running = start_sleeping(&env, &url, "select pg_sleep(2), 'finished'");
    sigterm(&env);
    wait_until(Duration::from_secs(10), "the listener to stop", || {
        env.gateway_log()
            .contains("Listener stopped accepting")
            .then_some(())
    });
    // A new client is refused while the live statement runs on.
    let late = env.psql(&late_url, &["-c", "select 1"]);
    assert!(
        !late.status.success(),
        "a new client was served while draining"
    );
    let out = wait_output(running, Duration::from_secs(30), "the live psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("finished"),
        "the live statement did not finish: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait_exit(&mut env, Duration::from_secs(20));
    assert!(took < Duration::from_secs(20));
    let log = env.gateway_log();
    assert!(log.contains("Drained."), "{log}");
    let sessions = env.sessions();
    assert!(
        sessions.iter().all(|s| !s["ended_at_ms"].is_null()),
        "a session has no recorded end: {sessions:?}"
    );
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(replay.contains("pg_sleep(2)"), "{replay}");
}

/// Sessions on the pinned threads (the default scheduling).
#[test]
fn sigterm_ends_sessions_past_the_drain_deadline_with_a_clear_message() {
    ends_sessions_past_the_drain_deadline(Env::builder());
}

/// The same with every session on the shared work-stealing runtime.
#[test]
fn shared_runtime_sessions_end_past_the_drain_deadline_with_a_clear_message() {
    ends_sessions_past_the_drain_deadline(
        Env::builder().gateway_line("session_scheduling = \"shared\""),
    );
}

const PINNED: &str = "session_scheduling = \"pinned\"";

/// A second SIGTERM skips the drain: the pinned threads are stopped with
/// the session still running, and its end is recorded before the gateway
/// exits (not left for the next start to close as "gateway restarted").
#[test]
fn a_second_sigterm_still_records_the_end_of_pinned_sessions() {
    let mut env = Env::builder()
        .gateway_line(PINNED)
        .drain_timeout("60s")
        .start();
    let url = env.agent_url();
    let running = start_sleeping(&env, &url, "select pg_sleep(60)");
    sigterm(&env);
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&env);
    wait_exit(&mut env, Duration::from_secs(20));
    let out = wait_output(running, Duration::from_secs(30), "the live psql");
    assert!(!out.status.success());
    let sessions = env.sessions();
    assert!(!sessions.is_empty());
    for s in &sessions {
        assert!(
            s["end_reason"].is_string(),
            "a session's end was not recorded: {s}"
        );
    }
    cancel_sleeping(&env);
}

fn ends_sessions_past_the_drain_deadline(builder: sluice_e2e::EnvBuilder) {
    let mut env = builder.drain_timeout("1s").start();
    let url = env.agent_url();
    let running = start_sleeping(&env, &url, "select pg_sleep(60)");
    sigterm(&env);
    let out = wait_output(running, Duration::from_secs(30), "the live psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the gateway is shutting down"),
        "the client was not told why: {stderr}"
    );
    wait_exit(&mut env, Duration::from_secs(20));
    let sessions = env.sessions();
    let ended: Vec<_> = sessions
        .iter()
        .filter_map(|s| s["end_reason"].as_str())
        .collect();
    assert!(
        ended.iter().any(|r| r.contains("shutting down")),
        "no session recorded why it ended: {sessions:?}"
    );
    cancel_sleeping(&env);
}
