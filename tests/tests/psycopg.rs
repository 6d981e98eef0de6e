//! Python psycopg 3 through the gateway (tests/py/features.py).

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;

#[test]
fn psycopg_features() {
    let env = Env::start();
    let out = env.python("features.py", &[&env.agent_url()]);
    let so = stdout(&out);
    assert!(
        out.status.success() && so.lines().last() == Some("OK"),
        "features.py failed ({})\n--- stdout ---\n{so}\n--- stderr ---\n{}\n--- gateway log ---\n{}",
        out.status,
        stderr(&out),
        env.gateway_log()
    );
    for step in [
        "prepared_statements",
        "binary_results",
        "pipeline_mode",
        "transactions",
        "copy_both_ways",
        "error_mid_transaction",
    ] {
        assert!(
            so.contains(&format!("{step}: ok")),
            "{step} did not run:\n{so}"
        );
    }
}
