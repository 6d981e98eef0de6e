//! The `custom-gateway` example — a gateway a platform team assembles from
//! the library crates with its own policy layer, masker and audit tap —
//! serving PostgreSQL, SSH and HTTP through core's one admission path and
//! its one masking extension point. Each protocol is driven with its real
//! client (psql, ssh, curl); the upstreams' own views show what they got.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::http::Upstream;
use sluice_e2e::sshd::{CustomGateway, SshEnv};
use sluice_e2e::*;
use sluice_sandbox::{free_port, TempPostgres, TempPostgresOptions};
use std::time::Duration;

const BADGE: &str = "EMP-482913";
const MASKED: &str = "EMP-######";
const SERVICE_KEY: &str = "sk-batch-0f7c2e9a4b1d8e6f3a5c7b9d";

#[test]
fn custom_gateway_masks_and_limits_on_postgres_ssh_and_http() {
    let pg = TempPostgres::start(TempPostgresOptions::default()).unwrap();
    let db = pg.seed_demo().unwrap();
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(upstream_dir.path(), None);
    let (pg_port, http_port) = (free_port(), free_port());
    let connections = format!(
        r#"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "{pg}"
database = "{database}"
user = "{user}"
password = {{ env = "APPDB_PASSWORD" }}
allow_groups = ["agents"]
upstream_tls = "disable"

[[connections]]
name = "crm"
kind = "http"
upstream = "http://{http}"
bearer = {{ env = "CRM_TOKEN" }}
allow_groups = ["agents"]

[[auth.group_map]]
idp_group = "svc"
groups = ["agents"]

[[rules]]
name = "no-rm"
action = "deny"
match = {{ program = ["rm"] }}
"#,
        pg = pg.addr(),
        database = db.database,
        user = db.user,
        http = upstream.addr,
    );
    let env = SshEnv::start_custom(
        &connections,
        CustomGateway {
            bin: custom_gateway_bin(),
            listen: format!("postgres = \"127.0.0.1:{pg_port}\"\nhttp = \"127.0.0.1:{http_port}\""),
            env: vec![
                ("APPDB_PASSWORD".into(), db.password.clone()),
                ("CRM_TOKEN".into(), "crm-upstream-secret".into()),
                (
                    "CUSTOM_GATEWAY_SERVICE_KEYS".into(),
                    format!("{SERVICE_KEY} batch-job svc"),
                ),
            ],
            ready: "Custom gateway ready.",
        },
    );
    let token = env.agent_token();

    // PostgreSQL: rows go through the team's masker.
    let url = format!("postgresql://agent-1:{token}@127.0.0.1:{pg_port}/appdb?sslmode=require");
    let mut psql = std::process::Command::new(pg.binaries().tool("psql"));
    clean_pg_env(&mut psql).args([
        "-X",
        "-A",
        "-t",
        "-d",
        &url,
        "-c",
        &format!("select '{BADGE}' as badge, name from customers order by id limit 1"),
    ]);
    let out = ok(&run_with_timeout(&mut psql, None, Duration::from_secs(30)));
    assert!(out.contains(MASKED) && !out.contains(BADGE), "{out}");
    assert!(out.contains("Alice"), "other values pass: {out}");

    // ... and the team's policy layer: more than 20 commands a second in one
    // session are refused, audited like any rule.
    let burst: String = (0..30).map(|i| format!("select {i};\n")).collect();
    let mut psql = std::process::Command::new(pg.binaries().tool("psql"));
    clean_pg_env(&mut psql).args(["-X", "-A", "-t", "-d", &url, "-f", "-"]);
    let out = run_with_timeout(&mut psql, Some(burst.as_bytes()), Duration::from_secs(30));
    assert!(
        stderr(&out).contains("slow down"),
        "the burst was not limited: {}",
        stderr(&out)
    );

    // The team's own authentication stage: a service key (its IdP-style
    // group mapped by [[auth.group_map]]) opens a session; a wrong one is refused.
    let key_url = |key: &str| {
        format!("postgresql://batch-job:{key}@127.0.0.1:{pg_port}/appdb?sslmode=require")
    };
    let mut psql = std::process::Command::new(pg.binaries().tool("psql"));
    clean_pg_env(&mut psql).args([
        "-X",
        "-A",
        "-t",
        "-d",
        &key_url(SERVICE_KEY),
        "-c",
        "select 41 + 1",
    ]);
    assert_eq!(
        ok(&run_with_timeout(&mut psql, None, Duration::from_secs(30))).trim(),
        "42"
    );
    let mut psql = std::process::Command::new(pg.binaries().tool("psql"));
    let wrong = key_url("sk-batch-0000000000000000000000000000");
    clean_pg_env(&mut psql).args(["-X", "-A", "-t", "-d", &wrong, "-c", "select 1"]);
    let out = run_with_timeout(&mut psql, None, Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown service key"),
        "{}",
        stderr(&out)
    );

    // SSH: command output goes through the same masker, and the rules hold.
    let out = env.ssh(&token, &[&format!("echo badge {BADGE}")]);
    let text = ok(&out);
    assert!(text.contains(MASKED) && !text.contains(BADGE), "{text}");
    let out = env.ssh(&token, &["rm -rf /tmp/nothing-here"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-rm"), "{}", stderr(&out));

    // HTTP: the JSON body the upstream echoes goes through it too.
    let ca = env.state_dir.join("tls").join("ca.crt");
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--cacert"])
        .arg(&ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!(
            "https://127.0.0.1:{http_port}/crm/echo?badge={BADGE}"
        ));
    let body = ok(&run_with_timeout(&mut curl, None, Duration::from_secs(30)));
    assert!(body.contains(MASKED) && !body.contains(BADGE), "{body}");
    let seen = upstream
        .last("/echo")
        .expect("the upstream saw the request");
    assert!(
        seen.to_string().contains(BADGE),
        "the request itself is not masked: {seen}"
    );

    // One session per protocol, recorded by the embedded store through the
    // team's audit tap.
    let sessions = env.sessions();
    for protocol in ["postgres", "ssh", "http"] {
        assert!(
            sessions.iter().any(|s| s["protocol"] == protocol),
            "no {protocol} session: {sessions:?}"
        );
    }
    assert!(env.gateway_log().contains("Audit record."));
}
