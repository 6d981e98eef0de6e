//! Run-time plugins through the C ABI, built by the test itself (C with `cc`,
//! Rust with `rustc`) and loaded by the real gateway: a C detector masking
//! values end to end through psql, a C policy hook denying a command, an audit
//! sink and a notifier receiving events, broken plugins refused at `config
//! check` and at start with the library named, and plugins that error,
//! answer garbage or panic failing closed while the gateway keeps serving.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::plugins::{c_plugin, rust_plugin};
use sluice_e2e::*;
use std::path::Path;
use std::time::Duration;

fn plugin_toml(path: &Path, kind: &str, config: &str) -> String {
    format!(
        "[[plugins]]\npath = {:?}\nkind = \"{kind}\"\nconfig = {config}\n",
        path.display().to_string()
    )
}

fn psql_at(env: &Env, sql: &str) -> String {
    ok(&env.psql(&env.agent_url(), &["-At", "-F", "|", "-c", sql]))
        .trim()
        .to_string()
}

#[test]
fn c_detector_plugin_masks_values_end_to_end() {
    let libs = tempfile::tempdir().unwrap();
    let detector = c_plugin(libs.path(), "badge_detector");
    let mut env = Env::builder()
        .extra_toml(&plugin_toml(
            &detector,
            "detector",
            r#"{ prefix = "EMP-" }"#,
        ))
        .start();
    assert!(
        env.gateway_log().contains("Plugin loaded."),
        "{}",
        env.gateway_log()
    );
    env.direct_sql(
        "app",
        "create table badges (id int primary key, holder text, note varchar(80));\
         insert into badges values (1, 'Ann', 'badge EMP-123456 issued'), (2, 'Bob', 'EMP-12345 is too short'), (3, 'Cy', 'EMP-000001 and EMP-000002');\
         grant select on badges to public;",
    );

    // Rows: only the matched spans are replaced; other values and columns pass.
    let out = psql_at(&env, "select id, holder, note from badges order by id");
    assert_eq!(
        out, "1|Ann|badge [badge] issued\n2|Bob|EMP-12345 is too short\n3|Cy|[badge] and [badge]",
        "{out}"
    );
    assert!(!out.contains("123456") && !out.contains("000001"), "{out}");

    // The detector sees what the upstream returned, not the query text: a
    // value assembled by the server is masked too.
    let out = psql_at(
        &env,
        "select 'EMP-' || '654' || '321' as v, upper('emp-777888') as w",
    );
    assert_eq!(out, "[badge]|[badge]", "{out}");

    // A value of a non-text type that holds a match is NULL (valid for its type).
    let out = psql_at(&env, "select to_json(note), id from badges where id = 1");
    assert_eq!(out, "|1", "{out}");

    // Text echoed in an error message is masked too.
    let out = env.psql(
        &env.agent_url(),
        &["-c", "select cast(note as int) from badges where id = 1"],
    );
    let err = failed(&out);
    assert!(!err.contains("123456"), "{err}");
    env.assert_gateway_alive();
}

#[test]
fn c_policy_plugin_denies_a_command_end_to_end() {
    let libs = tempfile::tempdir().unwrap();
    let policy = c_plugin(libs.path(), "ticket_policy");
    let env = Env::builder()
        .extra_toml(&plugin_toml(
            &policy,
            "policy",
            r#"{ deny_word = "payroll" }"#,
        ))
        .start();
    let url = env.agent_url();
    let err = failed(&env.psql(&url, &["-c", "select 1 as payroll"]));
    assert!(
        err.contains("open a ticket before touching payroll"),
        "{err}"
    );
    assert!(err.contains("plugin:tickets"), "{err}");
    // Other commands go on to the rules and run.
    assert_eq!(psql_at(&env, "select id from customers where id = 1"), "1");
    // The denial is in the audit trail under the plugin's rule.
    let sessions = env.wait_sessions_ended(2);
    let replays: String = sessions
        .iter()
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    assert!(replays.contains("plugin:tickets"), "{replays}");
}

#[test]
fn audit_sink_and_notifier_plugins_receive_events() {
    let libs = tempfile::tempdir().unwrap();
    let recorder = c_plugin(libs.path(), "recorder");
    let audit_file = libs.path().join("audit.jsonl");
    let notify_file = libs.path().join("approvals.jsonl");
    let rule = r#"
[[rules]]
name = "reviewed-order-writes"
match = { sql = ["write"], tables = ["orders"] }
action = "review"
approvers = ["dba"]
timeout = "1s"
"#;
    let env = Env::builder()
        .extra_toml(&plugin_toml(
            &recorder,
            "audit_sink",
            &format!("{{ file = {:?} }}", audit_file.display().to_string()),
        ))
        .extra_toml(&plugin_toml(
            &recorder,
            "notifier",
            &format!("{{ file = {:?} }}", notify_file.display().to_string()),
        ))
        .extra_toml(rule)
        .start();
    psql_at(&env, "select 'sink-probe-42'");
    let lines = wait_until(Duration::from_secs(20), "the audit sink's events", || {
        let text = std::fs::read_to_string(&audit_file).ok()?;
        text.contains("command_decided").then_some(text)
    });
    let decided = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"]["event"] == "command_decided")
        .unwrap();
    assert!(
        decided["event"]["command"]["text"]
            .as_str()
            .unwrap()
            .contains("sink-probe-42"),
        "{decided}"
    );
    assert!(decided["session_id"].as_str().is_some(), "{decided}");

    // A reviewed command: the notifier hears of the request.
    let _ = env.psql(
        &env.agent_url(),
        &["-c", "update orders set status = 'x' where id = 1"],
    );
    let text = wait_until(Duration::from_secs(20), "the notifier's event", || {
        std::fs::read_to_string(&notify_file)
            .ok()
            .filter(|t| t.contains("requested"))
    });
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "requested", "{first}");
    assert_eq!(first["request"]["rule"], "reviewed-order-writes", "{first}");
}

/// A config file with only `plugins` (and a state dir) for `config check`.
fn check_with(dir: &Path, plugins: &str) -> std::process::Output {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = {:?}\n\n[listen]\npostgres = \"127.0.0.1:0\"\n\n{plugins}",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
    sluice_cli(&config, &[], &["config", "check"])
}

#[test]
fn broken_plugins_are_refused_at_config_check_and_at_start() {
    let libs = tempfile::tempdir().unwrap();
    let dir = libs.path();

    // Another ABI version: refused, naming the library and both versions.
    let future = c_plugin(dir, "future_abi");
    let err = failed(&check_with(dir, &plugin_toml(&future, "detector", "{}")));
    assert!(err.contains(&future.display().to_string()), "{err}");
    assert!(
        err.contains("ABI version 2") && err.contains("version 1"),
        "{err}"
    );
    // `serve` refuses to start on it with the same message.
    let config = dir.join("sluice.toml");
    let out = run_with_timeout(
        std::process::Command::new(sluice_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config),
        None,
        Duration::from_secs(60),
    );
    let err = failed(&out);
    assert!(
        err.contains(&future.display().to_string()) && err.contains("ABI version 2"),
        "{err}"
    );

    // A library without the entry symbol.
    let source = dir.join("not_a_plugin.c");
    std::fs::write(&source, "int not_a_plugin = 1;\n").unwrap();
    let lib = dir.join("libnot_a_plugin.so");
    ok(&run_with_timeout(
        std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&source),
        None,
        Duration::from_secs(60),
    ));
    let err = failed(&check_with(dir, &plugin_toml(&lib, "detector", "{}")));
    assert!(
        err.contains(&lib.display().to_string()) && err.contains("sluice_plugin_entry"),
        "{err}"
    );

    // Not a library at all, and a missing file.
    let err = failed(&check_with(dir, &plugin_toml(&source, "detector", "{}")));
    assert!(
        err.contains(&source.display().to_string()) && err.contains("cannot load"),
        "{err}"
    );
    let missing = dir.join("libmissing.so");
    let err = failed(&check_with(dir, &plugin_toml(&missing, "policy", "{}")));
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // A config the plugin's init refuses, with the plugin's own message.
    let badge = c_plugin(dir, "badge_detector");
    let err = failed(&check_with(
        dir,
        &plugin_toml(&badge, "detector", r#"{ prefix_typo = "EMP-" }"#),
    ));
    assert!(
        err.contains(&badge.display().to_string()) && err.contains("config needs \"prefix\""),
        "{err}"
    );
    // A kind the plugin does not declare.
    let err = failed(&check_with(
        dir,
        &plugin_toml(&badge, "policy", r#"{ prefix = "EMP-" }"#),
    ));
    assert!(
        err.contains("kind = \"policy\"") && err.contains("does not declare"),
        "{err}"
    );
    // An unknown key in [[plugins]].
    let err = failed(&check_with(
        dir,
        &format!(
            "{}optional = true\n",
            plugin_toml(&badge, "detector", r#"{ prefix = "EMP-" }"#)
        ),
    ));
    assert!(err.contains("optional"), "{err}");

    // And a good one passes.
    ok(&check_with(
        dir,
        &plugin_toml(&badge, "detector", r#"{ prefix = "EMP-" }"#),
    ));
}

#[test]
fn failing_and_panicking_plugins_fail_closed_while_the_gateway_serves() {
    let libs = tempfile::tempdir().unwrap();
    let faulty = c_plugin(libs.path(), "faulty");
    let panicky = rust_plugin(libs.path(), "panicky");
    let mut env = Env::builder()
        .extra_toml(&plugin_toml(&faulty, "detector", "{}"))
        .extra_toml(&plugin_toml(&faulty, "policy", "{}"))
        .extra_toml(&plugin_toml(&panicky, "detector", "{}"))
        .extra_toml(&plugin_toml(&panicky, "policy", "{}"))
        .start();
    env.direct_sql(
        "app",
        "create table samples (id int primary key, v text);\
         insert into samples values (1, 'fine'), (2, 'fault'), (3, 'garbage'), (4, 'outside'), (5, 'kaboom');\
         grant select on samples to public;",
    );

    // Detectors: an error status, an unreadable answer, a span outside the
    // value and a panic each mask the whole value; the others pass.
    let out = psql_at(&env, "select id, v from samples order by id");
    assert_eq!(
        out, "1|fine\n2|[plugin-error]\n3|[plugin-error]\n4|[plugin-error]\n5|[plugin-error]",
        "{out}"
    );
    let out = psql_at(&env, "select id, to_json(v) from samples order by id");
    assert_eq!(out, "1|\"fine\"\n2|\n3|\n4|\n5|", "{out}");

    // Policy hooks: each failure denies the command with sluice:plugin-error.
    for word in ["fault", "garbage", "outside", "kaboom"] {
        let err = failed(&env.psql(&env.agent_url(), &["-c", &format!("select '{word}'")]));
        assert!(err.contains("sluice:plugin-error"), "{word}: {err}");
    }
    // The gateway keeps serving.
    env.assert_gateway_alive();
    assert_eq!(psql_at(&env, "select 40 + 2"), "42");
    let log = env.gateway_log();
    assert!(
        log.contains("A detector plugin failed")
            && log.contains("A policy plugin could not decide"),
        "{log}"
    );
}

/// Accepts one HTTP request on `listener`, answers 200 and returns the request
/// (head and body) as text.
fn receive_one(listener: std::net::TcpListener) -> String {
    use std::io::{Read, Write};
    listener.set_nonblocking(true).unwrap();
    let mut conn = wait_until(Duration::from_secs(60), "the webhook delivery", || {
        listener.accept().ok().map(|(c, _)| c)
    });
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= head_end + 4 + length {
                break;
            }
        }
        assert!(n > 0, "the connection closed mid-request");
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .unwrap();
    String::from_utf8(data).unwrap()
}

#[test]
fn webhook_notifier_loaded_as_a_cdylib_delivers_signed_events() {
    use hmac::{Hmac, KeyInit, Mac};
    let lib = sluice_e2e::plugins::workspace_cdylib("sluice-webhook-plugin");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || receive_one(listener));
    let env = Env::builder()
        .gateway_env("HOOK_SECRET", "plugin-hook-secret")
        .extra_toml(&plugin_toml(
            &lib,
            "notifier",
            &format!(
                r#"{{ name = "ops", url = "http://127.0.0.1:{port}/hook", secret = {{ env = "HOOK_SECRET" }} }}"#
            ),
        ))
        .extra_toml(
            r#"
[[rules]]
name = "reviewed-order-writes"
match = { sql = ["write"], tables = ["orders"] }
action = "review"
approvers = ["dba"]
timeout = "1s"
"#,
        )
        .start();
    let _ = env.psql(
        &env.agent_url(),
        &["-c", "update orders set status = 'x' where id = 1"],
    );
    let request = receiver.join().unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /hook "), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["event"], "approval.requested", "{json}");
    assert_eq!(json["approval"]["rule"], "reviewed-order-writes", "{json}");
    let mut mac =
        <Hmac<sha2_011::Sha256> as KeyInit>::new_from_slice(b"plugin-hook-secret").unwrap();
    mac.update(body.as_bytes());
    let expected = format!("sha256={}", hex_lower(&mac.finalize().into_bytes()));
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase() == format!("x-sluice-signature: {expected}")),
        "{head}"
    );
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
