//! The gateway-held credentials never reach clients, logs, CLI output or the store.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::RawConn;
use sluice_e2e::*;
use std::fs;
use std::path::Path;

const WRONG_PASSWORD: &str = "wrong-password-5e1c3f0a9b7d";

fn all_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else if let Ok(bytes) = fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

#[test]
fn secrets_never_leak() {
    let mut env = Env::builder()
        .log_level("debug")
        .gateway_env("BADDB_PASSWORD", WRONG_PASSWORD)
        .file("legacy.pw", "{MD5_PASSWORD}\n")
        .extra_toml(
            r#"
[[connections]]
name = "baddb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "BADDB_PASSWORD" }
allow_groups = ["agents"]

[[connections]]
name = "legacydb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "legacy"
password = { file = "{DIR}/legacy.pw" }
allow_groups = ["agents"]

[[connections]]
name = "unsetdb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "SLUICE_E2E_NEVER_SET" }
allow_groups = ["agents"]
"#,
        )
        .start();
    let secrets = [
        ("the appdb password", env.db.password.clone()),
        ("the legacy (md5) password", env.db.md5_password.clone()),
        ("the wrong baddb password", WRONG_PASSWORD.to_string()),
    ];
    let token = env.agent_token();
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    fn both(out: &std::process::Output) -> Vec<u8> {
        let mut bytes = out.stdout.clone();
        bytes.extend_from_slice(&out.stderr);
        bytes
    }
    macro_rules! record {
        ($what:expr, $out:expr) => {
            outputs.push(($what.to_string(), both($out)))
        };
    }

    // A successful session (scram) with a query, an error and a notice.
    let out = env.psql(
        &env.url("agent-1", &token, "appdb"),
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "select current_user, count(*) from customers",
            "-c",
            "select 1/0",
            "-c",
            "DO $$ BEGIN RAISE NOTICE 'n'; END $$",
            "-c",
            "select usename, application_name from pg_stat_activity",
        ],
    );
    assert!(stdout(&out).contains("app|50"), "{}", stderr(&out));
    record!("psql appdb", &out);

    // md5 upstream authentication with a file secret.
    let out = env.psql(
        &env.url("agent-1", &token, "legacydb"),
        &["-c", "select current_user"],
    );
    assert_eq!(ok(&out).trim(), "legacy");
    record!("psql legacydb", &out);

    // The upstream refuses the gateway's credential.
    let out = env.psql(&env.url("agent-1", &token, "baddb"), &["-c", "select 1"]);
    let se = failed(&out);
    assert!(
        se.contains(
            "FATAL:  sluice: cannot open connection \"baddb\": \
             the upstream refused the gateway's credential"
        ),
        "{se}"
    );
    assert!(
        !se.contains("password authentication failed"),
        "upstream details reach the client: {se}"
    );
    record!("psql baddb", &out);
    let refused =
        RawConn::login(env.addr(), "agent-1", "baddb", &token).expect_err("baddb must fail");
    assert_eq!(refused.severity(), "FATAL");
    assert_eq!(refused.code(), "08006", "{refused}");
    outputs.push(("raw baddb".into(), format!("{:?}", refused.0).into_bytes()));

    // The secret cannot be read at all.
    let out = env.psql(&env.url("agent-1", &token, "unsetdb"), &["-c", "select 1"]);
    let se = failed(&out);
    assert!(
        se.contains("sluice: cannot open connection \"unsetdb\": the gateway is misconfigured"),
        "{se}"
    );
    assert!(!se.contains("SLUICE_E2E_NEVER_SET"), "{se}");
    record!("psql unsetdb", &out);

    // A failed authentication.
    let out = env.psql(
        &env.url("agent-1", "not-a-token", "appdb"),
        &["-c", "select 1"],
    );
    failed(&out);
    record!("psql bad token", &out);

    // Every CLI output.
    let sessions = env.wait_sessions_ended(4);
    let by_connection = |name: &str| {
        sessions
            .iter()
            .find(|s| s["connection"] == name)
            .unwrap_or_else(|| panic!("no session on {name}: {sessions:#?}"))
    };
    assert_eq!(
        by_connection("baddb")["end_reason"],
        "upstream connection failed: the upstream refused the gateway's credential"
    );
    assert_eq!(by_connection("legacydb")["commands"], 1);
    record!(
        "sessions list --json",
        &env.sluice(&["sessions", "list", "--json"])
    );
    record!("sessions list", &env.sluice(&["sessions", "list"]));
    for s in &sessions {
        let id = s["id"].as_str().unwrap();
        let out = env.sluice(&["replay", id]);
        ok(&out);
        record!(&format!("replay {id}"), &out);
    }
    let replay_appdb = env.replay(by_connection("appdb")["id"].as_str().unwrap());
    assert!(replay_appdb.contains("division by zero"), "{replay_appdb}");
    record!("audit verify", &env.sluice(&["audit", "verify"]));
    record!("config check", &env.sluice(&["config", "check"]));

    // The store and everything else in the state dir, after a clean stop (and before).
    let mut files = Vec::new();
    all_files(&env.state_dir, &mut files);
    env.stop_gateway();
    all_files(&env.state_dir, &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("sluice.db")),
        "{:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    outputs.extend(files);
    let log = env.gateway_log();
    assert!(
        log.contains("Upstream connection failed."),
        "the failure is logged for the operator:\n{log}"
    );
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging was on"
    );
    outputs.push(("gateway log".into(), log.into_bytes()));

    // Control: the search finds a secret where it is meant to be.
    let pw_file = fs::read(env.dir.path().join("legacy.pw")).unwrap();
    assert!(contains_bytes(&pw_file, env.db.md5_password.as_bytes()));

    for (name, secret) in &secrets {
        for (what, bytes) in &outputs {
            assert!(
                !contains_bytes(bytes, secret.as_bytes()),
                "{name} appears in {what}"
            );
        }
    }
}
