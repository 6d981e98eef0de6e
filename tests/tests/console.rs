//! The operator console in a real browser: Playwright (Python) drives
//! Debian's Chromium against the gateway's API listener while real psql
//! clients are held, approved, denied and killed (tests/py/console.py).
//! Screenshots are kept under `target/console-artifacts/`.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const RULES: &str = r#"
[[rules]]
name = "reviewed-customer-writes"
match = { sql = ["write"], tables = ["customers"] }
action = "review"
approvers = ["dba"]
timeout = "120s"
message = "Changes to customers are reviewed by a DBA."
"#;

/// Debian's Chromium (installed by `cargo xtask setup`; never a downloaded browser).
fn chromium() -> PathBuf {
    for path in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(path).exists() {
            return PathBuf::from(path);
        }
    }
    panic!("Chromium is not installed: run `cargo xtask setup` (Debian package chromium)");
}

fn artifacts() -> PathBuf {
    let dir = target_dir().join("console-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
fn approve_deny_and_kill_from_the_browser() {
    let chromium = chromium();
    let api = sluice_sandbox::free_port();
    let env = Env::builder()
        .extra_toml(RULES)
        .gateway_env("SLUICE_LISTEN__API", &format!("127.0.0.1:{api}"))
        .gateway_env("SLUICE_AUTH__ADMIN_GROUPS", "[\"ops\"]")
        .start();
    let before = [customer_name(&env, 2), customer_name(&env, 3)];
    let shots = artifacts();
    let config = serde_json::json!({
        "base": format!("https://127.0.0.1:{api}"),
        "chromium": chromium,
        "psql": env.pg.binaries().tool("psql"),
        "agent_url": env.agent_url(),
        "shots": shots,
        "tokens": {
            "dba": env.token("dana", &["dba"], "30m"),
            // An admin (sees and ends sessions) outside the approver groups.
            "viewer": env.token("vera", &["ops"], "30m"),
            // The requester itself, also a dba: self-approval is refused.
            "self": env.token("agent-1", &["agents", "dba"], "30m"),
        },
    });
    let out = run_browser(
        &env.dir.path().join("console.json"),
        &config,
        None,
        Duration::from_secs(240),
        || format!("--- gateway log tail ---\n{}", tail(&env.gateway_log(), 60)),
    );
    let so = stdout(&out);
    assert!(so.contains("\"step\": \"done\""), "{so}");

    // What the page did is what happened upstream.
    assert_eq!(customer_name(&env, 1), "Approved Name");
    assert_eq!([customer_name(&env, 2), customer_name(&env, 3)], before);
    let log = env.gateway_log();
    assert!(
        log.contains("Console request refused by the CSRF check")
            || log.contains("refused by the CSRF check"),
        "no CSRF refusal logged"
    );
    let sessions = env.wait_sessions_ended(4);
    let replays: String = sessions
        .iter()
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    assert!(
        replays.contains("approved by dana: ticket OPS-42"),
        "{replays}"
    );
    assert!(
        replays.contains("denied by dana: not on a Friday"),
        "{replays}"
    );
    assert!(replays.contains("ended by vera: maintenance"), "{replays}");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs tests/py/console.py in `mode` (the default scenario for `None`) with
/// `config` written to `path`; panics with its stderr and `context()` (e.g.
/// the gateway log's tail) unless it succeeds. Prints its steps.
fn run_browser(
    path: &Path,
    config: &serde_json::Value,
    mode: Option<&str>,
    timeout: Duration,
    context: impl Fn() -> String,
) -> std::process::Output {
    std::fs::write(path, serde_json::to_vec(config).unwrap()).unwrap();
    let mut cmd = Command::new("python3");
    clean_pg_env(&mut cmd);
    cmd.arg(py_dir().join("console.py"))
        .args(mode)
        .arg(path)
        .env("PYTHONUNBUFFERED", "1");
    let out = run_with_timeout(&mut cmd, None, timeout);
    eprintln!("{}\nscreenshots: {}", stdout(&out), artifacts().display());
    assert!(
        out.status.success(),
        "the browser script failed:\n{}\n{}",
        stderr(&out),
        context()
    );
    out
}

/// A recorded SSH shell plays in the page's player; the masked email stays
/// masked at every position of the recording. A live ssh exec is ended from
/// the sessions page by its owner and ssh shows the reason.
#[test]
fn ssh_shell_replays_in_the_player_masked() {
    let chromium = chromium();
    let env = sluice_e2e::sshd::SshEnv::start(
        "[masking]\ndetectors = [\"email\"]\n\n[[rules]]\nname = \"reviewed-touch\"\n\
         match = { command = [\"touch *\"] }\naction = \"review\"\napprovers = [\"dba\"]\n\
         timeout = \"60s\"\n",
    );
    let token = env.agent_token();
    let ssh = env.ssh_command(&token, &["-tt"]);
    let mut cmd = env.client("python3", &token);
    cmd.arg(py_dir().join("console.py"))
        .args(["shell", "alice.smith"])
        .arg(ssh.get_program())
        .args(ssh.get_args());
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(90));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let screen = stdout(&out);
    assert!(
        screen.contains("owner ") && !screen.contains("alice.smith@example.com"),
        "{screen}"
    );
    let sessions = env.wait_sessions_ended(1);
    let session = sessions[0]["id"].as_str().unwrap().to_string();

    let api = api_addr(&env.config_path);
    // A live exec session, ended from the page by its owner.
    let sleeper = env
        .ssh_command(&token, &["sleep 60; echo finished"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the ssh exec session is live",
        || (env.sessions().len() == 2).then_some(()),
    );
    let shots = artifacts();
    let config = serde_json::json!({
        "kill_reason": "maintenance",
        "base": format!("https://{api}"),
        "chromium": chromium,
        "shots": shots,
        "session": session,
        "expect": "owner ",
        "secret": "alice.smith@example.com",
        // The session's owner may read it.
        "tokens": { "viewer": env.token("agent-1", &["agents"]) },
    });
    let config_path = env.dir.path().join("console-replay.json");
    let out = run_browser(
        &config_path,
        &config,
        Some("replay"),
        Duration::from_secs(120),
        String::new,
    );
    assert!(stdout(&out).contains("\"step\": \"replayed\""));
    let out = wait_output(sleeper, Duration::from_secs(20), "ssh sleep");
    assert!(!stdout(&out).contains("finished"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("sluice: session ended: ended by agent-1: maintenance"),
        "{}",
        stderr(&out)
    );

    // A held exec line: the approver sees the programs it runs, approves in the page.
    let marker = env.work.join("approved");
    let line = format!("sh -c 'touch {} && echo touched'", marker.display());
    let held = env
        .ssh_command(&token, &[&line])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let config = serde_json::json!({
        "base": format!("https://{api}"),
        "chromium": chromium,
        "shots": shots,
        "shot": "approvals-ssh.png",
        "token": env.token("ops-1", &["dba"]),
        "needle": "echo touched",
        "expect": [format!("touch {}", marker.display()), "echo touched".to_string(), "reviewed-touch".to_string()],
        "reason": "safe",
    });
    run_browser(
        &config_path,
        &config,
        Some("approve"),
        Duration::from_secs(120),
        String::new,
    );
    let out = wait_output(held, Duration::from_secs(30), "ssh (held)");
    assert!(
        stdout(&out).contains("touched"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(marker.exists());
}

/// Sign-in with the identity tests' OpenID provider (npm oidc-provider):
/// authorization code + PKCE through its login page, the provider's groups
/// mapped as everywhere; the person then approves a held statement.
#[test]
fn oidc_sign_in_through_the_providers_login_page() {
    let chromium = chromium();
    let api = sluice_sandbox::free_port();
    let idp = sluice_e2e::oidc::Idp::start_with_console(&format!(
        "https://127.0.0.1:{api}/console/oidc/callback"
    ));
    let env = Env::builder()
        .extra_toml(RULES)
        .extra_toml(&format!(
            "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"sluice\"\nclient_id = \"console\"\n\
             resource = \"urn:sluice\"\nscopes = [\"openid\", \"groups\"]\n\n\
             [[auth.group_map]]\nidp_group = \"sluice-agents\"\ngroups = [\"dba\"]\n",
            idp.issuer()
        ))
        .gateway_env("SLUICE_LISTEN__API", &format!("127.0.0.1:{api}"))
        .start();
    let shots = artifacts();
    let config = serde_json::json!({
        "base": format!("https://127.0.0.1:{api}"),
        "issuer": idp.issuer(),
        "login": "alice",
        "chromium": chromium,
        "psql": env.pg.binaries().tool("psql"),
        "agent_url": env.agent_url(),
        "shots": shots,
    });
    let out = run_browser(
        &env.dir.path().join("console-oidc.json"),
        &config,
        Some("oidc"),
        Duration::from_secs(180),
        || format!("--- gateway log tail ---\n{}", tail(&env.gateway_log(), 40)),
    );
    assert!(stdout(&out).contains("\"step\": \"oidc_approved\""));
    assert_eq!(customer_name(&env, 4), "By Alice");
    let sessions = env.wait_sessions_ended(1);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(
        replay.contains(&format!(
            "approved by alice ({}): checked by alice",
            idp.issuer()
        )),
        "{replay}"
    );
}

/// The API listener's address from a harness's config file (`api = "…"`).
fn api_addr(config: &Path) -> String {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("api = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the config has an api listener")
        .to_string()
}

/// A held `kubectl delete` is shown to the approver as verb, resource, name
/// and namespace, and approving it in the page lets kubectl finish.
#[test]
fn kubectl_delete_is_described_and_approved_in_the_browser() {
    let chromium = chromium();
    let env = sluice_e2e::kube::KubeEnv::builder()
        .extra_toml(
            r#"
[[rules]]
name = "reviewed-deletes"
match = { kube = { verbs = ["delete"] } }
action = "review"
approvers = ["dba"]
timeout = "60s"
message = "Deletes are reviewed by an operator."
"#,
        )
        .api_listener()
        .start();
    let agent = env.token("agent-1", &["agents"]);
    let child = env
        .kubectl_command(&agent, &["delete", "pod", "web-1", "--wait=false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let shots = artifacts();
    let config = serde_json::json!({
        "base": format!("https://{}", api_addr(&env.config_path)),
        "chromium": chromium,
        "shots": shots,
        "shot": "approvals-kubectl.png",
        "token": env.token("ops-1", &["dba"]),
        "needle": "/pods/web-1",
        "expect": ["DELETE /api/v1/namespaces/default/pods/web-1", "delete pods web-1 in namespace default",
                   "reviewed-deletes", "kubernetes"],
        "reason": "pod is wedged",
    });
    run_browser(
        &env.dir.path().join("console-kube.json"),
        &config,
        Some("approve"),
        Duration::from_secs(120),
        String::new,
    );
    let out = wait_output(child, COMMAND_TIMEOUT, "kubectl delete (held)");
    let text = ok(&out);
    assert!(text.contains("pod \"web-1\" deleted"), "{text}");
}
