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

#[test]
fn pgbench_initialises_and_runs_in_every_protocol_mode() {
    let env = Env::start();
    let url = env.agent_url();

    let mut init = env.pg_tool("pgbench");
    init.args(["-i", "-s", "1", &url]);
    let out = run_with_timeout(&mut init, None, COMMAND_TIMEOUT);
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "pgbench -i failed:\n{log}\n--- gateway log ---\n{}",
        env.gateway_log()
    );
    assert!(log.contains("done in"), "{log}");
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
        let mut bench = env.pg_tool("pgbench");
        bench.args(["-n", script, "-T", "2", "-c", "2", "-M", mode, &url]);
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

    // The sessions were recorded and all ended.
    let sessions = env.wait_sessions_ended(1 + 4 * 2);
    assert!(sessions
        .iter()
        .all(|s| s["subject"] == "agent-1" && s["connection"] == "appdb"));
}
