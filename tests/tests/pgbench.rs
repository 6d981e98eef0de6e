//! pgbench through the gateway: initialisation (DDL, COPY, VACUUM) and each query protocol.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;

/// The value after `label` on its line of pgbench's report, e.g. "number of failed transactions: 0 (0.000%)".
fn report_value<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// `pgbench -i -s 1` through the gateway, which must succeed.
fn pgbench_init(env: &Env, url: &str) {
    let mut init = env.pg_tool("pgbench");
    init.args(["-i", "-s", "1", url]);
    let out = run_with_timeout(&mut init, None, COMMAND_TIMEOUT);
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "pgbench -i failed:\n{log}\n--- gateway log ---\n{}",
        env.gateway_log()
    );
    assert!(log.contains("done in"), "{log}");
}

/// A 2-second, 2-client pgbench run of `script` in query `mode`, which must
/// pass in that mode with no failed transaction and more than 10 processed.
fn pgbench_run(env: &Env, url: &str, mode: &str, script: &str) {
    let mut bench = env.pg_tool("pgbench");
    bench.args(["-n", script, "-T", "2", "-c", "2", "-M", mode, url]);
    let out = run_with_timeout(&mut bench, None, COMMAND_TIMEOUT);
    let report = stdout(&out);
    assert!(
        out.status.success(),
        "pgbench -M {mode} {script} failed ({}):\n{report}\n{}\n--- gateway log ---\n{}",
        out.status,
        stderr(&out),
        env.gateway_log()
    );
    assert_eq!(report_value(&report, "query mode:"), Some(mode), "{report}");
    let failed = report_value(&report, "number of failed transactions:")
        .unwrap_or_else(|| panic!("no failed-transactions line:\n{report}"));
    assert!(
        failed.starts_with("0 "),
        "-M {mode} {script}: {failed}\n{report}"
    );
    let processed: u64 = report_value(&report, "number of transactions actually processed:")
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no processed line:\n{report}"));
    assert!(
        processed > 10,
        "-M {mode} {script}: {processed} transactions\n{report}"
    );
    assert!(report.contains("tps = "), "{report}");
    eprintln!("pgbench -M {mode} {script}: {processed} transactions");
}

#[test]
fn pgbench_initialises_and_runs_in_every_protocol_mode() {
    let env = Env::start();
    let url = env.agent_url();

    pgbench_init(&env, &url);
    assert_eq!(
        env.direct_sql("app", "select count(*) from pgbench_accounts")
            .trim(),
        "100000",
        "the COPY went through"
    );

    for (mode, script) in [
        ("simple", "-S"),
        ("extended", "-S"),
        ("prepared", "-S"),
        ("prepared", "-N"),
    ] {
        pgbench_run(&env, &url, mode, script);
    }

    // The sessions were recorded and all ended.
    let sessions = env.wait_sessions_ended(1 + 4 * 2);
    assert!(sessions
        .iter()
        .all(|s| s["subject"] == "agent-1" && s["connection"] == "appdb"));
}

/// The threads of process `pid` (id, name), with the CPU ticks each used.
fn thread_ticks(pid: u32) -> Vec<((String, String), u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let tid = t.file_name().to_string_lossy().into_owned();
            let path = t.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // Fields after the parenthesised name: utime and stime are 14th and 15th.
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(((tid, name.trim().to_string()), ticks))
        })
        .collect()
}

/// With `session_scheduling = "pinned"`, sessions run on the pinned threads:
/// pgbench passes in every protocol mode, and the work shows on those
/// threads in the kernel's own accounting, not on the shared runtime's.
#[test]
fn pgbench_runs_on_pinned_session_threads() {
    let env = Env::builder()
        .gateway_line("session_scheduling = \"pinned\"")
        .gateway_line("worker_threads = 2")
        .start();
    let url = env.agent_url();
    let pid = env.gateway_pid().expect("the gateway runs");
    pgbench_init(&env, &url);
    let before = thread_ticks(pid);
    for mode in ["simple", "extended", "prepared"] {
        pgbench_run(&env, &url, mode, "-S");
    }
    let after = thread_ticks(pid);
    let used = |prefix: &str| -> u64 {
        after
            .iter()
            .filter(|((_, name), _)| name.starts_with(prefix))
            .map(|(thread, ticks)| {
                let was = before
                    .iter()
                    .find(|(t, _)| t == thread)
                    .map_or(0, |(_, t)| *t);
                ticks.saturating_sub(was)
            })
            .sum()
    };
    let (pinned, shared) = (used("sluice-pinned-"), used("tokio-rt-worker"));
    assert!(
        pinned > 0 && pinned > 4 * shared,
        "pinned {pinned} ticks, shared runtime {shared}: {after:?}"
    );
}
