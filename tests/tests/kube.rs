//! kubectl through Sluice against the stand-in API server: discovery and reads, Secret
//! values masked in every output format (table, YAML, JSON, watch, raw), delete denied and
//! then reviewed (hold and retry), exec allowed and denied by its command, the upstream
//! credential injected (the API server never sees the agent's token), bad paths refused,
//! watches and logs never upgraded, ranges never forwarded.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::kube::*;
use sluice_e2e::*;
use std::process::Output;
use std::time::Duration;

fn assert_no_secret(what: &str, text: &str) {
    for value in [SECRET_VALUE, SECRET_VALUE_B64, SECRET_USER_B64] {
        assert!(!text.contains(value), "{what} shows {value}:\n{text}");
    }
}

/// Every request the API server saw carried the gateway's credential, never the agent's.
fn assert_upstream_credentials(env: &KubeEnv, agent_token: &str) {
    let requests = env.upstream_requests();
    assert!(!requests.is_empty(), "the API server saw no request");
    for r in &requests {
        let auth = r["authorization"].as_str().unwrap_or("");
        assert_eq!(auth, format!("Bearer {UPSTREAM_TOKEN}"), "{r}");
        assert!(!r.to_string().contains(agent_token), "{r}");
    }
}

#[test]
fn get_pods_through_the_gateway() {
    let env = KubeEnv::start();
    let token = env.token("agent-1", &["agents"]);
    let out = ok(&env.kubectl(&token, &["get", "pods"]));
    assert!(out.contains("web-1") && out.contains("Running"), "{out}");
    let out = ok(&env.kubectl(&token, &["get", "pod", "web-2", "-o", "json"]));
    let pod: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pod["metadata"]["name"], "web-2");
    let out = ok(&env.kubectl(&token, &["version", "-o", "json"]));
    assert!(out.contains("v1.32.0"), "{out}");
    assert_upstream_credentials(&env, &token);
    // The session and its commands are recorded with the kube verb and resource.
    let sessions = env.sessions();
    let replay: String = sessions
        .iter()
        .filter(|s| s["connection"] == "k8s")
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    assert!(
        replay.contains("kube list pods: GET /api/v1/namespaces/default/pods"),
        "{sessions:?}\n{replay}"
    );
    assert!(
        replay.contains("kube get pods: GET /api/v1/namespaces/default/pods/web-2"),
        "{replay}"
    );
}

#[test]
fn secret_values_are_masked_in_every_format() {
    let env = KubeEnv::start();
    let token = env.token("agent-1", &["agents"]);
    // The default table (kubectl asks for meta.k8s.io Table; the stand-in adds a column
    // that shows a value, and embeds whole objects in the rows).
    let out = ok(&env.kubectl(&token, &["get", "secrets"]));
    assert!(
        out.contains("db-credentials") && out.contains("Opaque"),
        "{out}"
    );
    assert!(out.contains("[secret]"), "{out}");
    assert_no_secret("get secrets", &out);
    for format in ["yaml", "json"] {
        let out = ok(&env.kubectl(&token, &["get", "secret", "db-credentials", "-o", format]));
        assert!(out.contains("W3NlY3JldF0="), "{format}: {out}");
        assert!(
            out.contains("password") && out.contains("username"),
            "{out}"
        );
        assert!(out.contains("last-applied-configuration"), "{out}");
        assert_no_secret(format, &out);
        let out = ok(&env.kubectl(&token, &["get", "secrets", "-o", format]));
        assert_no_secret(&format!("list -o {format}"), &out);
    }
    let out = ok(&env.kubectl(
        &token,
        &[
            "get",
            "secret",
            "db-credentials",
            "-o",
            "jsonpath={.data.password}",
        ],
    ));
    assert_eq!(out, "W3NlY3JldF0=");
    let out = ok(&env.kubectl(&token, &["describe", "secret", "db-credentials"]));
    assert!(out.contains("password"), "{out}");
    assert_no_secret("describe", &out);
    // What a create returns is masked too (the API server echoes the object, and kubectl
    // apply records the whole manifest in an annotation).
    let manifest = env.dir.path().join("secret.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\nstringData:\n  api-key: created-value-4711\n",
    )
    .unwrap();
    let out = ok(&env.kubectl(
        &token,
        &[
            "apply",
            "--validate=false",
            "-o",
            "yaml",
            "-f",
            manifest.to_str().unwrap(),
        ],
    ));
    assert!(
        out.contains("api-key") && out.contains("W3NlY3JldF0="),
        "{out}"
    );
    assert!(
        !out.contains("created-value-4711") && !out.contains("Y3JlYXRlZC12YWx1ZS00NzEx"),
        "{out}"
    );
    // A minted token would let the caller go around the gateway: masked like a Secret.
    let out = ok(&env.kubectl(&token, &["create", "token", "default"]));
    assert_eq!(out.trim(), "[secret]");
    // (`kubectl get --raw` drops the kubeconfig server's /<connection> path; raw reads are
    // covered with curl below.)
    // Watch: events are masked one by one as they arrive.
    let out = ok(&env.kubectl(&token, &["get", "secrets", "--watch-only", "-o", "json"]));
    assert!(out.contains("db-credentials"), "{out}");
    assert_no_secret("watch -o json", &out);
    let out = ok(&env.kubectl(&token, &["get", "secrets", "--watch-only"]));
    assert!(out.contains("db-credentials"), "{out}");
    assert_no_secret("watch (table)", &out);
    // A client asking for YAML or protobuf gets masked JSON (a YAML reader reads it).
    let ca = env.state_dir.join("tls").join("ca.crt");
    for accept in ["application/yaml", "application/vnd.kubernetes.protobuf"] {
        let out = run_with_timeout(
            std::process::Command::new("curl")
                .args(["-sS", "--fail-with-body", "--cacert"])
                .arg(&ca)
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .args(["-H", &format!("Accept: {accept}")])
                .arg(format!(
                    "https://127.0.0.1:{}/k8s/api/v1/namespaces/default/secrets/db-credentials",
                    env.port
                )),
            None,
            COMMAND_TIMEOUT,
        );
        let body = ok(&out);
        assert!(body.contains("W3NlY3JldF0="), "{accept}: {body}");
        assert_no_secret(accept, &body);
    }
    assert_upstream_credentials(&env, &token);
    // The audit record counts what was masked, and holds no value either.
    let replay: String = env
        .sessions()
        .iter()
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    assert!(replay.contains("kube_secret="), "{replay}");
    assert_no_secret("replay", &replay);
    // Nor do the gateway's log and state (journal, index, keys) hold a value or the
    // upstream credential.
    let log = env.gateway_log();
    assert_no_secret("the gateway log", &log);
    assert!(!log.contains(UPSTREAM_TOKEN));
    let mut dirs = vec![env.state_dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for needle in [SECRET_VALUE, SECRET_VALUE_B64, UPSTREAM_TOKEN] {
                assert!(
                    !contains_bytes(&bytes, needle.as_bytes()),
                    "{} holds {needle}",
                    path.display()
                );
            }
        }
    }
}

const DELETE_RULES: &str = r#"
[[rules]]
name = "keep-web-2"
match = { kube = { verbs = ["delete"], resources = ["pods"], names = ["web-2"] } }
action = "deny"
message = "web-2 serves production traffic."

[[rules]]
name = "reviewed-deletes"
groups = ["agents"]
match = { kube = { verbs = ["delete", "deletecollection"] } }
action = "review"
approvers = ["dba"]
timeout = "60s"
message = "Deletes are reviewed by an operator."

[[rules]]
name = "retry-deletes"
groups = ["batch"]
match = { kube = { verbs = ["delete"] } }
action = "review"
mode = "retry"
approvers = ["dba"]
timeout = "5m"
"#;

fn approvals(env: &KubeEnv, token: &str, args: &[&str]) -> Output {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--token", token]);
    env.sluice(&all)
}

fn pending(env: &KubeEnv, token: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(30), "a pending approval", || {
        let out = approvals(env, token, &["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().next()
    })
}

fn upstream_deletes(env: &KubeEnv) -> Vec<String> {
    env.upstream_requests()
        .into_iter()
        .filter(|r| r["method"] == "DELETE")
        .map(|r| r["path"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn delete_is_denied_then_reviewed() {
    let env = KubeEnv::builder()
        .extra_toml(DELETE_RULES)
        .api_listener()
        .start();
    let agent = env.token("agent-1", &["agents"]);
    let dba = env.token("ops-1", &["dba"]);

    // Denied outright: kubectl prints the Status, the API server never sees the delete.
    let err = failed(&env.kubectl(&agent, &["delete", "pod", "web-2", "--wait=false"]));
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(
        err.contains("keep-web-2") && err.contains("production traffic"),
        "{err}"
    );
    assert!(upstream_deletes(&env).is_empty());

    // Reviewed, hold mode: kubectl waits on its request until an approver decides.
    let child = env
        .kubectl_command(&agent, &["delete", "pod", "web-1", "--wait=false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let request = pending(&env, &dba);
    assert_eq!(request["rule"], "reviewed-deletes");
    assert!(
        request["command"]
            .as_str()
            .unwrap()
            .contains("/api/v1/namespaces/default/pods/web-1"),
        "{request}"
    );
    assert!(upstream_deletes(&env).is_empty(), "deleted before approval");
    let id = request["id"].as_str().unwrap().to_string();
    ok(&approvals(&env, &dba, &["approve", &id]));
    let out = wait_output(child, COMMAND_TIMEOUT, "kubectl delete (held)");
    let text = ok(&out);
    assert!(text.contains("pod \"web-1\" deleted"), "{text}");
    assert_eq!(
        upstream_deletes(&env),
        vec!["/api/v1/namespaces/default/pods/web-1"]
    );
    assert_upstream_credentials(&env, &agent);
}

#[test]
fn delete_reviewed_in_retry_mode() {
    let env = KubeEnv::builder()
        .extra_toml(DELETE_RULES)
        .api_listener()
        .start();
    let batch = env.token("batch-1", &["batch"]);
    let dba = env.token("ops-1", &["dba"]);
    let err = failed(&env.kubectl(&batch, &["delete", "pod", "web-1", "--wait=false"]));
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    let request = pending(&env, &dba);
    let id = request["id"].as_str().unwrap().to_string();
    assert!(err.contains(&id), "the Status names the approval: {err}");
    assert!(upstream_deletes(&env).is_empty());
    ok(&approvals(&env, &dba, &["approve", &id]));
    let out = ok(&env.kubectl(&batch, &["delete", "pod", "web-1", "--wait=false"]));
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(upstream_deletes(&env).len(), 1);
}

const EXEC_RULES: &str = r#"
[[rules]]
name = "no-rm"
match = { kube = { verbs = ["exec"], commands = ["rm *", "*rm -rf*"] } }
action = "deny"
message = "Deleting files in pods is not allowed."

[[rules]]
name = "no-exec-web-2"
match = { kube = { verbs = ["exec"], names = ["web-2"] } }
action = "deny"
"#;

#[test]
fn exec_allowed_and_denied_by_command() {
    let env = KubeEnv::builder().extra_toml(EXEC_RULES).start();
    let token = env.token("agent-1", &["agents"]);
    let out = ok(&env.kubectl(&token, &["exec", "web-1", "--", "ls", "-la", "/srv"]));
    assert_eq!(out, "ran: ls -la /srv\n");
    // With stdin attached (channel 0 and v5's close signal travel upstream).
    let out = run_with_timeout(
        &mut env.kubectl_command(&token, &["exec", "-i", "web-1", "--", "cat"]),
        Some(b"hello\n"),
        COMMAND_TIMEOUT,
    );
    assert_eq!(ok(&out), "ran: cat\n");
    // A failing command's exit status comes through.
    let out = env.kubectl(&token, &["exec", "web-1", "--", "false"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let err = failed(&env.kubectl(&token, &["exec", "web-1", "--", "rm", "-rf", "/srv"]));
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(
        err.contains("no-rm") && err.contains("not allowed"),
        "{err}"
    );
    let err = failed(&env.kubectl(
        &token,
        &["exec", "web-1", "--", "sh", "-c", "cd /srv && rm -rf ."],
    ));
    assert!(err.contains("no-rm"), "{err}");
    let err = failed(&env.kubectl(&token, &["exec", "web-2", "--", "ls"]));
    assert!(err.contains("no-exec-web-2"), "{err}");
    // Neither denied exec reached the API server (over WebSocket or kubectl's SPDY retry).
    let execs: Vec<_> = env
        .upstream_requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains("/exec"))
        .collect();
    assert_eq!(execs.len(), 3, "only the three allowed execs: {execs:?}");
    assert!(
        execs.iter().all(|r| r["upgrade"] == "websocket"),
        "{execs:?}"
    );
    assert_upstream_credentials(&env, &token);
    // The exec's output is in the recording (on the recorder's timer).
    let replay = wait_until(
        Duration::from_secs(10),
        "the exec output in the recording",
        || {
            let replay: String = env
                .sessions()
                .iter()
                .map(|s| env.replay(s["id"].as_str().unwrap()))
                .collect();
            replay.contains("ran: ls -la /srv").then_some(replay)
        },
    );
    assert!(replay.contains("exec: ls -la /srv"), "{replay}");
    assert!(replay.contains("exec: rm -rf /srv"), "{replay}");
    assert!(replay.contains("deny (rule no-rm)"), "{replay}");
}

/// `kubectl debug` adds an ephemeral container that runs its command in
/// the pod: it is judged as an exec of that command, so exec rules hold.
#[test]
fn debug_containers_are_judged_as_execs() {
    let env = KubeEnv::builder().extra_toml(EXEC_RULES).start();
    let token = env.token("agent-1", &["agents"]);
    let debug = |pod: &str, command: &[&str]| {
        let mut args = vec!["debug", pod, "--image=busybox", "--target=web", "--"];
        args.extend_from_slice(command);
        env.kubectl(&token, &args)
    };
    let err = failed(&debug("web-1", &["sh", "-c", "rm -rf /srv"]));
    assert!(err.contains("no-rm"), "{err}");
    let err = failed(&debug("web-2", &["ls"]));
    assert!(err.contains("no-exec-web-2"), "{err}");
    let patches = || -> Vec<serde_json::Value> {
        env.upstream_requests()
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .unwrap_or("")
                    .contains("/ephemeralcontainers")
            })
            .collect()
    };
    assert!(
        patches().is_empty(),
        "a denied debug reached the API server: {:?}",
        patches()
    );
    // An allowed one goes through, as a PATCH of the subresource.
    let out = debug("web-1", &["ls", "/srv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = patches();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["method"], "PATCH");
    // A debug container without a command would run its image's entrypoint:
    // refused, with the way to name one.
    let err = failed(&env.kubectl(&token, &["debug", "web-1", "--image=busybox"]));
    assert!(err.contains("names no command"), "{err}");
    assert_eq!(patches().len(), 1);
}

#[test]
fn detectors_mask_other_resources_and_exec_output() {
    let env = KubeEnv::builder()
        .extra_toml("[masking]\ndetectors = [\"email\"]\n")
        .start();
    let token = env.token("agent-1", &["agents"]);
    let out = ok(&env.kubectl(&token, &["get", "configmap", "app-config", "-o", "yaml"]));
    assert!(out.contains("LOG_LEVEL") && out.contains("info"), "{out}");
    assert!(!out.contains("ops.lead@example.com"), "{out}");
    let out = ok(&env.kubectl(&token, &["exec", "web-1", "--", "cat", "/etc/app/env"]));
    assert!(out.contains("ADMIN_EMAIL="), "{out}");
    assert!(!out.contains("ops.lead@example.com"), "{out}");
    // Recorded as the client saw it (on the recorder's timer): masked.
    let replay = wait_until(
        Duration::from_secs(10),
        "the exec output in the recording",
        || {
            let replay: String = env
                .sessions()
                .iter()
                .map(|s| env.replay(s["id"].as_str().unwrap()))
                .collect();
            replay.contains("ADMIN_EMAIL=").then_some(replay)
        },
    );
    assert!(!replay.contains("ops.lead@example.com"), "{replay}");
    let out = ok(&env.kubectl(&token, &["get", "secret", "db-credentials", "-o", "json"]));
    assert_no_secret("with detectors", &out);
}

fn curl(env: &KubeEnv, token: &str, path: &str) -> (u16, String) {
    let ca = env.state_dir.join("tls").join("ca.crt");
    let out = run_with_timeout(
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--path-as-is",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://127.0.0.1:{}{path}", env.port)),
        None,
        COMMAND_TIMEOUT,
    );
    let text = stdout(&out);
    let (body, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    (code.parse().unwrap_or(0), body.to_string())
}

#[test]
fn bad_tokens_and_path_tricks_are_refused() {
    let env = KubeEnv::start();
    let token = env.token("agent-1", &["agents"]);
    let (code, body) = curl(&env, "not-a-token", "/k8s/api/v1/namespaces/default/pods");
    assert_eq!(code, 401, "{body}");
    for path in [
        "/k8s/api/v1/namespaces/default/pods/%2e%2e/secrets",
        "/k8s/api/v1/namespaces/default%2Fsecrets",
        "/k8s/api/v1/namespaces/default/pods/%zz",
    ] {
        let (code, body) = curl(&env, &token, path);
        // Refused while routing (the HTTP listener's problem document) or by the
        // Kubernetes parser (a Status): either way a 400 that names the problem.
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("sluice:"), "{path}: {body}");
        assert_no_secret(path, &body);
    }
    // Nothing reached the API server: neither the bad token nor the tricks.
    assert!(
        env.upstream_requests().is_empty(),
        "{:?}",
        env.upstream_requests()
    );
}

/// Runs `cmd` and returns its stdout lines with the time each arrived, and the time it ended.
fn timed_lines(mut cmd: std::process::Command) -> (Vec<(Duration, String)>, Duration) {
    use std::io::BufRead;
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (start.elapsed(), l))
            .collect::<Vec<_>>()
    });
    let deadline = start + COMMAND_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?}: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{cmd:?} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = start.elapsed();
    (reader.join().unwrap(), ended)
}

#[test]
fn watch_and_follow_are_streamed_as_they_arrive_and_masked() {
    let env = KubeEnv::builder()
        .watch_seconds(3.0)
        .extra_toml("[masking]\ndetectors = [\"email\"]\n")
        .start();
    let token = env.token("agent-1", &["agents"]);
    // The watch stays open 3 s after its event: the event must not wait for the end.
    let (lines, ended) =
        timed_lines(env.kubectl_command(&token, &["get", "secrets", "--watch-only", "-o", "json"]));
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(text.contains("db-credentials"), "{text}");
    assert_no_secret("watch", &text);
    let first = lines.first().map(|(t, _)| *t).unwrap();
    assert!(
        ended.saturating_sub(first) > Duration::from_millis(1500),
        "the watch event arrived at {first:?}, the stream ended at {ended:?}"
    );
    // Logs: masked, and with --follow released line by line (0.3 s apart upstream).
    let out = ok(&env.kubectl(&token, &["logs", "web-1"]));
    assert!(
        out.contains("web-1 ready") && out.contains("[email]"),
        "{out}"
    );
    assert!(!out.contains("ops.lead@example.com"), "{out}");
    let (lines, ended) = timed_lines(env.kubectl_command(&token, &["logs", "-f", "web-1"]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(!lines[1].1.contains("ops.lead@example.com"), "{lines:?}");
    assert!(
        ended.saturating_sub(lines[0].0) > Duration::from_millis(400),
        "the first log line arrived at {:?}, the stream ended at {ended:?}",
        lines[0].0
    );
}

/// `curl --http1.1` asking to upgrade `path` to WebSocket; gives up after 5 s.
fn curl_upgrade(env: &KubeEnv, token: &str, path: &str) -> (u16, String) {
    let ca = env.state_dir.join("tls").join("ca.crt");
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--http1.1",
        "-m",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(&ca)
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    for h in [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ] {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("https://127.0.0.1:{}{path}", env.port));
    let text = stdout(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
    let (body, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    (code.parse().unwrap_or(0), body.to_string())
}

/// A watch or a log over WebSocket would carry Secrets and lines in frames no
/// hook masks: refused before the API server. A range of a body would be
/// masked out of context: the whole body is asked for and masked.
#[test]
fn watches_and_logs_are_not_upgraded_and_ranges_not_forwarded() {
    let env = KubeEnv::builder()
        .extra_toml("[masking]\ndetectors = [\"email\"]\n")
        .start();
    let token = env.token("agent-1", &["agents"]);
    for path in [
        "/k8s/api/v1/namespaces/default/secrets?watch=1",
        "/k8s/api/v1/watch/namespaces/default/secrets",
        "/k8s/api/v1/namespaces/default/pods/web-1/log?follow=1",
    ] {
        let (code, body) = curl_upgrade(&env, &token, path);
        assert_eq!(code, 501, "{path}: {body}");
        assert!(
            body.contains("only for exec, attach and port-forward"),
            "{path}: {body}"
        );
        assert_no_secret(path, &body);
    }
    let requests = env.upstream_requests();
    assert!(requests.is_empty(), "{requests:?}");
    let log = "/k8s/api/v1/namespaces/default/pods/web-1/log";
    // From the middle of the second line, which holds an address.
    let (code, body) = curl_with(&env, &token, "GET", log, &["Range: bytes=20-"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("web-1 started\ncontact [email]"), "{body}");
    let requests = env.upstream_requests();
    assert!(
        requests.iter().all(|r| r["range"].is_null()),
        "{requests:?}"
    );
    // Exec still upgrades.
    let out = ok(&env.kubectl(&token, &["exec", "web-1", "--", "id"]));
    assert_eq!(out, "ran: id\n", "{}", relayed_upgrades(&env));
}

#[test]
fn client_certificate_upstream() {
    let env = KubeEnv::builder().client_cert().start();
    let token = env.token("agent-1", &["agents"]);
    let out = ok(&env.kubectl(&token, &["get", "pods"]));
    assert!(out.contains("web-1"), "{out}");
    let out = ok(&env.kubectl(&token, &["get", "secret", "db-credentials", "-o", "yaml"]));
    assert_no_secret("-o yaml", &out);
    let out = ok(&env.kubectl(&token, &["exec", "web-1", "--", "id"]));
    assert_eq!(
        out,
        "ran: id\n",
        "the gateway relayed: {}",
        relayed_upgrades(&env)
    );
    // Every request (the exec's WebSocket too) came with the gateway's certificate and
    // no Authorization header at all.
    let requests = env.upstream_requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for r in &requests {
        assert_eq!(r["client_cn"], "sluice-gateway", "{r}");
        assert!(r["authorization"].is_null(), "{r}");
    }
}

/// The audit tags of the gateway's upgraded connections (frames and bytes each
/// way), for a failure message: they tell an output frame the gateway did not
/// relay from one kubectl did not print.
fn relayed_upgrades(env: &KubeEnv) -> String {
    env.sessions()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .flat_map(|id| {
            let replay = env.replay(id);
            replay
                .lines()
                .filter(|l| l.contains("101 upgraded"))
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn curl_with(
    env: &KubeEnv,
    token: &str,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    let ca = env.state_dir.join("tls").join("ca.crt");
    let mut cmd = std::process::Command::new("curl");
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    cmd.args([
        "-sS",
        "--path-as-is",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&ca)
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("https://127.0.0.1:{}{path}", env.port));
    let out = run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT);
    let text = stdout(&out);
    let (body, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    (code.parse().unwrap_or(0), body.to_string())
}

#[test]
fn rules_hold_against_spelling_tricks() {
    let env = KubeEnv::builder()
        .extra_toml(
            r#"
[[rules]]
name = "no-secret-reads"
match = { kube = { resources = ["secrets"], verbs = ["get", "list", "watch"] } }
action = "deny"
message = "Agents do not read secrets."
"#,
        )
        .start();
    let token = env.token("agent-1", &["agents"]);
    for (method, path) in [
        ("GET", "/k8s/api/v1/namespaces/default/secrets"),
        ("GET", "/k8s/api/v1/namespaces/default/secrets/"),
        ("GET", "/k8s/api/v1/namespaces/default/Secrets"),
        (
            "GET",
            "/k8s/api/v1/namespaces/default/secrets/db-credentials",
        ),
        (
            "GET",
            "/k8s/api/v1/namespaces/def%61ult/secr%65ts/db-credentials",
        ),
        ("GET", "/k8s/api/v1/secrets"),
        ("GET", "/k8s/api/v1/watch/namespaces/default/secrets"),
        ("GET", "/k8s/api/v1/namespaces/default/secrets?watch=1"),
        ("GET", "/k8s/api/v1/namespaces/default/secrets?watch=yes"),
        (
            "GET",
            "/k8s/api/v1/namespaces/default/secrets/db-credentials?watch=true",
        ),
        (
            "HEAD",
            "/k8s/api/v1/namespaces/default/secrets/db-credentials",
        ),
    ] {
        let (code, body) = curl_with(&env, &token, method, path, &[]);
        assert_eq!(code, 403, "{method} {path}: {body}");
        if method != "HEAD" {
            assert!(
                body.contains("\"kind\":\"Status\"") && body.contains("no-secret-reads"),
                "{path}: {body}"
            );
        }
    }
    for path in [
        "/k8s/api/v1/namespaces/default/pods/../secrets",
        "/k8s/api/v1/namespaces/default/pods/%2e%2e/secrets",
        "/k8s/api/v1/namespaces/default/pods%2f..%2fsecrets",
    ] {
        let (code, body) = curl_with(&env, &token, "GET", path, &[]);
        assert_eq!(code, 400, "{path}: {body}");
    }
    assert!(
        env.upstream_requests().is_empty(),
        "{:?}",
        env.upstream_requests()
    );
    // Other reads pass; impersonation headers never reach the API server.
    let (code, body) = curl_with(
        &env,
        &token,
        "GET",
        "/k8s/api/v1/namespaces/default/pods",
        &[
            "Impersonate-User: system:admin",
            "Impersonate-Group: system:masters",
        ],
    );
    assert_eq!(code, 200, "{body}");
    let seen = env.upstream_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["impersonation"], serde_json::json!([]), "{seen:?}");
}

#[test]
fn exec_held_for_approval_runs_once_approved() {
    let env = KubeEnv::builder()
        .extra_toml(
            r#"
[[rules]]
name = "reviewed-exec"
groups = ["agents"]
match = { kube = { verbs = ["exec"] } }
action = "review"
approvers = ["dba"]
timeout = "60s"
"#,
        )
        .api_listener()
        .start();
    let agent = env.token("agent-1", &["agents"]);
    let dba = env.token("ops-1", &["dba"]);
    let child = env
        .kubectl_command(&agent, &["exec", "web-1", "--", "uptime"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let request = pending(&env, &dba);
    assert_eq!(request["command"], "uptime", "{request}");
    std::thread::sleep(Duration::from_secs(2));
    let id = request["id"].as_str().unwrap().to_string();
    ok(&approvals(&env, &dba, &["approve", &id]));
    let out = wait_output(child, COMMAND_TIMEOUT, "kubectl exec (held)");
    assert_eq!(ok(&out), "ran: uptime\n");
    // One approval, one exec upstream: no second review through kubectl's SPDY retry.
    let out = approvals(&env, &dba, &["list", "--json", "--all"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
}

/// Proxy subresources are judged on the request they carry (a kubelet
/// exec/run is an exec) or refused; a field selector on `metadata.name`
/// touches that object.
#[test]
fn proxy_subresources_and_name_selectors_are_judged_as_what_they_reach() {
    let env = KubeEnv::builder()
        .extra_toml(
            r#"
[[rules]]
name = "no-shells-in-kube-system"
match = { kube = { verbs = ["exec", "attach"], namespaces = ["kube-system"] } }
action = "deny"

[[rules]]
name = "no-file-deletion"
match = { kube = { verbs = ["exec"], commands = ["rm *"] } }
action = "deny"

[[rules]]
name = "not-the-root-secret"
match = { kube = { resources = ["secrets"], names = ["db-credentials"] } }
action = "deny"
"#,
        )
        .start();
    let token = env.token("agent-1", &["agents"]);

    // kubectl get --raw through the node proxy to the kubelet (a raw path
    // is absolute: it carries the connection's prefix).
    for (path, rule) in [
        (
            "/k8s/api/v1/nodes/node-1/proxy/run/kube-system/etcd-0/etcd?cmd=rm%20-rf%20/var/lib/etcd",
            "no-shells-in-kube-system",
        ),
        (
            "/k8s/api/v1/nodes/node-1:10250/proxy/exec/default/web-1/app?command=rm&command=-rf&command=/srv",
            "no-file-deletion",
        ),
        (
            "/k8s/api/v1/nodes/node-1/proxy/attach/kube-system/etcd-0/etcd?stdout=1",
            "no-shells-in-kube-system",
        ),
    ] {
        let err = failed(&env.kubectl(&token, &["get", "--raw", path]));
        assert!(err.contains("Forbidden") && err.contains(rule), "{path}: {err}");
    }
    // Workload proxies, the legacy prefix and other kubelet endpoints are refused.
    for path in [
        "/k8s/api/v1/namespaces/default/services/web:80/proxy/admin/drop",
        "/k8s/api/v1/namespaces/default/pods/web-1/proxy/debug",
        "/k8s/api/v1/proxy/nodes/node-1/run/default/web-1/app",
        "/k8s/api/v1/nodes/node-1/proxy/checkpoint/default/web-1/app",
        "/k8s/api/v1/nodes/node-1/proxy/cri/exec/abc",
    ] {
        let err = failed(&env.kubectl(&token, &["get", "--raw", path]));
        assert!(err.contains("Forbidden"), "{path}: {err}");
    }
    let (code, body) = curl_with(
        &env,
        &token,
        "POST",
        "/k8s/api/v1/nodes/node-1/proxy/run/default/web-1/app?cmd=rm+-rf+/srv",
        &[],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no-file-deletion"), "{body}");

    // list and watch narrowed to the protected object by name.
    for args in [
        &[
            "get",
            "secrets",
            "--field-selector",
            "metadata.name=db-credentials",
        ][..],
        &[
            "get",
            "secrets",
            "--field-selector",
            "metadata.name==db-credentials",
            "-o",
            "json",
        ][..],
        &[
            "get",
            "secrets",
            "-A",
            "--field-selector",
            "type=Opaque,metadata.name=db-credentials",
        ][..],
    ] {
        let err = failed(&env.kubectl(&token, args));
        assert!(err.contains("not-the-root-secret"), "{args:?}: {err}");
    }
    let reached: Vec<_> = env
        .upstream_requests()
        .into_iter()
        .filter(|r| {
            let p = r["path"].as_str().unwrap_or("");
            p.contains("proxy") || p.contains("secrets") || p.contains("exec")
        })
        .collect();
    assert!(reached.is_empty(), "{reached:?}");

    // Ordinary work still passes.
    let out = ok(&env.kubectl(&token, &["get", "pods"]));
    assert!(out.contains("web-1"), "{out}");
    ok(&env.kubectl(
        &token,
        &["get", "pods", "--field-selector", "metadata.name=web-1"],
    ));
    ok(&env.kubectl(&token, &["logs", "web-1"]));
    let out = ok(&env.kubectl(&token, &["exec", "web-1", "--", "ls", "/srv"]));
    assert_eq!(out, "ran: ls /srv\n");
}
